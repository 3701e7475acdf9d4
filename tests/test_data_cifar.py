"""The safe CIFAR-10 batch reader, on small synthetic batches in the official format."""

import os
import pickle

import numpy as np
import pytest
import torch

from lottery_ticket.data import read_cifar10, read_cifar_batch
from lottery_ticket.data.cifar import load_batch_dict
from lottery_ticket.errors import LotteryError


def batch_dict(n=6, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return {
        "batch_label": "training batch 1 of 5",
        "labels": list(range(n)) if labels is None else labels,
        "data": data,
        "filenames": [f"{i}.png" for i in range(n)],
    }


def write(path, obj, protocol=2):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_official_format(tmp_path, protocol):
    content = batch_dict()
    path = write(tmp_path / "data_batch_1", content, protocol)
    images, labels = read_cifar_batch(path)
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == list(range(6))
    data = content["data"]
    # R, G, B planes, each 32x32 row-major
    assert images[2, 0, 0, 0] == data[2, 0]
    assert images[2, 0, 0, 5] == data[2, 5]
    assert images[2, 0, 1, 0] == data[2, 32]
    assert images[2, 1, 0, 0] == data[2, 1024]
    assert images[2, 2, 31, 31] == data[2, 3071]
    assert torch.equal(images.reshape(6, -1), torch.from_numpy(data))


def test_bytes_keys_and_label_arrays(tmp_path):
    content = batch_dict()
    content = {b"data": content["data"], b"labels": np.arange(6, dtype=np.int64)}
    images, labels = read_cifar_batch(write(tmp_path / "b", content, 4))
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == list(range(6))


def test_fortran_ordered_array(tmp_path):
    content = batch_dict()
    expected = content["data"].copy()
    content["data"] = np.asfortranarray(content["data"])
    images, _ = read_cifar_batch(write(tmp_path / "b", content, 2))
    assert torch.equal(images.reshape(6, -1), torch.from_numpy(expected))


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    content = batch_dict()
    content["labels"] = Exploit(marker)
    path = write(tmp_path / "data_batch_1", content, 2)
    with pytest.raises(LotteryError, match=r"refusing to load (os|posix)\.system") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


class Reducer:
    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


@pytest.mark.parametrize(
    "function, args",
    [
        (eval, ("1+1",)),
        (np.load, ("x",)),
        (os.getcwd, ()),
        (np.array, ([1],)),
        (np.frombuffer, (b"ab",)),
    ],
)
def test_other_globals_are_refused(tmp_path, function, args):
    path = write(tmp_path / "b", {"data": Reducer(function, args)}, 4)
    with pytest.raises(LotteryError, match="refusing to load"):
        load_batch_dict(path)


def test_object_arrays_are_refused(tmp_path):
    content = batch_dict()
    content["data"] = np.array([[1, "x"]], dtype=object)
    with pytest.raises(LotteryError, match="not an allowed integer dtype"):
        load_batch_dict(write(tmp_path / "b", content, 2))


def test_float_arrays_are_refused(tmp_path):
    content = batch_dict()
    content["data"] = content["data"].astype(np.float32)
    with pytest.raises(LotteryError, match="dtype"):
        read_cifar_batch(write(tmp_path / "b", content, 2))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("data"), "no 'data' entry"),
        (lambda d: d.update(data=d["data"][:, :100]), r"shape \(N, 3072\)"),
        (lambda d: d.update(labels=[0, 1, 2]), "6 images but 3 labels"),
        (lambda d: d.update(labels=[0, 1, 2, 3, 4, 10]), "labels outside 0..9"),
        (lambda d: d.update(labels=[0, 1, 2, 3, 4, -1]), "labels outside 0..9"),
        (lambda d: d.update(labels=[0.0, 1, 2, 3, 4, 5]), "list of integers"),
    ],
)
def test_structure_is_checked(tmp_path, change, message):
    content = batch_dict()
    change(content)
    with pytest.raises(LotteryError, match=message):
        read_cifar_batch(write(tmp_path / "b", content))


def test_not_a_dict_truncated_and_garbage(tmp_path):
    with pytest.raises(LotteryError, match="expected a dict"):
        load_batch_dict(write(tmp_path / "list", [1, 2, 3]))
    blob = pickle.dumps(batch_dict(), protocol=2)
    (tmp_path / "cut").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(LotteryError, match="not a valid CIFAR-10 batch"):
        load_batch_dict(tmp_path / "cut")
    (tmp_path / "junk").write_bytes(b"\x00garbage")
    with pytest.raises(LotteryError, match="junk: not a valid CIFAR-10 batch"):
        load_batch_dict(tmp_path / "junk")
    with pytest.raises(LotteryError, match="file not found"):
        load_batch_dict(tmp_path / "absent")


def test_byte_count_must_match_shape(tmp_path):
    """A hand-written array state whose shape promises more bytes than it carries."""
    data = (  # a raw protocol-2 opcode stream (see pickletools.dis)
        b"\x80\x02}q\x00X\x04\x00\x00\x00dataq\x01"
        b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nK\x00\x85C\x01b\x87R"
        b"(K\x01K\x02M\x00\x0c\x86cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R"
        b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89C\x03abctbs."
    )
    (tmp_path / "b").write_bytes(data)
    with pytest.raises(LotteryError, match="needs 6144 bytes but the pickle holds 3"):
        load_batch_dict(tmp_path / "b")


def test_read_cifar10_checks_counts(tmp_path):
    blob = pickle.dumps(batch_dict(n=10000, labels=[i % 10 for i in range(10000)]), protocol=5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / name).write_bytes(blob)
    train_x, train_y, test_x, test_y = read_cifar10(tmp_path)
    assert train_x.shape == (50000, 3, 32, 32) and test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(train_y).tolist() == [5000] * 10
    # unbalanced test labels are caught
    write(tmp_path / "test_batch", batch_dict(n=10000, labels=[0] * 10000), 5)
    with pytest.raises(LotteryError, match="1000 images per class"):
        read_cifar10(tmp_path)
