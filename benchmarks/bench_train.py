"""Training throughput of LeNet-300-100 at batch 60, all measured in ONE process.

(a) the plain reference loop: an nn.Module, autograd, torch.optim.Adam with default settings,
    masks re-applied after every step by multiplying the weights, batches sliced from in-memory
    tensors (also shown: the same loop fed by a DataLoader, as a textbook loop is, with a
    `loss.item()` per step; it is slower, so the ratios use the sliced one);
(b) our training step: `trainer.make_step(..., fast=True)` with `trainer.make_optimizer`'s
    optimizer (fused Adam, stepped by `fast_optim`);
(c) end to end: `lth train --preset paper` (the CLI's own `main`, called in this process: data
    loading, evaluation every 100 iterations on 5,000 validation + 10,000 test examples, the
    training split at the end, metrics, TensorBoard, checkpoints), against the reference loop
    with the same evaluations on 1 and on 2 threads; 50,000 iterations by default, as the paper;
(d) the large-matmul rate (2048x2048 sgemm), for the arithmetic floor of one step.

(a), (b) and (d) are measured at each thread count and repeated, interleaved, so that other jobs
on the machine hit all alike; the median counts. Run:

    .venv/bin/python benchmarks/bench_train.py [--threads 1,2] [--steps 600] [--repeats 5]
        [--run-iterations 50000] [--run-threads 1,2] [--run-repeats 1] [--flush-everywhere]

`lth` flushes denormal floats to zero while it trains and evaluates (`loop.denormals_flushed`;
on Intel CPUs a run is ~1.4x faster for it, results unchanged); the plain loop keeps them, as
plain PyTorch does. `--flush-everywhere` flushes them for the whole process, to show what the
flush alone would give the reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from benchmarks_common import data_root, lenet, lenet_flops_per_step, load_average, load_splits
from torch.utils.data import DataLoader, TensorDataset

from lottery_ticket import cli, loop, trainer
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.masking import full_masks

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


class LoaderBatches:
    """The textbook way: a shuffling DataLoader over a TensorDataset, restarted at each epoch."""

    def __init__(self, splits):
        dataset = TensorDataset(splits.train_x, splits.train_y)
        self.loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True,
                                 generator=torch.Generator().manual_seed(0))
        self.batches = iter(self.loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)


class ReferenceLoop:
    """(a): the plain loop. `run(n)` trains n steps; `evaluate` is the plain evaluation."""

    def __init__(self, splits, masks, loader: bool = False):
        self.model = Reference()
        self.masks = [(layer.weight, masks[name]) for layer, name in
                      zip((self.model.fc1, self.model.fc2, self.model.fc3), masks, strict=True)]
        with torch.no_grad():
            for w, m in self.masks:
                w.mul_(m)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1.2e-3)
        self.batches = LoaderBatches(splits) if loader else SlicedBatches(splits)
        self.log_every_step = loader
        self.running_loss = 0.0

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
            if self.log_every_step:
                self.running_loss += loss.item()

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
    """(b): the trainer's step function, fed the same sliced batches as the reference, with denormal
    floats flushed as in `loop.train` (they appear after ~1,000 steps; the repeats go on to ~3,000)."""

    def __init__(self, splits, masks):
        self.model = lenet(seed=0)
        hp = preset_hparams("paper")
        self.optimizer = trainer.make_optimizer(self.model, hp.training)
        self.step = trainer.make_step(self.model, self.optimizer, masks, fast=True)
        self.batches = SlicedBatches(splits)

    def run(self, steps: int) -> None:
        with loop.denormals_flushed():
            for _ in range(steps):
                self.step(*self.batches.next())


def rate(fn, steps: int) -> float:
    started = time.perf_counter()
    fn(steps)
    return steps / (time.perf_counter() - started)


def step_throughput(splits, masks, thread_counts: list[int], steps: int, repeats: int) -> None:
    """(a), (b), (d) at each thread count."""
    flops = lenet_flops_per_step(BATCH)
    results = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        contenders = {
            "reference": ReferenceLoop(splits, masks).run,
            "reference with a DataLoader": ReferenceLoop(splits, masks, loader=True).run,
            "ours": OurSteps(splits, masks).run,
        }
        for fn in contenders.values():
            fn(50)  # warm-up
        samples = {name: [] for name in contenders}
        samples["matmul GFLOP/s"] = []
        for _ in range(repeats):  # interleaved, so that load changes hit all alike
            for name, fn in contenders.items():
                samples[name].append(rate(fn, steps))
            samples["matmul GFLOP/s"].append(matmul_rate())
        results[threads] = {name: statistics.median(v) for name, v in samples.items()}

    print("\nstep throughput (median it/s of interleaved repeats; floor = large-matmul rate / FLOPs per step)")
    best_reference = max(r["reference"] for r in results.values())
    for threads, r in results.items():
        floor = r["matmul GFLOP/s"] * 1e9 / flops
        print(f"  {threads} thread(s): large matmul {r['matmul GFLOP/s']:.1f} GFLOP/s -> floor {floor:.0f} it/s")
        for name in ("reference", "reference with a DataLoader", "ours"):
            it_s = r[name]
            print(f"    {name:28s} {it_s:6.0f} it/s  {it_s * flops / 1e9:5.1f} GFLOP/s  "
                  f"x{it_s / r['reference']:.2f} vs reference at {threads} thread(s)  "
                  f"x{it_s / best_reference:.2f} vs the best reference  {it_s / floor:.2f} of this floor")


def end_to_end(splits, n: int, thread_counts: list[int], repeats: int = 1) -> None:
    """(c): `lth train --preset paper` against the reference loop with the same evaluations,
    `repeats` times interleaved (reference at each thread count, then `lth train`); medians."""
    hp = preset_hparams("paper")
    eval_every = hp.training.eval_every
    print(f"\nend to end, {n} iterations, evaluation every {eval_every} on {len(splits.validation_y)} + "
          f"{len(splits.test_y)} examples (+ the training split at the end), median of {repeats} interleaved "
          f"repeat(s); load average {load_average()}")
    masks = full_masks(lenet(seed=0))  # a dense run, as `lth train` without --masks
    root = data_root()
    samples: dict[str, list[float]] = {}

    def reference(threads: int) -> None:
        torch.set_num_threads(threads)
        ReferenceLoop(splits, masks).run_with_evaluations(splits, n, eval_every)

    def lth_train() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["train", "--preset", "paper", "--iterations", str(n), "--output-dir", str(Path(tmp) / "run"),
                    "--quiet", "--no-download"] + (["--data-root", str(root)] if root is not None else [])
            if cli.main(argv) != 0:
                raise SystemExit("lth train failed")

    contenders = {f"reference loop, {t} thread(s)": (lambda t=t: reference(t)) for t in thread_counts}
    contenders["lth train --preset paper (its defaults)"] = lth_train
    for r in range(repeats):
        for name, fn in contenders.items():
            started = time.perf_counter()
            fn()
            samples.setdefault(name, []).append(time.perf_counter() - started)
            print(f"  repeat {r + 1}: {name}: {samples[name][-1]:.1f} s (load average {load_average()})", flush=True)
    seconds = {name: statistics.median(v) for name, v in samples.items()}
    ours = seconds["lth train --preset paper (its defaults)"]
    for name, s in seconds.items():
        projected = f"  ({s * PAPER_ITERATIONS / n:.0f} s per 50,000 iterations, projected)" if n < PAPER_ITERATIONS else ""
        print(f"  {name:44s} {s:7.1f} s{projected}")
    for t in thread_counts:
        print(f"  lth train vs the reference loop at {t} thread(s): x{seconds[f'reference loop, {t} thread(s)'] / ours:.2f}")
    print(f"  (`lth train` trains on 1 thread and evaluates in a second thread, denormal floats flushed to zero "
          f"(`loop.denormals_flushed`); the reference gets its data already in memory, `lth train` loads it, writes "
          f"metrics, TensorBoard and checkpoints; load average {load_average()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts for (a), (b), (d)")
    parser.add_argument("--steps", type=int, default=600, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of (a), (b), (d)")
    parser.add_argument("--run-iterations", type=int, default=PAPER_ITERATIONS,
                        help="iterations of the end-to-end runs (c) (0: skip them)")
    parser.add_argument("--run-threads", default="1,2", help="thread counts of the reference loop in (c)")
    parser.add_argument("--run-repeats", type=int, default=1, help="interleaved repeats of (c)")
    parser.add_argument("--flush-everywhere", action="store_true",
                        help="flush denormal floats to zero in the whole process from the start (the reference "
                             "loops and torch's worker threads too; `lth` flushes them only while it trains and "
                             "evaluates): what the flush alone would give a plain loop")
    args = parser.parse_args()
    if args.flush_everywhere:  # before any torch worker thread exists: threads inherit the mode
        torch.set_flush_denormal(True)
    splits = load_splits()
    masks = level1_masks(lenet(seed=0))
    flops = lenet_flops_per_step(BATCH)
    naive_flops = 3 * 2 * BATCH * (784 * 300 + 300 * 100 + 100 * 10)
    print(f"data: {getattr(splits, 'name', '?')}; LeNet-300-100, batch {BATCH}, masks at level-1 density; "
          f"denormals flushed {'everywhere' if args.flush_everywhere else 'only by lth'}; load average {load_average()}")
    print(f"FLOPs per step: {flops / 1e6:.1f} M (forward + weight gradients + input gradients of layers 2-3; "
          f"{naive_flops / 1e6:.1f} M if the first layer's input gradient were computed too)")
    step_throughput(splits, masks, [int(t) for t in args.threads.split(",")], args.steps, args.repeats)
    if args.run_iterations > 0:
        end_to_end(splits, args.run_iterations, [int(t) for t in args.run_threads.split(",")], args.run_repeats)


if __name__ == "__main__":
    main()
