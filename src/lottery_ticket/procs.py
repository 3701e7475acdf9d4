"""Process control: stopping on signals, workers that die with their parent, progress events.

Stopping. SIGINT and SIGTERM set a stop flag (`request_stop`); the training loop checks it at
every step, write a checkpoint and raise `Stopped`, so a stopped run resumes exactly where it
left off. A second signal raises `Stopped` at once. The `lth` command exits 128 + the signal
number (130 for SIGINT, 143 for SIGTERM).

Workers. A worker process started by `runner.run_jobs` stops the same way on SIGINT/SIGTERM
(the parent forwards SIGTERM when it is told to stop), and dies with its parent however the
parent ends, even by SIGKILL: on Linux the kernel sends it SIGTERM when the parent dies
(PR_SET_PDEATHSIG), and everywhere a watchdog thread notices the parent is gone (its parent
process id changes), asks the worker to stop, and ends the process after a short grace period.

Progress. A worker sends events to its parent on a queue (`set_progress_queue`): a run started
(with its iterations), iterations done, a run finished, a line to print. The parent draws one
aggregated view of them (see `runner.ProgressView`). Without a queue the events go nowhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

PARENT_GRACE_SECONDS = 5.0  # after the parent died: time to write a checkpoint before exiting

_stop_signal: int | None = None  # the signal that asked this process to stop, if any
_progress_queue = None


class Stopped(BaseException):  # noqa: N818 -- like KeyboardInterrupt: not an error, not caught by `except Exception`
    """This process was asked to stop (SIGINT/SIGTERM); checkpoints are written, rerun to resume."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"

    def __reduce__(self):  # (rebuilt from the signal number in the parent process)
        return Stopped, (self.signum,)


def stop_requested() -> bool:
    return _stop_signal is not None


def stop_signal() -> int | None:
    return _stop_signal


def request_stop(signum: int = signal.SIGTERM, frame=None) -> None:
    """Signal handler: the first signal asks to stop at the next step; a second one stops now."""
    global _stop_signal
    if _stop_signal is not None:
        raise Stopped(_stop_signal)
    _stop_signal = int(signum)


def check_stop() -> None:
    """Raise `Stopped` if a stop was requested (between runs, where nothing needs saving)."""
    if _stop_signal is not None:
        raise Stopped(_stop_signal)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM request a stop while inside (main thread only; else a no-op)."""
    global _stop_signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _stop_signal = None
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_signal = None


# --------------------------------------------------------------------------- worker processes


def _request_stop_softly(signum: int, frame=None) -> None:
    """A worker's signal handler: every signal only asks to stop at the next step (a Ctrl-C in a
    terminal reaches the worker twice: from the terminal and forwarded by its parent)."""
    global _stop_signal
    if _stop_signal is None:
        _stop_signal = int(signum)


def die_with_parent(parent_pid: int) -> None:
    """In a worker: stop on SIGINT/SIGTERM, and stop (then exit) when the process `parent_pid`
    ends, however it ends."""
    signal.signal(signal.SIGINT, _request_stop_softly)
    signal.signal(signal.SIGTERM, _request_stop_softly)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(128 + signal.SIGTERM)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()


def parent_alive(parent_pid: int) -> bool:
    return os.getppid() == parent_pid


def _watch_parent(parent_pid: int) -> None:
    while parent_alive(parent_pid):
        time.sleep(0.5)
    global _stop_signal
    if _stop_signal is None:
        _stop_signal = int(signal.SIGTERM)
    time.sleep(PARENT_GRACE_SECONDS)  # the training loop writes its checkpoint and exits first
    os._exit(128 + signal.SIGTERM)


# --------------------------------------------------------------------------- progress events


def set_progress_queue(queue) -> None:
    global _progress_queue
    _progress_queue = queue


def has_progress_queue() -> bool:
    return _progress_queue is not None


def progress(kind: str, key: str, value=None) -> None:
    """Send ("start", run, (iteration, total)), ("step", run, iteration), ("done", run, trained)
    or ("line", run, text) to the parent, if it listens; never blocks, never fails the run."""
    if _progress_queue is not None:
        with contextlib.suppress(Exception):
            _progress_queue.put_nowait((os.getpid(), kind, key, value))
