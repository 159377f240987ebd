"""How ``corestream run`` starts and stops: signals, the stop deadline, the stall watchdog, exit statuses.

* A SIGTERM/SIGINT while the command is still importing is remembered and ends the start-up as soon as it
  begins; one during start-up (settings, model load, clients, topic creation) interrupts it at once
  (:class:`StartupInterrupted`); either way the exit status is 0, nothing having been consumed.
* Once running, the first signal asks for a graceful stop (the processor finishes, commits and closes) and a
  second one stops at once, in-flight batches uncommitted.
* Every stop request starts a deadline, ``batch.shutdown_timeout_s``: if the process has not exited by then
  (a sink write or a client call that does not return), it exits anyway with the status of the request. Exiting
  is always safe: offsets are committed only for results that were written.
* With ``batch.exit_after_stalled_s`` set, a watchdog thread stops the processor once its work has waited that
  long with no commit (or its loop has not turned), and the process exits with :data:`EXIT_STALLED`, so that
  any supervisor restarts it.
"""

from __future__ import annotations

import concurrent.futures.thread
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STALLED = 3  # stopped by the stall watchdog (batch.exit_after_stalled_s): restart it
WATCH_INTERVAL_S = 1.0
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """A stop was requested before the processor's loop started."""


class Lifecycle:
    """Stop requests (signals, a stall) and the deadline that bounds the stop, for one process.

    Phases: ``importing`` (signals remembered), ``starting`` (a signal raises :class:`StartupInterrupted`),
    ``running`` (first signal: graceful stop; second: :attr:`abort`)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.status = EXIT_OK
        self.deadline: float | None = None  # time.monotonic() by which the process exits, once a stop is requested
        self.abort: Callable[[], None] | None = None
        self._phase = "importing"
        self._timeout_s: float | None = None
        self._signals = 0
        self._pending: int | None = None  # a signal received while importing
        self._hard_exit: threading.Timer | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ signals

    def catch_signals(self) -> None:
        """Install the handlers (a no-op outside the main thread, where Python delivers no signals)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _SIGNALS:
            signal.signal(signum, self._on_signal)

    def release_signals(self) -> None:
        """Give the signals back to Python's defaults (for commands other than ``run``), delivering one that
        arrived meanwhile."""
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._pending is not None:
            signal.raise_signal(self._pending)

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        self._signals += 1
        if self._phase == "importing":
            self._pending = signum
            self.stop.set()
            return
        if self._signals > 1 and self._phase == "running":
            log.warning("second signal: stopping at once, in-flight batches stay uncommitted", extra={"signal": name})
            if self.abort is not None:
                self.abort()
            return
        self.request_stop(f"signal {name}")
        if self._phase == "starting" and self._signals == 1:  # a second one must not break the clean-up
            raise StartupInterrupted(name)

    # ------------------------------------------------------------------ phases

    def starting(self, shutdown_timeout_s: float) -> None:
        """Start-up begins; raises :class:`StartupInterrupted` if a stop came while importing."""
        self._timeout_s = shutdown_timeout_s
        self._phase = "starting"
        if self.stop.is_set():
            self.request_stop("a signal during start-up")
            raise StartupInterrupted("signal while importing")

    def running(self, abort: Callable[[], None]) -> None:
        """The processor's loop takes over; ``abort`` stops it at once (second signal)."""
        self.abort = abort
        self._phase = "running"

    def request_stop(self, why: str, status: int = EXIT_OK) -> None:
        """Ask for a stop (once): the process exits within ``shutdown_timeout_s`` with ``status``."""
        with self._lock:
            if self.deadline is not None:
                return
            self.status = status
            timeout = self._timeout_s if self._timeout_s is not None else 30.0
            self.deadline = time.monotonic() + timeout
            self._hard_exit = threading.Timer(timeout, self._exit_now, args=(f"the stop ({why}) took longer "
                                                                             f"than {timeout:g} s",))
            self._hard_exit.daemon = True
            self._hard_exit.start()
        log.info("stopping", extra={"reason": why, "exit_within_s": timeout})
        self.stop.set()

    def time_left(self) -> float | None:
        """Seconds until the stop deadline; None while no stop was requested."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    # ------------------------------------------------------------------ stall watchdog

    def watch_stall(self, stalled_for: Callable[[], float], limit_s: float) -> threading.Thread:
        """A daemon thread that requests a stop with :data:`EXIT_STALLED` once ``stalled_for()`` >= ``limit_s``."""

        def watch() -> None:
            while not self.stop.wait(WATCH_INTERVAL_S):
                stalled = stalled_for()
                if stalled >= limit_s:
                    log.error(f"processor stalled for {stalled:.0f} s (batch.exit_after_stalled_s={limit_s:g}): "
                              f"stopping with exit status {EXIT_STALLED} so that it is restarted",
                              extra={"stalled_for_s": round(stalled, 1)})
                    self.request_stop("stalled", EXIT_STALLED)
                    return

        thread = threading.Thread(target=watch, name="stall-watchdog", daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------ exit

    def finish(self, status: int) -> int:
        """The command is done. After a stop request, threads that would hold the interpreter open (a sink write
        blocked on a server that never answers) get a second to end; if they are still there, exit at once."""
        if self.deadline is not None:
            grace = time.monotonic() + min(1.0, self.time_left() or 0.0)  # an idle worker thread ends at once
            for thread in _blocking_threads():
                thread.join(max(0.0, grace - time.monotonic()))
            if blocked := _blocking_threads():
                self._exit_now(f"{len(blocked)} thread(s) still blocked ({', '.join(t.name for t in blocked)})",
                               status)
        if self._hard_exit is not None:
            self._hard_exit.cancel()
        return status

    def _exit_now(self, why: str, status: int | None = None) -> None:
        status = self.status if status is None else status
        log.warning(f"exiting now: {why}; anything not committed is read again after the restart",
                    extra={"exit_status": status})
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)


def _blocking_threads() -> list[threading.Thread]:
    """Threads the interpreter would wait for at exit: non-daemon ones, and every ``ThreadPoolExecutor`` worker
    (joined at exit by ``concurrent.futures`` even when daemonic, as the sink stage's writers are)."""
    workers = set(getattr(concurrent.futures.thread, "_threads_queues", {}))
    main, me = threading.main_thread(), threading.current_thread()
    return [t for t in threading.enumerate()
            if t is not main and t is not me and t.is_alive() and (not t.daemon or t in workers)]


_current = Lifecycle()


def current() -> Lifecycle:
    """This process's lifecycle."""
    return _current


def fresh() -> Lifecycle:
    """A new lifecycle for a new command (the CLI's entry point makes one per call)."""
    global _current
    _current = Lifecycle()
    return _current
