"""Shared helpers for the benchmark scripts: data (real MNIST if present) and the LeNet model."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path | None:
    """$LTH_DATA, else the shared copy next to the checkout, else None (random data)."""
    for candidate in (os.environ.get("LTH_DATA"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    return None


# (input shape, training / validation / test examples) of the random stand-ins for each dataset
SHAPES = {"mnist": ((1, 28, 28), (55_000, 5_000, 10_000)), "cifar10": ((3, 32, 32), (45_000, 5_000, 10_000))}


def load_splits(dataset: str = "mnist"):
    """The real dataset (MNIST: 55,000 / 5,000 / 10,000) if available, else random data of the same
    shapes (`name` "random")."""
    root = data_root()
    if root is not None and (root / dataset).is_dir():
        from lottery_ticket.data import load_dataset

        return load_dataset(dataset, root, download=False, quiet=True)
    print(f"real {dataset} not found (set LTH_DATA): using random data of its shapes", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    shape, counts = SHAPES[dataset]

    def make(n):
        return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)

    (tx, ty), (vx, vy), (sx, sy) = (make(n) for n in counts)
    return SimpleNamespace(train_x=tx, train_y=ty, validation_x=vx, validation_y=vy, test_x=sx, test_y=sy,
                           num_classes=10, input_shape=shape, name="random")


def lenet(seed: int = 0) -> torch.nn.Module:
    from lottery_ticket.models import build_model

    return build_model("lenet_300_100", seed=seed)


def lenet_flops_per_step(batch: int, widths=(784, 300, 100, 10)) -> int:
    """Multiply-adds x 2 of one training step: forward (x W^T), weight gradients (g^T h) and input
    gradients (g W) for every layer but the first (the data needs no gradient)."""
    pairs = list(zip(widths[:-1], widths[1:], strict=False))
    forward = sum(2 * batch * a * b for a, b in pairs)
    weight_grads = forward
    input_grads = sum(2 * batch * a * b for a, b in pairs[1:])
    return forward + weight_grads + input_grads


def load_average() -> str:
    """Other jobs on the machine change every number here: print the load with the results."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
