"""Splits, normalization, label permutation and the data root, on small synthetic tensors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lottery_ticket.data import (
    Splits,
    channel_stats,
    load_dataset,
    make_splits,
    resolve_data_root,
)
from lottery_ticket.errors import LotteryError

N, N_TEST = 100, 20


def raw(channels=1, size=4, seed=0):
    """Images whose first pixel encodes the example index, so splits can be traced back."""
    generator = torch.Generator().manual_seed(seed)
    train = torch.randint(0, 256, (N, channels, size, size), generator=generator, dtype=torch.uint8)
    train[:, 0, 0, 0] = torch.arange(N, dtype=torch.uint8)
    test = torch.randint(
        0, 256, (N_TEST, channels, size, size), generator=generator, dtype=torch.uint8
    )
    train_labels = torch.arange(N) % 10
    test_labels = torch.arange(N_TEST) % 10
    return train, train_labels, test, test_labels


def splits(**options):
    options.setdefault("validation_size", 30)
    options.setdefault("normalization", "none")
    return make_splits("synthetic", *raw(), num_classes=10, **options)


def ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


def test_shapes_dtypes_and_metadata():
    s = splits()
    assert isinstance(s, Splits)
    assert s.train_x.shape == (70, 1, 4, 4) and s.validation_x.shape == (30, 1, 4, 4)
    assert s.test_x.shape == (N_TEST, 1, 4, 4)
    for x in (s.train_x, s.validation_x, s.test_x):
        assert x.dtype == torch.float32
    for y in (s.train_y, s.validation_y, s.test_y):
        assert y.dtype == torch.int64
    assert (s.name, s.num_classes, s.input_shape) == ("synthetic", 10, (1, 4, 4))


def test_split_is_disjoint_complete_sorted_and_matches_labels():
    s = splits()
    train_ids, validation_ids = ids(s.train_x), ids(s.validation_x)
    assert not set(train_ids) & set(validation_ids)
    assert sorted(train_ids + validation_ids) == list(range(N))
    assert train_ids == sorted(train_ids) and validation_ids == sorted(validation_ids)
    assert s.train_y.tolist() == [i % 10 for i in train_ids]
    assert s.validation_y.tolist() == [i % 10 for i in validation_ids]


def test_split_is_deterministic_and_seeded():
    a, b, c = splits(split_seed=3), splits(split_seed=3), splits(split_seed=4)
    assert ids(a.validation_x) == ids(b.validation_x)
    assert torch.equal(a.train_x, b.train_x)
    assert ids(a.validation_x) != ids(c.validation_x)
    # pinned: guards against an accidental change of how the split is drawn
    expected = torch.randperm(N, generator=torch.Generator().manual_seed(3))[:30].sort().values
    assert ids(a.validation_x) == expected.tolist()


def test_validation_size_bounds():
    assert splits(validation_size=0).validation_x.shape == (0, 1, 4, 4)
    assert splits(validation_size=N - 1).train_x.shape == (1, 1, 4, 4)
    for bad in (-1, N, N + 5, 2.5, True, "10"):
        with pytest.raises(LotteryError, match="validation size"):
            splits(validation_size=bad)
    assert splits(validation_size=np.int64(10)).validation_x.shape == (10, 1, 4, 4)
    # checked before anything is read or downloaded
    with pytest.raises(LotteryError, match="from 0 to 49999"):
        load_dataset("cifar10", "/nonexistent", validation_size=50000, download=False)


def test_normalization_none_is_divide_by_255():
    train, *_ = raw()
    s = splits(validation_size=0)
    assert torch.allclose(s.train_x, train.float() / 255)


def test_standard_uses_full_training_set_statistics():
    train, _, test, _ = raw(channels=3)
    s = make_splits("c", *raw(channels=3), num_classes=10, validation_size=40)
    pixels = train.double().numpy() / 255
    mean = pixels.mean(axis=(0, 2, 3))
    std = pixels.std(axis=(0, 2, 3))
    got_mean, got_std = channel_stats(train)
    np.testing.assert_allclose(got_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(got_std.numpy(), std, rtol=1e-12)
    expected_test = (test.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    assert torch.allclose(s.test_x.double(), expected_test, atol=1e-5)
    # train + validation together are exactly standardized per channel
    both = torch.cat([s.train_x, s.validation_x]).double()
    assert torch.allclose(both.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(
        both.std((0, 2, 3), correction=0), torch.ones(3, dtype=torch.float64), atol=1e-6
    )


def test_l2_normalization_per_example():
    train, *_ = raw(channels=3)
    train[5] = 0  # an all-black image stays zero instead of dividing by zero
    s = make_splits(
        "c", train, *raw(channels=3)[1:], num_classes=10, validation_size=0, normalization="l2"
    )
    norms = s.train_x.flatten(1).norm(dim=1)
    assert torch.allclose(norms[torch.arange(N) != 5], torch.ones(N - 1), atol=1e-6)
    assert norms[5] == 0
    x = train[7].double().flatten()
    assert torch.allclose(s.train_x[7].double().flatten(), x / x.norm(), atol=1e-6)
    assert torch.allclose(s.test_x.flatten(1).norm(dim=1), torch.ones(N_TEST), atol=1e-6)


def test_unknown_normalization():
    with pytest.raises(LotteryError, match="unknown normalization 'zca'"):
        splits(normalization="zca")
    with pytest.raises(LotteryError, match="unknown normalization"):
        load_dataset("mnist", "/nonexistent", normalization="zca", download=False)


def test_random_labels_shuffle_training_labels_across_examples():
    plain = splits(split_seed=1)
    a = splits(split_seed=1, random_labels_seed=7)
    b = splits(split_seed=1, random_labels_seed=7)
    c = splits(split_seed=1, random_labels_seed=8)
    assert torch.equal(a.train_y, b.train_y) and torch.equal(a.validation_y, b.validation_y)
    assert not torch.equal(a.train_y, c.train_y)
    # images and the split are unchanged; only training labels move, as a permutation
    assert torch.equal(a.train_x, plain.train_x) and torch.equal(a.validation_x, plain.validation_x)
    assert not torch.equal(a.train_y, plain.train_y)
    before = torch.cat([plain.train_y, plain.validation_y]).sort().values
    after = torch.cat([a.train_y, a.validation_y]).sort().values
    assert torch.equal(before, after)
    assert torch.equal(a.test_y, plain.test_y) and torch.equal(a.test_x, plain.test_x)
    # the permutation is drawn before the split, so it does not depend on split_seed
    full_labels = torch.arange(N) % 10
    permuted = full_labels[torch.randperm(N, generator=torch.Generator().manual_seed(7))]
    assert a.train_y.tolist() == permuted[ids(a.train_x)].tolist()


def test_permute_classes_relabels_train_validation_and_test_alike():
    """The original library's --permute_labels: one permutation of the class ids for every split."""
    plain = splits(split_seed=1)
    a = splits(split_seed=1, permute_classes_seed=7)
    assert torch.equal(splits(split_seed=1, permute_classes_seed=7).test_y, a.test_y)
    assert not torch.equal(splits(split_seed=1, permute_classes_seed=8).test_y, a.test_y)
    mapping = {}
    for part in ("train", "validation", "test"):
        assert torch.equal(getattr(a, f"{part}_x"), getattr(plain, f"{part}_x"))
        for old, new in zip(getattr(plain, f"{part}_y").tolist(), getattr(a, f"{part}_y").tolist(), strict=True):
            assert mapping.setdefault(old, new) == new
    assert sorted(mapping) == sorted(mapping.values()) == list(range(10))
    assert any(old != new for old, new in mapping.items())


def test_splits_to_device():
    s = splits().to("cpu")
    assert s.train_x.device.type == "cpu" and s.input_shape == (1, 4, 4)


def test_unknown_dataset():
    with pytest.raises(LotteryError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LTH_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_root(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_root(str(tmp_path / "flag")) == tmp_path / "flag"
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root("") == tmp_path / "env"
    monkeypatch.delenv("LTH_DATA")
    assert resolve_data_root() == tmp_path / "xdg" / "lottery_ticket" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec says ignore these
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "lottery_ticket" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve_data_root() == tmp_path / "home" / ".cache" / "lottery_ticket" / "data"
    assert resolve_data_root("~/data") == Path(tmp_path / "home" / "data")
