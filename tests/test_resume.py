"""Kill `lth lottery` with SIGKILL at random moments, resume, and get the uninterrupted results."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

from lottery_ticket import checkpoint, layout
from lottery_ticket.cli import main
from lottery_ticket.store import load_tensors

ARGS = ["lottery", "--levels", "2", "--iterations", "700", "--eval-every", "50", "--quiet",
        "--checkpoint-seconds", "0.05", "--workers", "1", "--threads", "1"]


def run_files(exp: Path, trials=(0,), levels=(0, 1, 2)) -> dict[str, bytes | dict]:
    """Every result of an experiment: tensors compared exactly, metrics byte for byte."""
    out = {}
    for trial in trials:
        for level in levels:
            run = layout.run_dir(exp, trial, level)
            for name in (layout.MASKS, layout.INITIAL, layout.FINAL):
                out[f"{trial}/{level}/{name}"] = load_tensors(run / name)
            out[f"{trial}/{level}/metrics"] = (run / layout.METRICS).read_bytes()
    return out


def assert_same_files(expected: dict, got: dict) -> None:
    for key, value in expected.items():
        if isinstance(value, dict):
            assert value.keys() == got[key].keys()
            for name in value:
                assert torch.equal(value[name], got[key][name]), (key, name)
        else:
            assert value == got[key], key


def kill_and_resume(args: list[str], exp: Path, data_root: Path, kill_moments) -> int:
    """Start `lth *args` once per kill moment, SIGKILL it at that moment unless it finished,
    then run it to the end; the number of kills. A kill moment is a number of seconds, or a
    function polled every 10 ms until it says to kill."""
    command = [sys.executable, "-m", "lottery_ticket.cli", *args, "--output-dir", str(exp),
               "--data-root", str(data_root)]
    kills = 0
    for moment in kill_moments:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + (moment if not callable(moment) else 600)
        while proc.poll() is None and time.monotonic() < deadline and not (callable(moment) and moment()):
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0, proc.stderr.read().decode()
        break
    final = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert not any(exp.rglob(".lock"))
    assert not any(exp.rglob("*.tmp"))
    return kills


def test_sigkill_at_random_moments_then_resume_gives_identical_results(tmp_path, mnist_root):
    reference = tmp_path / "reference"
    torch.set_num_threads(1)
    assert main([*ARGS, "--output-dir", str(reference), "--data-root", str(mnist_root)]) == 0
    exp = tmp_path / "killed"
    rng = random.Random(1234)  # the kill moments are seeded; the outcome must not depend on them

    def level_checkpoint(level: int):
        return lambda: (layout.run_dir(exp, 0, level) / layout.CHECKPOINT / checkpoint.FILE).exists()

    # mid-level 1 once its first checkpoint exists (whatever the machine's speed), then twice at
    # random moments: during start-up, training, evaluation or file writes
    kills = kill_and_resume(ARGS, exp, mnist_root, [level_checkpoint(1), rng.uniform(1.0, 5.0), rng.uniform(1.0, 5.0)])
    assert kills >= 1
    assert_same_files(run_files(reference), run_files(exp))


def test_two_processes_cannot_write_the_same_experiment(tmp_path, mnist_root):
    exp = tmp_path / "exp"
    # (an experiment far too long to finish while the second process starts: it is killed below)
    command = [sys.executable, "-m", "lottery_ticket.cli", *ARGS, "--output-dir", str(exp),
               "--data-root", str(mnist_root), "--checkpoint-seconds", "30", "--iterations", "1000000"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = layout.run_dir(exp, 0, 0) / ".lock"
        deadline = time.monotonic() + 60
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists()
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "another process" in second.stderr
    finally:
        first.kill()
        first.wait()


BATCHED_ARGS = ["lottery", "--batched", "--trials", "2", "--levels", "1", "--iterations", "700", "--eval-every",
                "50", "--quiet", "--checkpoint-seconds", "0.05", "--threads", "1"]


def test_batched_lottery_killed_mid_level_resumes_from_its_checkpoint(tmp_path, mnist_root):
    reference = tmp_path / "reference"
    torch.set_num_threads(1)
    assert main([*BATCHED_ARGS, "--output-dir", str(reference), "--data-root", str(mnist_root)]) == 0
    exp = tmp_path / "killed"
    seen: list[tuple[Path, int]] = []

    def checkpoint_past(iteration: int, new_computation: bool = False):
        """Kill once a batched checkpoint beyond `iteration` is on disk (with `new_computation`:
        one of another batched computation than the last kill's, i.e. the next level)."""
        def ready() -> bool:
            for f in (exp / layout.BATCHED_CHECKPOINTS).glob(f"*/{checkpoint.FILE}"):
                if new_computation and f == seen[-1][0]:
                    continue
                with contextlib.suppress(Exception):  # (being replaced right now)
                    with safe_open(str(f), framework="pt") as opened:
                        at = json.loads(opened.metadata()["meta"])["iteration"]
                    if at > iteration:
                        seen.append((f, at))
                        return True
            return False
        return ready

    # mid-level 0 twice (the second run resumes from the first's checkpoint), then mid-level 1
    moments = [checkpoint_past(150), checkpoint_past(300), checkpoint_past(100, new_computation=True)]
    kills = kill_and_resume(BATCHED_ARGS, exp, mnist_root, moments)
    assert kills == 3, seen
    assert seen[0][0] == seen[1][0] != seen[2][0], seen
    assert_same_files(run_files(reference, (0, 1), (0, 1)), run_files(exp, (0, 1), (0, 1)))
    assert not (exp / layout.BATCHED_CHECKPOINTS).exists()  # removed once their runs were written
