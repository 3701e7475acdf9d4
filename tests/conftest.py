"""Shared fixtures: small synthetic datasets and the location of the real data."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# One thread per test process: the suite runs under `pytest -n 2` on 2 cores, and oversubscribed
# OpenMP threads make small matrix products 10-100x slower. Subprocesses inherit the variables.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts on one torch thread: the suite's exact comparisons (fast path vs autograd,
    batched vs separate) need both sides to split their sums alike, and small products on a busy
    2-core machine are fastest so. Code under test that changes the count restores it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_masks(model, density: float, seed: int) -> dict[str, torch.Tensor]:
    """Masks keeping about `density` of each prunable tensor at seeded random positions."""
    from lottery_ticket.masking import full_masks

    g = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=g) < density).float() for k, v in full_masks(model).items()}


def real_data_root() -> Path | None:
    """$LTH_DATA (CI sets it to ../shared/data), else the shared copy next to the checkout."""
    candidates = [os.environ.get("LTH_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "mnist").is_dir():
            return Path(c).resolve()
    return None


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The real data's root (module fixtures may use it too); skips when MNIST is not there."""
    root = real_data_root()
    if root is None:
        pytest.skip("real MNIST not found: set LTH_DATA")
    return root


def synthetic_splits(n_train=1200, n_val=300, n_test=300, shape=(1, 28, 28), classes=10, seed=0):
    """A learnable toy problem: the label is the argmax of the first `classes` input values."""
    g = torch.Generator().manual_seed(seed)

    def make(n):
        x = torch.randn(n, *shape, generator=g)
        return x, x.flatten(1)[:, :classes].argmax(1)

    tx, ty = make(n_train)
    vx, vy = make(n_val)
    sx, sy = make(n_test)
    return SimpleNamespace(train_x=tx, train_y=ty, validation_x=vx, validation_y=vy, test_x=sx,
                           test_y=sy, num_classes=classes, input_shape=shape, name="synthetic")


@pytest.fixture
def splits():
    return synthetic_splits()


def lth(*argv) -> int:
    """The `lth` command in this process, arguments given as anything str() can spell."""
    from lottery_ticket.cli import main

    return main([str(a) for a in argv])


def assert_same_run(a: Path, b: Path) -> None:
    """Two complete runs with the same files: tensors exactly, metrics byte for byte, settings."""
    import json

    from lottery_ticket import layout
    from lottery_ticket.store import load_tensors

    assert layout.is_complete(a) and layout.is_complete(b)
    for name in (layout.MASKS, layout.INITIAL, layout.FINAL):
        ta, tb = load_tensors(a / name), load_tensors(b / name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), (a, name)
    assert (a / layout.METRICS).read_bytes() == (b / layout.METRICS).read_bytes(), a
    ja, jb = (json.loads((r / layout.RUN_FILE).read_text()) for r in (a, b))
    assert (ja["hparams"], ja["run"]) == (jb["hparams"], jb["run"])
