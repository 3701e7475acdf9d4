"""Two LeNet runs in parallel (2 processes x 1 thread) vs the same two runs one after the other.

Every contender trains the same two runs (paper hyperparameters, evaluation every 100 iterations
on validation + test, the training split at the end, different order seeds and initializations):

* in parallel, one process per core with one thread each, evaluating inline (what the worker pool
  of `lth lottery`, `lth reinit` and `lth sweep` does);
* one after the other with the same settings (one thread, evaluation inline): the target ratio;
* one after the other on 2 threads, and one after the other as a lone `lth train` runs (training
  on one thread, evaluation in a background thread on the second core): a lone run already uses
  both cores these ways, so these ratios say how much parallel runs add over the best lone run;
* both networks in ONE process as one batched computation (`batched.train_batched`).

Data loading and process start-up are excluded: parallel workers load their data, then wait at a
barrier; the clock starts when they are released.

    .venv/bin/python benchmarks/bench_parallel.py [--iterations 2000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from dataclasses import replace

import torch
from benchmarks_common import lenet, load_average, load_splits

from lottery_ticket import trainer
from lottery_ticket.hparams import preset_hparams

SEEDS = (0, 1)


def hparams(iterations: int):
    hp = preset_hparams("paper")
    return replace(hp, training=replace(hp.training, iterations=iterations))


def one_run(splits, hp, seed: int, background_eval: bool = False) -> None:
    trainer.train(lenet(seed), splits, hp, order_seed=seed, background_eval=background_eval)


def worker(seed: int, iterations: int, barrier, done) -> None:
    torch.set_num_threads(1)
    splits = load_splits()
    hp = hparams(iterations)
    one_run(splits, hp, seed)  # warm-up (first-call costs), then wait for the other worker
    barrier.wait()
    one_run(splits, hp, seed)
    done.put(time.perf_counter())


def parallel(iterations: int) -> float:
    context = mp.get_context("spawn")
    barrier, done = context.Barrier(len(SEEDS) + 1), context.Queue()
    workers = [context.Process(target=worker, args=(s, iterations, barrier, done)) for s in SEEDS]
    for w in workers:
        w.start()
    barrier.wait()
    started = time.perf_counter()
    finished = max(done.get() for _ in workers)
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"worker failed with exit code {w.exitcode}")
    return finished - started


def sequential(iterations: int, threads: int, splits, background_eval: bool = False) -> float:
    torch.set_num_threads(threads)
    hp = hparams(iterations)
    one_run(splits, hp, 0, background_eval)  # warm-up
    started = time.perf_counter()
    for seed in SEEDS:
        one_run(splits, hp, seed, background_eval)
    return time.perf_counter() - started


def batched(iterations: int, threads: int, splits) -> float:
    from lottery_ticket.batched import train_batched

    torch.set_num_threads(threads)
    hp = hparams(iterations)
    models = [lenet(s) for s in SEEDS]
    train_batched([lenet(s) for s in SEEDS], splits, hp, list(SEEDS))  # warm-up
    started = time.perf_counter()
    train_batched(models, splits, hp, list(SEEDS))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="iterations of each run")
    parser.add_argument("--no-batched", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time counts")
    args = parser.parse_args()
    splits = load_splits()
    print(f"load average before: {load_average()}")
    print(f"2 runs of {args.iterations} iterations each, evaluation every 100:")
    contenders = {
        "parallel, 2 processes x 1 thread": lambda: parallel(args.iterations),
        "sequential, 1 thread": lambda: sequential(args.iterations, 1, splits),
        "sequential, 2 threads": lambda: sequential(args.iterations, 2, splits),
        "sequential, as lth train (1 + background)": lambda: sequential(args.iterations, 1, splits, True),
    }
    if not args.no_batched:
        contenders["batched (train_batched K=2), 1 thread"] = lambda: batched(args.iterations, 1, splits)
        contenders["batched (train_batched K=2), 2 threads"] = lambda: batched(args.iterations, 2, splits)
    samples = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved; the best of the repeats is the least disturbed
        for name, fn in contenders.items():
            samples[name].append(fn())
    times = {name: min(values) for name, values in samples.items()}
    same = times["sequential, 1 thread"]
    best = min(v for k, v in times.items() if k.startswith("sequential"))
    for name, seconds in times.items():
        print(f"  {name:42s} {seconds:7.2f} s   / same runs sequential {seconds / same:.2f}   "
              f"/ best sequential {seconds / best:.2f}   (all repeats: {', '.join(f'{v:.2f}' for v in samples[name])})")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
