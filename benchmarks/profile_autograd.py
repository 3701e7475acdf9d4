"""Where the time of the general (autograd) training path goes, for LeNet-300-100 at batch 60.

Runs `trainer.train(..., fast=False)` under torch.profiler for a few hundred iterations and prints
the operators by self CPU time, then a coarse wall-clock split: training steps vs evaluation.

    .venv/bin/python benchmarks/profile_autograd.py [--iterations 300] [--threads 1] [--fast]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from benchmarks_common import lenet, load_splits

from lottery_ticket import trainer
from lottery_ticket.hparams import preset_hparams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fast", action="store_true", help="profile the fast path instead")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_splits()
    hp = preset_hparams("paper")
    # eval_every larger than the run: only the evaluations at 0 and at the end.
    hp = replace(hp, training=replace(hp.training, iterations=args.iterations, eval_every=args.iterations))
    trainer.train(lenet(), splits, hp, order_seed=0, fast=args.fast)  # warm-up
    # Profile the training steps only: evaluation is timed separately below.
    evaluate = trainer.evaluate
    trainer.evaluate = lambda model, x, y: (0.0, 0.0)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            trainer.train(lenet(), splits, hp, order_seed=0, fast=args.fast)
    finally:
        trainer.evaluate = evaluate
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))

    # Wall-clock split without the profiler: the evaluations of one run vs its training steps.
    model = lenet()
    started = time.perf_counter()
    trainer.train(model, splits, hp, order_seed=0, fast=args.fast)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    for x, y in ((splits.validation_x, splits.validation_y), (splits.test_x, splits.test_y)):
        trainer.evaluate(model, x, y)
    one_eval = time.perf_counter() - started
    full_train = time.perf_counter()
    trainer.evaluate(model, splits.train_x, splits.train_y)
    full_train = time.perf_counter() - full_train
    steps = whole - 2 * one_eval - full_train
    print(f"run of {args.iterations} iterations: {whole:.3f} s; one validation+test evaluation "
          f"{one_eval * 1e3:.1f} ms; full-train evaluation {full_train * 1e3:.1f} ms; "
          f"steps {steps / args.iterations * 1e6:.0f} us/iteration ({args.iterations / steps:.0f} it/s)")


if __name__ == "__main__":
    main()
