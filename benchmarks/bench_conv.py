"""Training-step and evaluation throughput of the conv nets on the CPU, all measured in ONE process.

For each model (Conv-2/4/6, VGG-19, ResNet-18 at their presets' batch sizes and optimizers) and
each thread count, interleaved repeats of:

(a) the plain loop: the model as built (NCHW), autograd, the preset's optimizer from torch.optim
    with `fused=True` and `.step()`, masks multiplied into the gradients before the step and into
    the weights after it;
(b) our step: `trainer.make_step` with `trainer.make_optimizer`'s optimizer (what `lth` trains
    with: autograd in NCHW, the fused kernel called by `fast_optim`, `masking.mask_gradients`);
(c) evaluation: the plain loop's (`model.eval()`, `torch.no_grad()`, chunks of `loop.EVAL_BATCH`
    NCHW rows) against ours (`loop.evaluate`: channels-last, chunks of `fast_conv.EVAL_ROWS`);
(d) the large-matmul rate (2048x2048 sgemm), for the arithmetic floor: the multiply-adds of the
    convolutions and Linear layers (forward, weight gradients, input gradients but the first
    layer's) at that rate. Batch norm, ReLU, pooling and the optimizer are not counted.
(e) with `--real-steps N` (opt-in, minutes): the plain loop and our step trained side by side, dense,
    on real CIFAR-10 batches in the seeded order for N steps each, in interleaved blocks, ours with
    denormal floats flushed to zero as `lth` trains (`loop.denormals_flushed`), the plain loop
    keeping them as plain PyTorch does. After a few hundred steps of Adam, moments of weights
    whose gradient stays zero decay into the denormal range, which Intel CPUs compute slowly;
    random data over a few steps, as in (a)-(b), never gets there. Prints each block's ratio and
    the share of denormal values in the plain loop's optimizer state.

Masks at level-1 density (every prunable tensor 80% kept). Data: random images of CIFAR-10's
shape (the kernels' speed does not depend on the values). The median of the repeats counts, and
the ratios are of medians measured side by side, so that other jobs on the machine hit all
alike; the load average is printed with each model. Run:

    .venv/bin/python benchmarks/bench_conv.py [--models conv2,conv4,conv6,vgg19,resnet18]
        [--threads 1,2] [--steps 4] [--repeats 3] [--eval-examples 1000] [--real-steps 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_train import matmul_rate
from benchmarks_common import load_average, load_splits

from lottery_ticket import loop, trainer
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.masking import full_masks, prepare_masks
from lottery_ticket.models import build_model

SHAPE = (3, 32, 32)
MODELS = ("conv2", "conv4", "conv6", "vgg19", "resnet18")


def level1_masks(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) < 0.8).float() for k, v in full_masks(model).items()}


def multiply_adds(model: nn.Module, batch: int) -> list[int]:
    """Multiply-adds of each Conv2d/Linear layer's forward pass on `batch` examples, in call order."""
    counts: list[int] = []

    def hook(module, inputs, output):
        weight = module.weight
        per_output = weight[0].numel()  # (in channels / groups) x kernel, or in features
        counts.append(output.numel() * per_output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.zeros(batch, *SHAPE))
    model.train()
    for h in handles:
        h.remove()
    return counts


def step_flops(model: nn.Module, batch: int) -> int:
    """FLOPs of one training step: forward, weight gradients, and input gradients of every layer
    but the first (the data needs none)."""
    macs = multiply_adds(model, batch)
    return 2 * (3 * sum(macs) - macs[0])


class Plain:
    """(a) and the plain half of (c)."""

    def __init__(self, name: str, hp, masks):
        self.model = build_model(name, seed=0, input_shape=SHAPE)
        params = dict(self.model.named_parameters())
        self.masks = [(params[k], m) for k, m in masks.items()]
        with torch.no_grad():
            for w, m in self.masks:
                w.mul_(m)
        t = hp.training
        if t.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=t.lr, momentum=t.momentum,
                                             weight_decay=t.weight_decay, fused=True)

    def step(self, x, y) -> None:
        self.optimizer.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        with torch.no_grad():
            for w, m in self.masks:
                w.grad.mul_(m)
        self.optimizer.step()
        with torch.no_grad():
            for w, m in self.masks:
                w.mul_(m)

    @torch.no_grad()
    def evaluate(self, x, y) -> tuple[float, float]:
        self.model.eval()
        loss, correct = 0.0, 0
        for start in range(0, len(y), loop.EVAL_BATCH):
            logits = self.model(x[start:start + loop.EVAL_BATCH])
            loss += F.cross_entropy(logits, y[start:start + loop.EVAL_BATCH], reduction="sum").item()
            correct += int((logits.argmax(1) == y[start:start + loop.EVAL_BATCH]).sum())
        self.model.train()
        return loss / len(y), correct / len(y)


class Ours:
    """(b) and our half of (c)."""

    def __init__(self, name: str, hp, masks):
        self.model = build_model(name, seed=0, input_shape=SHAPE)
        masks = prepare_masks(self.model, masks, torch.device("cpu"))
        self.optimizer = trainer.make_optimizer(self.model, hp.training)
        self._step = trainer.make_step(self.model, self.optimizer, masks)

    def step(self, x, y) -> None:
        with loop.denormals_flushed():  # as `loop.train` runs every step
            self._step(x, y)

    def evaluate(self, x, y) -> tuple[float, float]:
        return loop.evaluate(self.model, x, y)


def timed(fn, count: int) -> float:
    """Seconds per call of `fn()` over `count` calls."""
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - started) / count


def bench_model(name: str, threads: int, steps: int, repeats: int, eval_examples: int) -> None:
    torch.set_num_threads(threads)
    hp = preset_hparams(name)
    batch = hp.dataset.batch_size
    probe = build_model(name, seed=0, input_shape=SHAPE)
    masks = level1_masks(probe)
    train_flops = step_flops(probe, batch)
    eval_flops = 2 * sum(multiply_adds(probe, 1)) * eval_examples
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, *SHAPE, generator=g), torch.randint(0, 10, (batch,), generator=g))
               for _ in range(4)]
    eval_x = torch.randn(eval_examples, *SHAPE, generator=g)
    eval_y = torch.randint(0, 10, (eval_examples,), generator=g)
    contenders = {"plain": Plain(name, hp, masks), "ours": Ours(name, hp, masks)}
    position = [0]

    def stepper(contender):
        def one():
            x, y = batches[position[0] % len(batches)]
            position[0] += 1
            contender.step(x, y)
        return one

    for c in contenders.values():  # warm-up: oneDNN primitives, optimizer state
        stepper(c)()
        stepper(c)()
        c.evaluate(eval_x[:batch], eval_y[:batch])
    samples: dict[str, list[float]] = {k: [] for k in ("plain step", "ours step", "plain eval", "ours eval", "matmul")}
    for _ in range(repeats):  # interleaved, so that load changes hit all alike
        for key, c in contenders.items():
            samples[f"{key} step"].append(timed(stepper(c), steps))
        for key, c in contenders.items():
            samples[f"{key} eval"].append(timed(lambda c=c: c.evaluate(eval_x, eval_y), 1))
        samples["matmul"].append(matmul_rate())
    med = {k: statistics.median(v) for k, v in samples.items()}
    step_floor = train_flops / (med["matmul"] * 1e9)
    eval_floor = eval_flops / (med["matmul"] * 1e9)
    print(f"  {name}, batch {batch}, {threads} thread(s): large matmul {med['matmul']:.1f} GFLOP/s; "
          f"step {train_flops / 1e9:.2f} GFLOP -> floor {1 / step_floor:.2f} steps/s; "
          f"evaluation of {eval_examples} -> floor {eval_examples / eval_floor:.0f} examples/s; "
          f"load average {load_average()}", flush=True)
    for key in ("plain", "ours"):
        s, e = med[f"{key} step"], med[f"{key} eval"]
        print(f"    {key:5s}  step {1 / s:6.2f} steps/s  x{med['plain step'] / s:.2f} vs plain  "
              f"{step_floor / s:.2f} of floor   |  evaluation {eval_examples / e:7.0f} examples/s  "
              f"x{med['plain eval'] / e:.2f} vs plain  {eval_floor / e:.2f} of floor", flush=True)


def denormal_share(optimizer: torch.optim.Optimizer) -> float:
    """The share of nonzero values below float32's smallest normal in the optimizer's state."""
    count = denormal = 0
    for state in optimizer.state.values():
        for value in state.values():
            if value.is_floating_point() and value.dim() > 0:
                size = value.abs()
                count += size.numel()
                denormal += int(((size > 0) & (size < torch.finfo(torch.float32).tiny)).sum())
    return denormal / max(count, 1)


def bench_real_data(name: str, threads: int, steps: int, block: int) -> None:
    """(e): both loops trained on real CIFAR-10 batches, `steps` each, in interleaved blocks."""
    from lottery_ticket.data.order import TrainingOrder

    splits = load_splits("cifar10")
    if splits.name == "random":
        print("  (e) skipped: it needs real CIFAR-10 (set LTH_DATA)")
        return
    torch.set_num_threads(threads)
    hp = preset_hparams(name)
    batch = hp.dataset.batch_size
    order = TrainingOrder(len(splits.train_y), batch, seed=0)
    # Dense networks, as level 0 of a lottery and `lth train` without --masks train: with level-1
    # random masks only ~0.5% of the moments became denormal within 1,500 Conv-2 steps, dense 15%.
    masks: dict[str, torch.Tensor] = {}
    contenders = {"plain": Plain(name, hp, masks), "ours": Ours(name, hp, masks)}
    done = {key: 0 for key in contenders}
    print(f"  {name}, batch {batch}, {threads} thread(s), real CIFAR-10, {steps} steps each in blocks of {block} "
          f"(ms per step; load average {load_average()})", flush=True)
    while done["plain"] < steps:
        seconds = {}
        for key, contender in contenders.items():
            started = time.perf_counter()
            for iteration in range(done[key], done[key] + block):
                index = order.batch(iteration)
                contender.step(splits.train_x[index], splits.train_y[index])
            seconds[key] = (time.perf_counter() - started) / block
            done[key] += block
        print(f"    steps {done['plain'] - block:5d}-{done['plain']:5d}: plain {seconds['plain'] * 1e3:6.1f}  "
              f"ours {seconds['ours'] * 1e3:6.1f}  x{seconds['plain'] / seconds['ours']:.2f} vs plain  "
              f"(denormal share of the plain loop's Adam state {denormal_share(contenders['plain'].optimizer):.3f})",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--eval-examples", type=int, default=1000, help="examples per timed evaluation")
    parser.add_argument("--real-steps", type=int, default=0,
                        help="(e): training steps of each loop on real CIFAR-10 (0: skip; ~1,500 shows the "
                             "denormals of Adam's moments, ~10 min for Conv-2 on one core)")
    parser.add_argument("--real-block", type=int, default=250, help="(e): steps per interleaved block")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}; load average {load_average()}")
    for name in args.models.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            bench_model(name, threads, args.steps, args.repeats, args.eval_examples)
    if args.real_steps:
        for name in args.models.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                bench_real_data(name, threads, args.real_steps, args.real_block)


if __name__ == "__main__":
    main()
