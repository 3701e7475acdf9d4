"""Training throughput of LeNet-300-100 at batch 60, all measured in ONE process.

(a) the plain reference loop: an nn.Module, autograd, torch.optim.Adam with default settings,
    masks re-applied after every step by multiplying the weights, batches sliced from in-memory
    tensors;
(b) our training step: `trainer.make_step(..., fast=True)` with `trainer.make_optimizer`'s
    optimizer (fused Adam);
(c) a whole run, `trainer.train` with the paper's evaluation schedule (every 100 iterations on
    5,000 validation + 10,000 test examples, the full training split at the end), against the
    reference loop with the same evaluations; projected to the paper's 50,000 iterations; also
    with evaluation in a background thread on the spare core, as `lth train` runs it;
(d) the large-matmul rate (2048x2048 sgemm), for the arithmetic floor of one step.

Throughputs are medians of interleaved repeats (the machine may be shared). Run:

    .venv/bin/python benchmarks/bench_train.py [--threads 1,2] [--steps 600] [--repeats 3]
        [--run-iterations 3000] [--run-threads 1] [--run-repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from benchmarks_common import lenet_flops_per_step, load_splits

from lottery_ticket import trainer
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.masking import full_masks
from lottery_ticket.models import build_model

BATCH = 60
PAPER_ITERATIONS = 50_000


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a large float32 matrix product (the best of `repeats`)."""
    a, b, c = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    torch.mm(a, b, out=c)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=c)
        best = max(best, 2 * size**3 / (time.perf_counter() - started) / 1e9)
    return best


def level1_masks(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Masks like those of pruning level 1 (80% of hidden weights, 90% of output weights kept)."""
    g = torch.Generator().manual_seed(seed)
    keep = {"output.weight": 0.9}
    return {k: (torch.rand(v.shape, generator=g) < keep.get(k, 0.8)).float() for k, v in full_masks(model).items()}


class Reference(nn.Module):
    """LeNet-300-100 as anyone would write it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class SlicedBatches:
    """Consecutive batches sliced from the in-memory training tensors, wrapping around."""

    def __init__(self, splits):
        self.x, self.y = splits.train_x, splits.train_y
        self.position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + BATCH > len(self.y):
            self.position = 0
        start, self.position = self.position, self.position + BATCH
        return self.x[start:start + BATCH], self.y[start:start + BATCH]


class ReferenceLoop:
    """(a): the plain loop. `run(n)` trains n steps; `evaluate` is the plain evaluation."""

    def __init__(self, splits, masks):
        self.model = Reference()
        self.masks = [(layer.weight, masks[name]) for layer, name in
                      zip((self.model.fc1, self.model.fc2, self.model.fc3), masks, strict=True)]
        with torch.no_grad():
            for w, m in self.masks:
                w.mul_(m)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1.2e-3)
        self.batches = SlicedBatches(splits)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x, y = self.batches.next()
            self.optimizer.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                for w, m in self.masks:
                    w.mul_(m)

    @torch.no_grad()
    def evaluate(self, x, y) -> tuple[float, float]:
        logits = self.model(x)
        return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()

    def run_with_evaluations(self, splits, iterations: int, eval_every: int) -> None:
        """The same schedule as trainer.train: evaluate at 0, every `eval_every`, train split at the end."""
        evaluations = [(splits.validation_x, splits.validation_y), (splits.test_x, splits.test_y)]
        for x, y in evaluations:
            self.evaluate(x, y)
        done = 0
        while done < iterations:
            n = min(eval_every, iterations - done)
            self.run(n)
            done += n
            for x, y in evaluations:
                self.evaluate(x, y)
        self.evaluate(splits.train_x, splits.train_y)


class OurSteps:
    """(b): the trainer's step function, fed the same sliced batches as the reference."""

    def __init__(self, splits, masks, make_optimizer):
        self.model = build_model("lenet_300_100", seed=0)
        hp = preset_hparams("paper")
        self.optimizer = make_optimizer(self.model, hp.training)
        self.step = trainer.make_step(self.model, self.optimizer, masks, fast=True)
        self.batches = SlicedBatches(splits)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step(*self.batches.next())


def load_average() -> str:
    """Other jobs on the machine change every number here: print the load with the results."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def rate(fn, steps: int) -> float:
    started = time.perf_counter()
    fn(steps)
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to measure")
    parser.add_argument("--steps", type=int, default=600, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run-iterations", type=int, default=3000,
                        help="iterations of the end-to-end runs (0: skip them)")
    parser.add_argument("--run-threads", type=int, default=1,
                        help="threads for the end-to-end runs (default 1: under load, 2 OpenMP threads "
                             "collapse, see PROFILE.md)")
    parser.add_argument("--run-repeats", type=int, default=1)
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    splits = load_splits()
    masks = level1_masks(build_model("lenet_300_100", seed=0))
    flops = lenet_flops_per_step(BATCH)
    naive_flops = 3 * 2 * BATCH * (784 * 300 + 300 * 100 + 100 * 10)
    print(f"data: {getattr(splits, 'name', '?')}; LeNet-300-100, batch {BATCH}, masks at level-1 density; "
          f"load average {load_average()}")
    print(f"FLOPs per step: {flops / 1e6:.1f} M (forward + weight gradients + input gradients of layers 2-3; "
          f"{naive_flops / 1e6:.1f} M if the first layer's input gradient were computed too)")

    results = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        reference = ReferenceLoop(splits, masks)
        ours = OurSteps(splits, masks, trainer.make_optimizer)
        contenders = {"reference": reference.run, "ours": ours.run}
        for fn in contenders.values():
            fn(50)  # warm-up
        samples = {name: [] for name in contenders}
        samples["matmul GFLOP/s"] = []
        for _ in range(args.repeats):  # interleaved, so that load changes hit all alike
            for name, fn in contenders.items():
                samples[name].append(rate(fn, args.steps))
            samples["matmul GFLOP/s"].append(matmul_rate())
        results[threads] = {name: statistics.median(v) for name, v in samples.items()}

    print("\nstep throughput (median it/s of interleaved repeats; floor = large-matmul rate / FLOPs per step)")
    best_reference = max(r["reference"] for r in results.values())
    best_gflops = max(r["matmul GFLOP/s"] for r in results.values())
    for threads, r in results.items():
        floor = r["matmul GFLOP/s"] * 1e9 / flops
        print(f"  {threads} thread(s): large matmul {r['matmul GFLOP/s']:.1f} GFLOP/s -> floor {floor:.0f} it/s")
        for name in ("reference", "ours"):
            it_s = r[name]
            print(f"    {name:26s} {it_s:7.0f} it/s  {it_s * flops / 1e9:6.1f} GFLOP/s  "
                  f"x{it_s / r['reference']:.2f} vs reference at {threads} thread(s)  "
                  f"x{it_s / best_reference:.2f} vs best reference  {it_s / floor:.2f} of this floor  "
                  f"{it_s * flops / 1e9 / best_gflops:.2f} of the best floor")

    if args.run_iterations <= 0:
        return
    end_to_end(splits, masks, args.run_iterations, args.run_threads, args.run_repeats)


def end_to_end(splits, masks, n: int, threads: int, repeats: int) -> None:
    """(c): whole runs with the paper's evaluation schedule, interleaved `repeats` times."""
    torch.set_num_threads(threads)
    hp = preset_hparams("paper")
    hp = replace(hp, training=replace(hp.training, iterations=n))
    print(f"\nend to end, {n} iterations, evaluation every {hp.training.eval_every} on "
          f"{len(splits.validation_y)} + {len(splits.test_y)} examples (+ the training split at the end), "
          f"{threads} thread(s), best of {repeats}:")
    model = build_model("lenet_300_100", seed=0)
    full_train = time.perf_counter()
    trainer.evaluate(model, splits.train_x, splits.train_y)
    full_train = time.perf_counter() - full_train

    def train_with(module):
        return lambda: module.train(build_model("lenet_300_100", seed=0), splits, hp, order_seed=0, masks=masks)

    cores = os.cpu_count() or 1
    runs = {
        "reference loop": lambda: ReferenceLoop(splits, masks).run_with_evaluations(splits, n, hp.training.eval_every),
        "trainer.train (as is)": train_with(trainer),
        # what `lth train` does: training on `threads`, evaluation in the background on the spare core
        "trainer.train, background evaluation": lambda: trainer.train(
            build_model("lenet_300_100", seed=0), splits, hp, order_seed=0, masks=masks, eval_threads=cores,
            background_eval=cores > 1),
    }
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - started)
    reference = min(seconds["reference loop"])
    for name, values in seconds.items():
        s = min(values)
        projected = (s - full_train) * PAPER_ITERATIONS / n + full_train
        print(f"  {name:44s} {s:7.2f} s  projected to 50,000 iterations: {projected:5.0f} s  "
              f"x{reference / s:.2f} vs reference loop")
    print(f"  (one evaluation of the training split, counted once in the projection: {full_train:.2f} s; "
          f"load average {load_average()})")


if __name__ == "__main__":
    main()
