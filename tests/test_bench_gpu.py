"""benchmarks/bench_gpu.py runs end to end (on the CPU here), so that the few minutes of a lent GPU
machine are not lost to a broken script: every engine it times builds and steps, its output names
each contender."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_runs_on_cpu():
    env = dict(os.environ)  # real data where LTH_DATA or ../shared/data has it, else random data
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--models", "lenet,resnet18",
         "--steps", "1", "--repeats", "1", "--k", "2", "--conv-k", "2", "--train-examples", "256",
         "--run-iterations", "100"],
        capture_output=True, text=True, env=env, cwd=ROOT / "benchmarks", timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "lenet (preset paper, batch 60, " in out
    assert "resnet18 (preset resnet18, batch 128, " in out and "augmentation on the device" in out
    assert out.count("K=2 batched") == 2 and "one run, augmentation off" in out
    assert "(d) lth train --preset paper --device cpu --iterations 100: " in out or "(d) skipped" in out
