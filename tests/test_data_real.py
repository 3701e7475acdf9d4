"""Loaders against the real datasets, checked with the facts in shared/data/README.md.

The data root is $LTH_DATA (CI: ../shared/data); when unset, /work/shared/data if it exists;
otherwise these tests are skipped. A root named by $LTH_DATA must hold the data (a wrong path
fails rather than silently skipping); Fashion-MNIST, which is not in shared/data, is skipped
when neither <root>/fashion_mnist nor the Debian package's directory has it. Nothing is
downloaded (download=False).
"""

import os
from pathlib import Path

import pytest
import torch

from lottery_ticket.data import channel_stats, datasets, load_dataset, read_cifar10, read_idx_gz

pytestmark = pytest.mark.slow

FALLBACK_ROOT = Path("/work/shared/data")


def data_root() -> Path:
    env = os.environ.get("LTH_DATA")
    if env:
        return Path(env)
    if FALLBACK_ROOT.is_dir():
        return FALLBACK_ROOT
    pytest.skip(f"real data not available: LTH_DATA is unset and {FALLBACK_ROOT} does not exist")


def check_default_load(s, raw_train, num_train, mean, std):
    """load_dataset's defaults: 5,000 validation images drawn with split_seed 0, standard
    normalization with the full training set's per-channel statistics."""
    shape = tuple(raw_train.shape[1:])
    assert s.train_x.shape == (num_train - 5000, *shape)
    assert s.validation_x.shape == (5000, *shape)
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(0))
    validation_index = order[:5000].sort().values
    train_index = order[5000:].sort().values
    view = (1, -1, 1, 1)
    mean = torch.tensor(mean, dtype=torch.float64).view(view)
    std = torch.tensor(std, dtype=torch.float64).view(view)

    def expected(images):
        return ((images.double() / 255 - mean) / std).float()

    assert torch.allclose(s.validation_x, expected(raw_train[validation_index]), atol=1e-5)
    assert torch.allclose(s.train_x[:500], expected(raw_train[train_index[:500]]), atol=1e-5)
    assert torch.allclose(s.train_x[-500:], expected(raw_train[train_index[-500:]]), atol=1e-5)


def test_mnist_facts():
    root = data_root()
    directory = root / "mnist"
    train_x = read_idx_gz(directory / "train-images-idx3-ubyte.gz")
    test_x = read_idx_gz(directory / "t10k-images-idx3-ubyte.gz")
    train_y = read_idx_gz(directory / "train-labels-idx1-ubyte.gz")
    test_y = read_idx_gz(directory / "t10k-labels-idx1-ubyte.gz")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    mean, std = channel_stats(train_x.unsqueeze(1))
    assert mean.item() == pytest.approx(0.1306604762738429, abs=1e-12)
    assert std.item() == pytest.approx(0.30810780385646264, abs=1e-12)

    s = load_dataset("mnist", root, download=False)
    assert (s.name, s.num_classes, s.input_shape) == ("mnist", 10, (1, 28, 28))
    assert s.test_x.shape == (10000, 1, 28, 28) and s.test_y[:10].tolist() == test_y[:10].tolist()
    check_default_load(s, train_x.unsqueeze(1), 60000, [0.1306604762738429], [0.30810780385646264])


def test_fashion_mnist_facts():
    root = data_root()
    places = [root / "fashion_mnist", datasets.FASHION_MNIST_SYSTEM_DIR]
    if not any((p / "train-images-idx3-ubyte.gz").is_file() for p in places):
        pytest.skip(
            "Fashion-MNIST not found in "
            + " or ".join(map(str, places))
            + " (apt-get install dataset-fashion-mnist)"
        )
    s = load_dataset("fashion_mnist", root, validation_size=0, normalization="none", download=False)
    assert s.train_x.shape == (60000, 1, 28, 28) and s.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(s.train_y).tolist() == [6000] * 10
    assert torch.bincount(s.test_y).tolist() == [1000] * 10
    assert s.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert s.test_y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    mean = s.train_x.mean(dtype=torch.float64).item()
    assert mean == pytest.approx(0.2860, abs=1e-4)


def test_cifar10_facts():
    root = data_root()
    train_x, train_y, test_x, test_y = read_cifar10(root / "cifar10" / "cifar-10-batches-py")
    assert train_x.shape == (50000, 3, 32, 32) and test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(train_y).tolist() == [5000] * 10
    assert torch.bincount(test_y).tolist() == [1000] * 10
    assert train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    mean, std = channel_stats(train_x)
    expected_mean = [0.49139968, 0.48215841, 0.44653091]
    expected_std = [0.24703223, 0.24348513, 0.26158784]
    assert mean.tolist() == pytest.approx(expected_mean, abs=1e-8)
    assert std.tolist() == pytest.approx(expected_std, abs=1e-8)

    s = load_dataset("cifar10", root, download=False)
    assert (s.name, s.num_classes, s.input_shape) == ("cifar10", 10, (3, 32, 32))
    assert torch.equal(s.test_y, test_y)
    check_default_load(s, train_x, 50000, expected_mean, expected_std)
