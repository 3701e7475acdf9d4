"""One writer per run: an exclusive lock file naming its holder (host and process id), kept alive
by a lease the holder renews, so that the rule works across machines sharing a filesystem.

The lock is a file created with O_EXCL. While it holds the lock, the holder renews its lease:
a thread touches the file (its modification time) every `lease_seconds() / 4`. A second process
decides whether the holder is alive:
- a holder on this host: alive while its process exists (checked at once, as before: a run
  killed with SIGKILL is taken over by the next command right away);
- a holder on another host (another machine, or another node of a Ray cluster): alive while its
  lease is renewed. The contender watches the file: if it changes, the holder is alive and the
  contender fails with the holder's name; if it stays unchanged for a whole lease, measured on
  the contender's own clock (no clocks are compared across machines), the holder is gone.
A lock whose holder is gone is taken over, and the takeover is logged (a line on stderr and
`TAKEOVERS`, which the Ray backend reports per run).

Two live holders never both write a run. A takeover renames the lock file away first (atomic:
of two contenders only one moves it) and checks that it moved the very file it watched expire.
A holder that could not renew for 3/4 of its lease (a stalled machine, a lost filesystem)
re-claims the file the same careful way before it goes on, and a holder that finds its lock
gone or naming someone else exits at once (status 75) rather than write beside the new holder;
its run resumes from its checkpoint wherever it is retried. The lease is `LTH_LOCK_LEASE_SECONDS`
(default 30 s): the longest a retry on another node waits for a dead holder's run.

An empty or unreadable lock file older than STALE_SECONDS is stale too (a crash between creating
and writing it; a younger one is waited for). Whoever takes the lock removes the temporary files
of atomic writes that a killed holder left: only those of the files a run writes, only in the
directory and its checkpoint/ folder (a user's own files, even `.*.tmp` ones, are never touched).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

from lottery_ticket import layout
from lottery_ticket.errors import LotteryError
from lottery_ticket.store import _user_io_errors, remove_temp_files

LOCK_NAME = layout.LOCK
STALE_SECONDS = 5.0  # an empty or unreadable lock file older than this was left by a crash
DEFAULT_LEASE_SECONDS = 30.0
LEASE_ENV = "LTH_LOCK_LEASE_SECONDS"
LOST_LEASE_EXIT = 75  # the exit status of a holder whose lock was taken over (EX_TEMPFAIL)
TAKEOVERS: list[dict] = []  # {"run", "holder", "how"} for every lock this process took over

_host_name: str | None = None  # this process's host in lock files (None: socket.gethostname())


def lease_seconds() -> float:
    """The lease of this process's locks (`LTH_LOCK_LEASE_SECONDS`, default 30 s)."""
    text = os.environ.get(LEASE_ENV, "")
    try:
        value = float(text) if text else DEFAULT_LEASE_SECONDS
    except ValueError:
        raise LotteryError(f"${LEASE_ENV} must be a number of seconds, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise LotteryError(f"${LEASE_ENV} must be a finite number of seconds > 0, got {text!r}")
    return value


def set_host_name(name: str | None) -> None:
    """Name this process's host `name` in the locks it takes (None: the machine's host name). A
    Ray worker names its Ray node, so that two nodes on one machine judge each other by lease."""
    global _host_name
    _host_name = name


def host_name() -> str:
    return _host_name or socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """The lock of the run in `directory`, taken as `host` (default: `host_name()`)."""

    def __init__(self, directory: str | Path, host: str | None = None):
        self.path = Path(directory) / LOCK_NAME
        self.host = host
        self.held = False
        self._me: dict = {}
        self._lease = DEFAULT_LEASE_SECONDS
        self._renewed = 0.0  # time.monotonic() of the last renewal
        self._touched: int | None = None  # the file's st_mtime_ns after our last renewal
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> None:
        with _user_io_errors(self.path.parent, "create directory"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": self.host or host_name(), "pid": os.getpid()}
        lease = lease_seconds()
        # An empty or unreadable lock file is either being written right now (its holder is named
        # within milliseconds) or was left by a writer killed in between (it turns stale after
        # STALE_SECONDS): wait for one or the other rather than fail at once. A holder on another
        # host is watched for one lease at most (see the module docstring).
        deadline = time.monotonic() + STALE_SECONDS + 2.0 + lease
        watched: tuple | None = None  # (holder, mtime_ns, since) of the other host's lock we watch
        while time.monotonic() < deadline:
            try:
                with _user_io_errors(self.path, "write"):
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, mtime = self._read_holder(), self._mtime_ns()
                if holder is None:
                    if self._age() > STALE_SECONDS:  # empty or garbage for a while: a crashed writer
                        with contextlib.suppress(FileNotFoundError):
                            self.path.unlink()
                    else:
                        time.sleep(0.05)
                    continue
                if holder == me:
                    raise LotteryError(f"{self.path.parent} is already locked by this process") from None
                if holder.get("host") == me["host"]:
                    if _pid_alive(int(holder["pid"])):
                        raise self._held_by(holder) from None
                    self._take_over(holder, mtime, "its process is gone")
                    continue
                if watched is None or watched[:2] != (holder, mtime):
                    if watched is not None and watched[0] == holder:  # renewed while we watched: alive
                        raise self._held_by(holder) from None
                    watched = (holder, mtime, time.monotonic())
                elif time.monotonic() - watched[2] >= lease:
                    self._take_over(holder, mtime, f"its lease was not renewed for {lease:g} s")
                    watched = None
                    continue
                time.sleep(min(0.2, lease / 8))
                continue
            try:
                with _user_io_errors(self.path, "write"), os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:  # e.g. disk full: leave no empty lock file behind
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                raise
            self.held, self._me, self._lease = True, me, lease
            self._renewed, self._touched = time.monotonic(), self._mtime_ns()
            self._remove_killed_writers_temp_files()
            self._start_renewing()
            return
        raise LotteryError(f"could not lock {self.path.parent}: the lock file keeps changing")

    def _held_by(self, holder: dict) -> LotteryError:
        return LotteryError(
            f"{self.path.parent} is being written by another process "
            f"(host {holder.get('host')}, pid {holder.get('pid')}); "
            f"if that process is gone, delete {self.path}"
        )

    def _take_over(self, holder: dict, mtime: int | None, why: str) -> None:
        """Remove the lock of a gone holder, if it is still the very file we judged: moved away
        first (atomic), checked, then deleted; a file that changed meanwhile is put back."""
        moved = self.path.with_name(f"{LOCK_NAME}.takeover.{secrets.token_hex(8)}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return  # another contender took it first
        if self._read_holder(moved) != holder or self._mtime_ns(moved) != mtime:
            with contextlib.suppress(FileExistsError):
                os.link(moved, self.path)  # not what we judged (its holder renewed): put it back
            moved.unlink()
            return
        moved.unlink()
        record = {"run": str(self.path.parent), "holder": holder, "how": why}
        TAKEOVERS.append(record)
        print(f"lock: took over {self.path.parent} from host {holder.get('host')} pid {holder.get('pid')} "
              f"({why})", file=sys.stderr, flush=True)

    # ----------------------------------------------------------------------- the lease

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_until_released, name=f"lease {self.path.parent}",
                                         daemon=True)
        self._renewer.start()

    def _renew_until_released(self) -> None:
        while not self._stop.wait(self._lease / 4):
            if not self.renew():
                print(f"lock: lost {self.path.parent} to another holder; stopping this process at once "
                      "(the run resumes from its checkpoint where it is retried)", file=sys.stderr, flush=True)
                os._exit(LOST_LEASE_EXIT)
                return  # (only where os._exit is replaced: tests)

    def renew(self) -> bool:
        """Touch the lock file (a new lease); False if it is no longer ours. Late (3/4 of the
        lease gone, so a contender may be about to take over), the file is claimed by moving it
        away and back, the same careful way a takeover checks it."""
        try:
            if time.monotonic() - self._renewed < 0.75 * self._lease:
                if self._read_holder() != self._me or self._mtime_ns() != self._touched:
                    return False
                os.utime(self.path)
            else:
                claimed = self.path.with_name(f"{LOCK_NAME}.renew.{secrets.token_hex(8)}")
                os.rename(self.path, claimed)
                if self._read_holder(claimed) != self._me or self._mtime_ns(claimed) != self._touched:
                    with contextlib.suppress(FileExistsError):
                        os.link(claimed, self.path)
                    claimed.unlink()
                    return False
                os.utime(claimed)
                try:
                    os.link(claimed, self.path)
                finally:
                    claimed.unlink()
        except FileExistsError:
            return False  # someone locked it while we held it away: theirs now
        except FileNotFoundError:
            return False
        except OSError:
            return True  # a passing filesystem error: retried at the next renewal
        self._renewed, self._touched = time.monotonic(), self._mtime_ns()
        return True

    # ----------------------------------------------------------------------- files

    def _remove_killed_writers_temp_files(self) -> None:
        """A killed holder's half-written files (a run's, or a checkpoint's), now ours to clean."""
        directory = self.path.parent
        remove_temp_files(directory, (*layout.RESULT_FILES, layout.COMPLETE, layout.CHECKPOINT_FILE))
        remove_temp_files(directory / layout.CHECKPOINT, (layout.CHECKPOINT_FILE,))

    def _read_holder(self, path: Path | None = None) -> dict | None:
        """The holder's {"host", "pid"}, or None if the file is gone, empty or not such a record."""
        try:
            holder = json.loads((path or self.path).read_text())
        except (FileNotFoundError, ValueError):  # ValueError: bad JSON or not UTF-8
            return None
        if not isinstance(holder, dict) or type(holder.get("pid")) is not int:
            return None
        return holder

    def _mtime_ns(self, path: Path | None = None) -> int | None:
        try:
            return (path or self.path).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def release(self) -> None:
        if self.held:
            self._stop.set()
            if self._renewer is not None and self._renewer is not threading.current_thread():
                self._renewer.join()
            if self._read_holder() == self._me:  # (never delete a lock that is no longer ours)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
