"""An on-disk cache of text embeddings, keyed by record fingerprint, so that retraining heads does not re-embed.

The key of a text is ``sha256(encoder id, max length, text)``: a different encoder (weights, runtime) or
truncation length never reads another's vectors. Storage is one SQLite file (stdlib, safe to append to and
to read while another process writes); vectors are raw float32 bytes, never pickles.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

Embedder = Callable[[list[str]], np.ndarray]


def text_key(encoder_id: str, max_length: int, text: str) -> str:
    """The fingerprint of ``text`` embedded by ``encoder_id`` at ``max_length`` tokens."""
    return hashlib.sha256(f"{encoder_id}\0{max_length}\0{text}".encode()).hexdigest()


class EmbeddingCache:
    """Vectors of one encoder (``encoder_id``, ``max_length``) in ``path`` (a SQLite file, created if absent)."""

    def __init__(self, path: str | Path, encoder_id: str, max_length: int, dim: int) -> None:
        self.path = Path(path)
        self.encoder_id = encoder_id
        self.max_length = max_length
        self.dim = dim
        self.hits = 0
        self.misses = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, dim INTEGER, vec BLOB)")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = keys[start:start + 500]
            rows = self._db.execute(f"SELECT key, dim, vec FROM vectors WHERE key IN ({','.join('?' * len(chunk))})",
                                    chunk)
            for key, dim, blob in rows:
                if dim == self.dim and len(blob) == 4 * dim:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def _store(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors (key, dim, vec) VALUES (?, ?, ?)",
                                 [(key, self.dim, np.ascontiguousarray(vec, dtype=np.float32).tobytes())
                                  for key, vec in zip(keys, vectors, strict=True)])

    def embed(self, texts: Sequence[str], embedder: Embedder, chunk_size: int = 256,
              progress: bool = False) -> np.ndarray:
        """Vectors (n, dim) of ``texts``: cached ones are read, the others embedded with ``embedder`` and stored
        (every ``chunk_size`` texts, so that an interrupted run keeps its work and a rerun embeds only the rest).
        The missing texts go to ``embedder`` shortest first, so that its batches hold texts of about one length
        (little padding) across the whole run, not only within a chunk; ``progress``: a bar with an ETA."""
        keys = [text_key(self.encoder_id, self.max_length, text) for text in texts]
        found = self._lookup(sorted(set(keys)))
        first_text = {key: text for key, text in zip(keys, texts, strict=True)}
        missing = sorted(dict.fromkeys(key for key in keys if key not in found), key=lambda k: len(first_text[k]))
        self.hits += len(texts) - sum(1 for key in keys if key not in found)
        self.misses += len(missing)
        with tqdm(total=len(missing), desc="embed", unit="text", disable=not progress or not missing) as bar:
            for start in range(0, len(missing), chunk_size):
                chunk = missing[start:start + chunk_size]
                vectors = embedder([first_text[key] for key in chunk])
                self._store(chunk, vectors)
                found.update(zip(chunk, np.asarray(vectors, dtype=np.float32), strict=True))
                bar.update(len(chunk))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, key in enumerate(keys):
            out[row] = found[key]
        return out
