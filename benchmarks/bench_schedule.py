"""A lottery with its controls in one command vs `lth lottery` then `lth reinit` (issue 16, item 3).

The LeNet protocol's shape: 3 trials x 16 levels (--levels 15), one reinit run at levels 0, 7 and
15 of every trial, on 2 worker processes (the default on 2 cores), at reduced --iterations. Three
configurations, each run as the commands a user types (process start-up included), one after the
other in this one script:

* reference: `lth lottery` as it was before the job graph -- one job per trial, so with 3 trials on
  2 workers the third trial runs alone on one core -- then `lth reinit --control reinit` (9 runs on
  2 workers). The per-trial lottery is `runner.lottery_trial` through `runner.run_jobs`, exactly
  what `lth lottery` ran then (this script's `--trial-jobs` mode);
* levels: today's `lth lottery` (each level a job, the trials interleaved) then `lth reinit`;
* one command: `lth lottery --controls reinit --control-levels 0,7,15`.

It prints each wall time, the worker time spent training (the sum of the runs' own times, from
their report lines), the idle worker time (2 x wall - busy), and the ratios. A simple model of the
schedule, every run one time unit T: the reference takes (16 + 16) + ceil(9 / 2) = 37 T with 17 T of
idle worker time (trial 2 alone for 16 T, the last reinit run alone); levels 24 + 5 = 29 T; one
command ceil(57 / 2) = 29 T with 1 T idle. So the ratio one command / reference tends to 29 / 37 =
0.78 as runs get long (at 50,000 iterations fixed costs -- process start-up, file writes -- vanish
against the runs).

    .venv/bin/python benchmarks/bench_schedule.py [--iterations 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks_common import data_root, load_average

TRIALS, LEVELS, CONTROL_LEVELS = 3, 15, "0,7,15"
REPORT_LINE = re.compile(r"Pm [0-9.]+%.*\(([0-9.]+) s\)$")


def lth(*args) -> list[str]:
    return [sys.executable, "-m", "lottery_ticket.cli", *map(str, args)]


def timed(commands: list[list[str]]) -> tuple[float, float, int]:
    """Run `commands` one after the other: (wall seconds, worker seconds in runs, runs reported)."""
    started, busy, runs = time.perf_counter(), 0.0, 0
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
        for line in done.stderr.splitlines():
            if match := REPORT_LINE.search(line):
                busy += float(match.group(1))
                runs += 1
    return time.perf_counter() - started, busy, runs


def trial_jobs_lottery(exp: str, iterations: int, workers: int) -> None:
    """`lth lottery --trials 3` as before the job graph: one `LotteryJob` per trial (see cli.cmd_lottery
    before issue 16)."""
    from dataclasses import replace

    from lottery_ticket.cli import _with_background_eval
    from lottery_ticket.hparams import preset_hparams
    from lottery_ticket.runner import (
        LotteryJob,
        RunOptions,
        lottery_trial,
        prepare_experiment,
        run_jobs,
    )

    hp = preset_hparams("paper")
    hp = replace(hp, training=replace(hp.training, iterations=iterations))
    ctx = RunOptions(data_root=str(data_root()), download=False)
    prepare_experiment(exp, hp, 0)
    jobs = [LotteryJob(exp, hp, 0, trial, LEVELS) for trial in range(TRIALS)]
    run_jobs(lottery_trial, jobs, workers, 1, _with_background_eval(ctx, workers), share=hp,
             runs=TRIALS * (LEVELS + 1), what="trials")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trial-jobs", metavar="DIR", help=argparse.SUPPRESS)  # (the reference's lottery)
    args = parser.parse_args()
    if args.trial_jobs:
        trial_jobs_lottery(args.trial_jobs, args.iterations, args.workers)
        return
    if data_root() is None:
        raise SystemExit("real MNIST not found: set LTH_DATA")
    common = ["--iterations", args.iterations, "--data-root", data_root(), "--no-download"]
    workers = ["--workers", args.workers]
    reinit = ["--control", "reinit", "--levels", CONTROL_LEVELS, "--data-root", data_root(), *workers]
    print(f"LeNet lottery, {TRIALS} trials x {LEVELS + 1} levels, reinit at levels {CONTROL_LEVELS}, "
          f"{args.iterations} iterations per run, {args.workers} workers, {os.cpu_count()} cores; "
          f"load average before: {load_average()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        configurations = {
            "reference (trial jobs, then lth reinit)": [
                [sys.executable, __file__, "--trial-jobs", f"{tmp}/a", "--iterations", str(args.iterations),
                 "--workers", str(args.workers)],
                lth("reinit", "--experiment", f"{tmp}/a", *reinit)],
            "levels (lth lottery, then lth reinit)": [
                lth("lottery", "--trials", TRIALS, "--levels", LEVELS, *common, *workers, "--output-dir", f"{tmp}/b"),
                lth("reinit", "--experiment", f"{tmp}/b", *reinit)],
            "one command (lth lottery --controls reinit)": [
                lth("lottery", "--trials", TRIALS, "--levels", LEVELS, *common, *workers, "--output-dir", f"{tmp}/c",
                    "--controls", "reinit", "--control-levels", CONTROL_LEVELS)],
        }
        for name, commands in configurations.items():
            wall, busy, runs = timed(commands)
            results[name] = wall
            idle = args.workers * wall - busy
            print(f"{name}: {wall:.0f} s wall, {runs} runs, {busy:.0f} worker-s in runs, {idle:.0f} worker-s "
                  f"idle or in start-up ({100 * idle / (args.workers * wall):.0f}%); load average {load_average()}",
                  flush=True)
    reference, levels, one = results.values()
    print(f"ratio one command / reference: {one / reference:.3f} (target <= 0.8; model 29/37 = 0.784)")
    print(f"ratio one command / levels:    {one / levels:.3f} (model 29/29 = 1.0)")
    print(f"ratio levels / reference:      {levels / reference:.3f} (model 29/37 = 0.784)")


if __name__ == "__main__":
    main()
