"""The run lock across machines (lock.py): a holder on another host is alive while it renews its
lease; one that stops renewing is taken over after one lease, logged; two contenders never both
get it; a holder whose lock was taken exits rather than write beside the new holder."""

import json
import os
import threading
import time

import pytest

from lottery_ticket import lock as lock_module
from lottery_ticket.errors import LotteryError
from lottery_ticket.lock import LOST_LEASE_EXIT, RunLock

LEASE = 0.4  # seconds: short leases keep these tests short


@pytest.fixture(autouse=True)
def short_lease(monkeypatch):
    monkeypatch.setenv("LTH_LOCK_LEASE_SECONDS", str(LEASE))
    monkeypatch.setattr(lock_module, "_host_name", None)
    monkeypatch.setattr(lock_module, "TAKEOVERS", [])


def test_a_holder_on_another_host_that_stops_renewing_is_taken_over_after_one_lease(tmp_path, capsys):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"host": "other-machine", "pid": os.getpid()}))  # (a live pid here says nothing there)
    started = time.monotonic()
    with RunLock(tmp_path):
        waited = time.monotonic() - started
        assert json.loads(lock.read_text()) == {"host": lock_module.host_name(), "pid": os.getpid()}
    assert waited >= LEASE
    assert [(t["holder"]["host"], t["run"]) for t in lock_module.TAKEOVERS] == [("other-machine", str(tmp_path))]
    assert "took over" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_holder_on_another_host_that_renews_keeps_its_lock(tmp_path):
    holder = RunLock(tmp_path, host="machine-a")
    holder.acquire()
    try:
        first = (tmp_path / ".lock").stat().st_mtime_ns
        time.sleep(3 * LEASE)  # longer than a lease: renewed meanwhile
        assert (tmp_path / ".lock").stat().st_mtime_ns != first
        with pytest.raises(LotteryError, match="host machine-a"):
            RunLock(tmp_path, host="machine-b").acquire()
        assert json.loads((tmp_path / ".lock").read_text())["host"] == "machine-a"
    finally:
        holder.release()
    assert not lock_module.TAKEOVERS and not (tmp_path / ".lock").exists()


def _contend(directory, host: str, hold: float, outcomes: list) -> None:
    """Take the lock as `host` and hold it `hold` seconds; "won" or "lost" in `outcomes`."""
    held = RunLock(directory, host=host)
    try:
        held.acquire()
    except LotteryError:
        outcomes.append("lost")
        return
    outcomes.append("won")
    time.sleep(hold)
    held.release()


def test_two_contenders_for_an_expired_lock_never_both_get_it(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"host": "dead-machine", "pid": 1}))
    outcomes: list[str] = []
    contenders = [threading.Thread(target=_contend, args=(tmp_path, name, 4 * LEASE, outcomes))
                  for name in ("machine-a", "machine-b")]
    for thread in contenders:
        thread.start()
    for thread in contenders:
        thread.join()
    assert sorted(outcomes) == ["lost", "won"]
    assert len(lock_module.TAKEOVERS) == 1
    assert not list(tmp_path.iterdir())


def test_a_holder_whose_lock_was_taken_exits_at_once(tmp_path, monkeypatch, capsys):
    exits = []
    monkeypatch.setattr(lock_module.os, "_exit", exits.append)
    holder = RunLock(tmp_path, host="machine-a")
    holder.acquire()
    (tmp_path / ".lock").write_text(json.dumps({"host": "machine-b", "pid": 12345}))  # taken meanwhile
    deadline = time.monotonic() + 30
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert exits[:1] == [LOST_LEASE_EXIT]
    assert "lost" in capsys.readouterr().err
    holder.release()
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "machine-b"  # the new holder's, untouched
