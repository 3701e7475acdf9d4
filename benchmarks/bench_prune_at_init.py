"""Scoring cost of the pruning-at-initialization strategies, seconds per call, on LeNet-300-100
(MNIST) and Conv-2 (CIFAR-10), each with its paper preset.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_prune_at_init.py [--density 0.05] [--repeats 1]

Times `strategies.prune_at_init` (scoring plus the global top-k) for snip, grasp, synflow (100
rounds) and random, side by side in one process on the same network, and prints each one's time
and its ratio to `global` magnitude pruning (one global sort, the cheapest mask there is) measured
in the same run. Data: the real datasets under $LTH_DATA if present, else random data of their
shapes (the cost does not depend on the values). Threads: torch's default unless --threads.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from types import SimpleNamespace

import torch
from benchmarks_common import data_root

from lottery_ticket.hparams import preset_hparams
from lottery_ticket.masking import full_masks
from lottery_ticket.models import build_model
from lottery_ticket.pruning import prune_global
from lottery_ticket.strategies import prune_at_init

STRATEGIES = ("random", "snip", "grasp", "synflow")


def splits_for(dataset: str, shape: tuple, classes: int = 10):
    root = data_root()
    if root is not None and (dataset == "mnist" or (root / "cifar10").is_dir()):
        from lottery_ticket.data import load_dataset

        return load_dataset(dataset, root, download=False, quiet=True)
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(train_x=torch.randn(5000, *shape, generator=g), train_y=torch.arange(5000) % classes,
                           num_classes=classes, input_shape=shape)


def bench(model_name: str, dataset: str, shape: tuple, density: float, repeats: int) -> None:
    hp = preset_hparams("paper", model=model_name)
    hp = replace(hp, pruning=replace(hp.pruning, never_prune=""))
    splits = splits_for(dataset, shape)
    model = build_model(model_name, seed=0, input_shape=shape)
    weights = model.state_dict()

    def magnitude():
        return prune_global(full_masks(model), weights, 1 - density)

    times = {}
    for name, fn in [("global (reference)", magnitude)] + [
            (s, lambda s=s: prune_at_init(hp, model, splits, s, density, seed=0)) for s in STRATEGIES]:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        times[name] = best
    reference = times["global (reference)"]
    print(f"{model_name} ({dataset}), density {density}, {torch.get_num_threads()} threads, best of {repeats}:")
    for name, seconds in times.items():
        print(f"  {name:<20} {seconds:8.2f} s   {seconds / reference:8.1f} x global magnitude")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench("lenet_300_100", "mnist", (1, 28, 28), args.density, args.repeats)
    bench("conv2", "cifar10", (3, 32, 32), args.density, args.repeats)


if __name__ == "__main__":
    main()
