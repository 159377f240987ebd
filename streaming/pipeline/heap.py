"""The processor's garbage-collection policy, chosen by measurement (docs/processor.md, "Pipeline efficiency").

Once the model is loaded, the process holds ~233k long-lived tracked objects (the imports, the model; the linear
model's vocabulary list and index, with every term) that every full collection walks (90-145 ms each, one every
~3,000 records: ~30-50 us per record). Batches live long
enough in the queues to reach the old generation, so full collections keep coming. :func:`hold` collects
once and freezes what exists (``gc.freeze``: never walked again), and raises the young-generation threshold from
700 to 50,000 allocations. Measured with ``gc.callbacks`` in the processor's threads after the freeze (one
10,000-record bench run each, linear, batch 64, load ~3.5 on 2 cores): 26 young and 1 middle collection taking
683 ms in all at 5,000, against 2 young ones taking 76 ms at 50,000. A model swap freezes the new model the same
way (:func:`refreeze`). Reference counting still frees everything that is not in a cycle.
"""

from __future__ import annotations

import gc
import threading

THRESHOLDS = (50000, 20, 10)

_lock = threading.Lock()
_users = 0
_saved: tuple[int, int, int] | None = None


def hold() -> None:
    """A processor starts (its model loaded): the heap frozen after one collection, :data:`THRESHOLDS` set. The
    first of several processors in one process applies it; :func:`release` once for each :func:`hold`."""
    global _users, _saved
    with _lock:
        if _users == 0:
            _saved = gc.get_threshold()
            gc.collect()
            gc.freeze()
            gc.set_threshold(*THRESHOLDS)
        _users += 1


def release() -> None:
    """A processor stopped; the last one restores the previous thresholds and unfreezes the heap."""
    global _users
    with _lock:
        _users -= 1
        if _users == 0 and _saved is not None:
            gc.set_threshold(*_saved)
            gc.unfreeze()


def refreeze() -> None:
    """After a model swap: the old model's cycles collected, the new model frozen (one full collection)."""
    with _lock:
        if _users:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
