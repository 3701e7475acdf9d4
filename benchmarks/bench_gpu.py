"""Training throughput on a GPU (issue 16, item 4): one run against K runs batched, in ONE process.

For each model at its preset's batch size (LeNet-300-100: `paper`, 60; Conv-2: `conv2`, 60;
VGG-19: `vgg19`, 64; ResNet-18: `resnet18`, 128; the last two with their presets' augmentation,
random crops and flips, done on the device):

(a) one run: `trainer.SingleEngine`, the engine `lth train --device D` trains with (the
    hand-written step for LeNet, autograd for the conv nets, the fused optimizer through
    `fast_optim`), in steps per second, evaluation left out;
(b) K runs batched: `batched.engine_class`'s engine, what `--batched` trains K trials or control
    runs with (LeNet: one stacked `bmm` step; conv nets: `torch.func` vmap over the stacked
    parameters, K convolutions as one grouped convolution), in network-steps per second, and
    its ratio to (a). The issue's targets: LeNet K=32 >= 10x one run, conv nets K=8 >= 3x;
(c) for the augmented presets, one run with augmentation turned off: if (a) is much slower
    than (c), the run is bound by its input pipeline, not by the network;
(d) end to end, with real data only: `lth train --preset paper --device D` (evaluation every
    100 iterations, files written), `--run-iterations` iterations, if MNIST is found.

Data: the real dataset if found under $LTH_DATA, else random data of its shapes (a GPU kernel's
speed does not depend on the values: CUDA keeps denormal floats at full speed). Every timed
block synchronizes the device before and after; repeats are interleaved and the median counts.
Run on a GPU machine:

    python benchmarks/bench_gpu.py --device cuda [--models lenet,conv2,vgg19,resnet18]
        [--k 8,32] [--conv-k 8] [--steps 200] [--repeats 3] [--run-iterations 50000]

It runs on the CPU too (`--device cpu --steps 2 --k 2 --conv-k 2`, as tests/test_bench_gpu.py
does), where the ratios say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
from benchmarks_common import data_root, load_average, load_splits

from lottery_ticket import cli
from lottery_ticket.batched import engine_class
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.models import build_model
from lottery_ticket.trainer import SingleEngine

MODELS = {"lenet": "paper", "conv2": "conv2", "vgg19": "vgg19", "resnet18": "resnet18"}  # model -> preset


def training_data(dataset: str, train_examples: int | None) -> SimpleNamespace:
    """The training split (real if found, else random), its first `train_examples` rows if given."""
    splits = load_splits(dataset)
    x, y = splits.train_x[:train_examples], splits.train_y[:train_examples]
    return SimpleNamespace(train_x=x, train_y=y, input_shape=tuple(x.shape[1:]),
                           source="random" if splits.name == "random" else "real")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(engine, steps: int, device: torch.device, start: int) -> float:
    """Steps per second of `engine` over `steps` steps from iteration `start` (each step is all K networks)."""
    synchronize(device)
    started = time.perf_counter()
    for iteration in range(start, start + steps):
        engine.step(iteration)
    synchronize(device)
    return steps / (time.perf_counter() - started)


def bench_model(name: str, ks: list[int], steps: int, repeats: int, device: torch.device,
                train_examples: int | None) -> None:
    hp = preset_hparams(MODELS[name])
    splits = training_data(hp.dataset.dataset, train_examples)

    def models(count: int) -> list[torch.nn.Module]:
        return [build_model(hp.model.model, seed=s, input_shape=splits.input_shape) for s in range(count)]

    engines = {"one run": SingleEngine(models(1)[0], splits, hp, 0, None, device)}
    if hp.dataset.augment:
        plain = replace(hp, dataset=replace(hp.dataset, augment=False))
        engines["one run, augmentation off"] = SingleEngine(models(1)[0], splits, plain, 0, None, device)
    for k in ks:
        engines[f"K={k} batched"] = engine_class(models(1)[0])(models(k), splits, hp, list(range(k)), [None] * k, device)
    for engine in engines.values():  # warm-up: kernels chosen, optimizer state created
        steps_per_second(engine, 3, device, 0)
    samples: dict[str, list[float]] = {key: [] for key in engines}
    for r in range(repeats):  # interleaved, so that anything else on the machine hits all alike
        for key, engine in engines.items():
            samples[key].append(steps_per_second(engine, steps, device, 3 + r * steps))
    rate = {key: statistics.median(v) for key, v in samples.items()}
    one = rate["one run"]
    print(f"  {name} (preset {MODELS[name]}, batch {hp.dataset.batch_size}, {splits.source} data, "
          f"augmentation {'on the device' if hp.dataset.augment else 'none'}):", flush=True)
    for key, value in rate.items():
        throughput = value * engines[key].networks
        print(f"    {key:28s} {value:9.1f} steps/s  {throughput:9.1f} network-steps/s  "
              f"x{throughput / one:.2f} one run's throughput", flush=True)


def end_to_end(device: str, iterations: int) -> None:
    """(d): `lth train --preset paper --device D` on real MNIST, files and evaluations included."""
    root = data_root()
    if root is None:
        print("  (d) skipped: real MNIST not found (set LTH_DATA)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--preset", "paper", "--device", device, "--iterations", str(iterations), "--output-dir",
                str(Path(tmp) / "run"), "--quiet", "--no-download", "--data-root", str(root)]
        started = time.perf_counter()
        if cli.main(argv) != 0:
            raise SystemExit("lth train failed")
        seconds = time.perf_counter() - started
    print(f"  (d) lth train --preset paper --device {device} --iterations {iterations}: {seconds:.1f} s "
          f"({iterations / seconds:.0f} it/s with evaluation every 100 and the run's files)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--k", default="8,32", help="networks per batched computation for LeNet (comma-separated)")
    parser.add_argument("--conv-k", default="8", help="networks per batched computation for the conv nets")
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median counts")
    parser.add_argument("--run-iterations", type=int, default=50_000, help="(d) iterations (0: skip (d))")
    parser.add_argument("--train-examples", type=int, default=None,
                        help="use only this many training examples (a small test run)")
    args = parser.parse_args()
    models = args.models.split(",")  # (all checked before anything runs: device time is scarce)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(map(repr, unknown))}; choose from {', '.join(MODELS)}")
    try:
        ks = {"lenet": [int(k) for k in args.k.split(",") if k], "conv": [int(k) for k in args.conv_k.split(",") if k]}
    except ValueError:
        parser.error(f"--k and --conv-k take comma-separated integers, got {args.k!r} and {args.conv_k!r}")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {args.device} ({name}); load average {load_average()}", flush=True)
    for model in models:
        bench_model(model, ks["lenet" if model == "lenet" else "conv"], args.steps, args.repeats, device,
                    args.train_examples)
    if args.run_iterations:
        end_to_end(args.device, args.run_iterations)


if __name__ == "__main__":
    main()
