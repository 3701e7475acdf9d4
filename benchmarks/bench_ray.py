"""The same 8 LeNet runs through the local process pool and through Ray on this machine: Ray's
overhead per run (start-up of a private instance, scheduling, worker start-up, progress events).

Both contenders train 8 lottery trials at level 0 (LeNet-300-100, paper hyperparameters, 5,000
iterations each, evaluation every 100 on validation + test, the training split at the end), 2 at
a time with 1 thread each (the local pool: `--workers 2`; Ray: a private local instance with
2 CPUs and `--cpus-per-run 1`), each timed end to end in this one process (process and Ray
start-up, data loading, training, writing every file), in turns, `--repeats` times. The results
are checked bitwise equal. Target: Ray's wall time at most 1.10x the pool's.

    .venv/bin/python benchmarks/bench_ray.py [--iterations 5000] [--runs 8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks_common import data_root, load_average

from lottery_ticket import layout
from lottery_ticket.backends.ray_cluster import RayBackend
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.runner import (
    LotteryJob,
    RunOptions,
    lottery_trial,
    prepare_experiment,
    run_jobs,
)

WORKERS = 2


def experiment(directory: Path, iterations: int, runs: int) -> list[LotteryJob]:
    hp = preset_hparams("paper")
    hp = replace(hp, training=replace(hp.training, iterations=iterations))
    prepare_experiment(directory, hp, seed=0)
    return [LotteryJob(str(directory), hp, 0, trial, 0) for trial in range(runs)]


def result_files(exp: Path) -> dict:
    return {str(p.relative_to(exp)): p.read_bytes() for p in sorted(exp.rglob("*"))
            if p.name in layout.RESULT_FILES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    options = RunOptions(data_root=str(data_root()) if data_root() else None, quiet=True, download=False)
    print(f"{args.runs} runs x {args.iterations} iterations, {WORKERS} at a time x 1 thread; load {load_average()}")
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            local_dir, ray_dir = Path(scratch) / f"local{repeat}", Path(scratch) / f"ray{repeat}"
            started = time.perf_counter()
            run_jobs(lottery_trial, experiment(local_dir, args.iterations, args.runs), WORKERS, 1, options)
            local = time.perf_counter() - started
            backend = RayBackend(cpus_per_run=1)
            started = time.perf_counter()
            import ray

            ray.init(address="local", num_cpus=WORKERS, include_dashboard=False, logging_level="WARNING",
                     log_to_driver=False)
            connect = time.perf_counter() - started
            try:
                run_jobs(lottery_trial, experiment(ray_dir, args.iterations, args.runs), WORKERS, 1, options,
                         backend=backend)
            finally:
                ray.shutdown()
            with_ray = time.perf_counter() - started
            same = result_files(local_dir) == result_files(ray_dir)
            print(f"local pool: {local:.1f} s   Ray: {with_ray:.1f} s (start-up {connect:.1f} s)   "
                  f"overhead {(with_ray - local) / args.runs:+.2f} s per run = {with_ray / local:.3f}x the pool "
                  f"(target <= 1.10x); results bitwise equal: {same}; load {load_average()}")


if __name__ == "__main__":
    main()
