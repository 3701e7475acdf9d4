"""A safe reader for the CIFAR-10 "python version" batches.

The batches are pickled dicts, and ordinary unpickling runs whatever callables the file names,
so it must never see a file we did not write. This reader uses `pickle.Unpickler` with a
`find_class` that is an allowlist, and the allowlist does not hand out numpy at all: the few
names a pickled numpy array refers to (`_reconstruct`, `ndarray`, `dtype`, `_frombuffer`, and
`_codecs.encode` for bytes in protocol 2) map to small functions in this module that only
*record* their arguments (shape, dtype code, raw bytes). Afterwards the records are checked
(integer dtype from a fixed list, byte count equal to shape x item size) and turned into arrays
with `np.frombuffer`.

Why that is safe: `find_class` is the only route by which a pickle can reach a callable (GLOBAL,
STACK_GLOBAL, INST, OBJ and the EXT opcodes all go through it; persistent IDs are refused by the
base class), and the objects it hands out cannot be modified (see `_Frozen`). So a file can only
build builtin containers and scalars plus these records; `os.system`, `builtins.eval`, numpy
object arrays and the like are refused before anything runs.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lottery_ticket.errors import LotteryError

IMAGE_BYTES = 3 * 32 * 32
NUM_CLASSES = 10
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"

# Only integer dtypes: the pixels are uint8 and some re-packagings store labels as integer arrays.
_ALLOWED_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"}


class _DtypeRecord:
    """Stands in for `numpy.dtype(spec, align, copy)`; remembers the spec and byte order."""

    spec: Any = None
    byteorder: Any = "|"

    def __init__(self, spec=None, align=False, copy=False):
        self.spec = spec

    def __setstate__(self, state):
        # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, align, flags)
        if isinstance(state, tuple) and len(state) >= 2:
            self.byteorder = state[1]


class _ArrayRecord:
    """Stands in for a numpy array being unpickled; remembers shape, dtype, order and raw bytes."""

    shape: Any = None
    dtype: Any = None
    fortran: Any = False
    data: Any = None

    def __setstate__(self, state):
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw data); older: no version
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4:
            raise LotteryError("unexpected numpy array state in pickle")
        self.shape, self.dtype, self.fortran, self.data = state


class _Frozen:
    """What `find_class` hands out: no __dict__ and no setattr, so a pickle's BUILD opcode cannot
    modify these shared objects (and through them, later loads)."""

    __slots__ = ("_function",)

    def __init__(self, function=None):
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name, value):
        raise LotteryError("pickle tries to modify a loader object")

    def __call__(self, *args):
        if self._function is None:
            raise LotteryError("pickle calls numpy.ndarray directly")
        return self._function(*args)


_NDARRAY = _Frozen()  # stands in for the class numpy.ndarray


def _reconstruct(subtype, shape, dtype_code):
    """Stands in for `numpy.core.multiarray._reconstruct` (pickle protocols 0-4)."""
    if subtype is not _NDARRAY:
        raise LotteryError("pickle reconstructs something other than a plain numpy array")
    return _ArrayRecord()


def _frombuffer(buffer, dtype, shape, order):
    """Stands in for `numpy.core.numeric._frombuffer` (numpy's protocol-5 pickles)."""
    record = _ArrayRecord()
    record.shape, record.dtype, record.fortran, record.data = shape, dtype, order == "F", buffer
    return record


def _latin1_encode(text, encoding="latin1"):
    """Stands in for `_codecs.encode`: how Python 3 writes bytes in protocol-2 pickles."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise LotteryError("pickle uses _codecs.encode other than for latin-1 bytes")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _Frozen(_reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Frozen(_reconstruct),
    ("numpy.core.numeric", "_frombuffer"): _Frozen(_frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _Frozen(_frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Frozen(_DtypeRecord),
    ("_codecs", "encode"): _Frozen(_latin1_encode),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise LotteryError(f"refusing to load {module}.{name} from a pickle") from None


def _to_array(record: _ArrayRecord) -> np.ndarray:
    dtype = record.dtype
    if (
        not isinstance(dtype, _DtypeRecord)
        or not isinstance(dtype.spec, str)
        or dtype.spec not in _ALLOWED_DTYPES
    ):
        spec = getattr(dtype, "spec", dtype)
        raise LotteryError(f"array dtype {spec!r} is not an allowed integer dtype")
    if dtype.byteorder not in ("|", "<", ">", "="):
        raise LotteryError(f"array byte order {dtype.byteorder!r} is not valid")
    np_dtype = np.dtype(dtype.spec)
    if dtype.byteorder in ("<", ">"):
        np_dtype = np_dtype.newbyteorder(dtype.byteorder)
    shape = record.shape
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise LotteryError(f"array shape {shape!r} is not valid")
    data = record.data
    if isinstance(data, str):  # Python 2 str read with encoding="latin1"
        data = data.encode("latin1")
    if not isinstance(data, (bytes, bytearray)):
        raise LotteryError("array data is not a byte string")
    if len(data) != math.prod(shape) * np_dtype.itemsize:
        raise LotteryError(
            f"array of shape {shape} needs {math.prod(shape) * np_dtype.itemsize} "
            f"bytes but the pickle holds {len(data)}"
        )
    order = "F" if record.fortran is True else "C"
    return np.frombuffer(bytes(data), dtype=np_dtype).reshape(shape, order=order)


def load_batch_dict(path: str | Path) -> dict[str, Any]:
    """Unpickle one batch file safely; returns its dict with str keys and numpy arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            obj = _RestrictedUnpickler(handle, encoding="latin1").load()
        if not isinstance(obj, dict):
            raise LotteryError(f"expected a dict, found {type(obj).__name__}")
        result = {}
        for key, value in obj.items():
            if isinstance(key, bytes):
                key = key.decode("latin1")
            if isinstance(value, _ArrayRecord):
                value = _to_array(value)
            result[key] = value
        return result
    except FileNotFoundError:
        raise LotteryError(f"{path}: file not found") from None
    except LotteryError as error:
        raise LotteryError(f"{path}: not a valid CIFAR-10 batch: {error}") from None
    except Exception as error:  # any malformed pickle: truncated, bad opcode, bad arguments
        raise LotteryError(
            f"{path}: not a valid CIFAR-10 batch ({type(error).__name__}: {error})"
        ) from None


def read_cifar_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch as (images uint8 [N, 3, 32, 32], labels int64 [N]), structure checked."""
    batch = load_batch_dict(path)
    for key in ("data", "labels"):
        if key not in batch:
            raise LotteryError(f"{path}: not a valid CIFAR-10 batch: no {key!r} entry")
    data, labels = batch["data"], batch["labels"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == IMAGE_BYTES
    ):
        shape = getattr(data, "shape", None)
        raise LotteryError(
            f"{path}: 'data' must be a uint8 array of shape (N, {IMAGE_BYTES}), found {shape}"
        )
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise LotteryError(f"{path}: 'labels' must be one-dimensional")
        label_tensor = torch.from_numpy(labels.astype(np.int64))
    elif isinstance(labels, list) and all(type(label) is int for label in labels):
        label_tensor = torch.tensor(labels, dtype=torch.int64)
    else:
        raise LotteryError(f"{path}: 'labels' must be a list of integers")
    if len(label_tensor) != len(data):
        raise LotteryError(f"{path}: {len(data)} images but {len(label_tensor)} labels")
    if len(label_tensor) and (label_tensor.min() < 0 or label_tensor.max() >= NUM_CLASSES):
        raise LotteryError(f"{path}: labels outside 0..{NUM_CLASSES - 1}")
    images = torch.from_numpy(data.copy()).reshape(-1, 3, 32, 32)  # R, G, B planes, row-major
    return images, label_tensor


def read_cifar10(
    directory: str | Path,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole dataset from `cifar-10-batches-py/`: (train_x, train_y, test_x, test_y).

    Checks content rather than bytes (copies that re-pickle the batches are fine): 10,000 images
    per batch, 5,000 per class in train and 1,000 per class in test.
    """
    directory = Path(directory)
    parts = [read_cifar_batch(directory / name) for name in TRAIN_BATCHES]
    test_x, test_y = read_cifar_batch(directory / TEST_BATCH)
    for name, (x, _) in zip(TRAIN_BATCHES + (TEST_BATCH,), parts + [(test_x, test_y)], strict=True):
        if len(x) != 10000:
            raise LotteryError(f"{directory / name}: expected 10000 images, found {len(x)}")
    train_x = torch.cat([x for x, _ in parts])
    train_y = torch.cat([y for _, y in parts])
    for split, labels, per_class in (("train", train_y, 5000), ("test", test_y, 1000)):
        counts = torch.bincount(labels, minlength=NUM_CLASSES).tolist()
        if counts != [per_class] * NUM_CLASSES:
            raise LotteryError(
                f"{directory}: CIFAR-10 {split} set should have {per_class} images per class, "
                f"found {counts}"
            )
    return train_x, train_y, test_x, test_y
