"""One writer per run: an exclusive lock file naming its holder (host and process id).

The lock is a file created with O_EXCL. A second process fails at once with the holder's name.
A lock left by a dead process on this host is stale: it is removed and taken over, and so is an
empty or unreadable lock file older than STALE_SECONDS (a crash between creating and writing it;
a younger one is waited for). Whoever takes the lock removes the temporary files of atomic writes
that a killed holder left: only those of the files a run writes, only in the directory and its
checkpoint/ folder (a user's own files, even `.*.tmp` ones, are never touched).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from lottery_ticket import layout
from lottery_ticket.errors import LotteryError
from lottery_ticket.store import _user_io_errors, remove_temp_files

LOCK_NAME = layout.LOCK
STALE_SECONDS = 5.0  # an empty or unreadable lock file older than this was left by a crash


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        with _user_io_errors(self.path.parent, "create directory"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        # An empty or unreadable lock file is either being written right now (its holder is named
        # within milliseconds) or was left by a writer killed in between (it turns stale after
        # STALE_SECONDS): wait for one or the other rather than fail at once.
        deadline = time.monotonic() + STALE_SECONDS + 2.0
        while time.monotonic() < deadline:
            try:
                with _user_io_errors(self.path, "write"):
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:
                    if self._age() > STALE_SECONDS:  # empty or garbage for a while: a crashed writer
                        with contextlib.suppress(FileNotFoundError):
                            self.path.unlink()
                    else:
                        time.sleep(0.05)
                    continue
                if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", -1))):
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()  # stale: its process is gone
                    continue
                if holder == me:
                    raise LotteryError(f"{self.path.parent} is already locked by this process") from None
                raise LotteryError(
                    f"{self.path.parent} is being written by another process "
                    f"(host {holder.get('host')}, pid {holder.get('pid')}); "
                    f"if that process is gone, delete {self.path}"
                ) from None
            try:
                with _user_io_errors(self.path, "write"), os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:  # e.g. disk full: leave no empty lock file behind
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                raise
            self.held = True
            self._remove_killed_writers_temp_files()
            return
        raise LotteryError(f"could not lock {self.path.parent}: the lock file keeps changing")

    def _remove_killed_writers_temp_files(self) -> None:
        """A killed holder's half-written files (a run's, or a checkpoint's), now ours to clean."""
        directory = self.path.parent
        remove_temp_files(directory, (*layout.RESULT_FILES, layout.COMPLETE, layout.CHECKPOINT_FILE))
        remove_temp_files(directory / layout.CHECKPOINT, (layout.CHECKPOINT_FILE,))

    def _read_holder(self) -> dict | None:
        """The holder's {"host", "pid"}, or None if the file is gone, empty or not such a record."""
        try:
            holder = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):  # ValueError: bad JSON or not UTF-8
            return None
        if not isinstance(holder, dict) or type(holder.get("pid")) is not int:
            return None
        return holder

    def _age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
