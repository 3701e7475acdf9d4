"""Kill `lth lottery` with SIGKILL at random moments, resume, and get the uninterrupted results."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from lottery_ticket import paths
from lottery_ticket.cli import main
from lottery_ticket.store import load_tensors

ARGS = ["lottery", "--levels", "2", "--iterations", "700", "--eval-every", "50", "--quiet",
        "--checkpoint-seconds", "0.05", "--workers", "1", "--threads", "1"]


def run_files(exp: Path) -> dict[str, bytes | dict]:
    """Every result of an experiment: tensors compared exactly, metrics byte for byte."""
    out = {}
    for level in range(3):
        run = paths.run_dir(exp, 0, level)
        for name in (paths.MASKS, paths.INITIAL, paths.FINAL):
            out[f"{level}/{name}"] = load_tensors(run / name)
        out[f"{level}/metrics"] = (run / paths.METRICS).read_bytes()
    return out


def test_sigkill_at_random_moments_then_resume_gives_identical_results(tmp_path, mnist_root):
    reference = tmp_path / "reference"
    torch.set_num_threads(1)
    assert main([*ARGS, "--output-dir", str(reference), "--data-root", str(mnist_root)]) == 0

    exp = tmp_path / "killed"
    command = [sys.executable, "-m", "lottery_ticket.cli", *ARGS, "--output-dir", str(exp),
               "--data-root", str(mnist_root)]
    rng = random.Random(1234)  # the kill moments are seeded; the outcome must not depend on them
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            code = proc.wait(timeout=rng.uniform(3.0, 8.0))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert code == 0, proc.stderr.read().decode()
        break
    final = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert kills >= 2, "the experiment finished before it could be interrupted twice"

    expected, got = run_files(reference), run_files(exp)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert value.keys() == got[key].keys()
            for name in value:
                assert torch.equal(value[name], got[key][name]), (key, name)
        else:
            assert value == got[key], key
    assert not any(exp.rglob(".lock"))
    assert not any(exp.rglob("*.tmp"))


def test_two_processes_cannot_write_the_same_experiment(tmp_path, mnist_root):
    exp = tmp_path / "exp"
    command = [sys.executable, "-m", "lottery_ticket.cli", *ARGS, "--output-dir", str(exp),
               "--data-root", str(mnist_root), "--checkpoint-seconds", "30"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = paths.run_dir(exp, 0, 0) / ".lock"
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
    command = [sys.executable, "-m", "lottery_ticket.cli", *BATCHED_ARGS, "--output-dir", str(exp),
               "--data-root", str(mnist_root)]
    rng = random.Random(99)
    checkpoints_seen = 0
    for _ in range(3):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            code = proc.wait(timeout=rng.uniform(4.0, 8.0))
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            checkpoints_seen += len(list((exp / paths.BATCHED_CHECKPOINTS).glob("*/state.safetensors")))
            continue
        assert code == 0, proc.stderr.read().decode()
        break
    final = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert checkpoints_seen >= 1, "no kill landed while a batched level had a checkpoint"

    for trial in (0, 1):
        for level in (0, 1):
            a, b = paths.run_dir(reference, trial, level), paths.run_dir(exp, trial, level)
            for name in (paths.MASKS, paths.INITIAL, paths.FINAL):
                ta, tb = load_tensors(a / name), load_tensors(b / name)
                assert all(torch.equal(ta[k], tb[k]) for k in ta), (trial, level, name)
            assert (a / paths.METRICS).read_bytes() == (b / paths.METRICS).read_bytes(), (trial, level)
    assert not (exp / paths.BATCHED_CHECKPOINTS).exists()  # removed once their runs were written
    assert not any(exp.rglob(".lock"))
    assert not any(exp.rglob("*.tmp"))
