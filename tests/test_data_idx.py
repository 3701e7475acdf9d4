"""IDX parsing on small synthetic files."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

from lottery_ticket.data import parse_idx, read_idx_gz
from lottery_ticket.errors import LotteryError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_gz(path, payload: bytes):
    path.write_bytes(gzip.compress(payload))
    return path


def test_parse_images_and_labels():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parsed = parse_idx(idx_bytes(images))
    assert parsed.dtype == torch.uint8
    assert parsed.shape == (2, 3, 4)
    assert torch.equal(parsed, torch.from_numpy(images))
    labels = parse_idx(idx_bytes(np.array([5, 0, 4], dtype=np.uint8)))
    assert labels.tolist() == [5, 0, 4]


def test_parse_result_is_writable_copy():
    parsed = parse_idx(idx_bytes(np.zeros((2, 2), dtype=np.uint8)))
    parsed += 1  # would fail (or warn) on a read-only buffer
    assert parsed.sum() == 4


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x00\x00", "only 2 bytes"),
        (b"\x08\x03\x00\x00" + b"\x00" * 12, "bad magic number"),
        (bytes([0, 1, 8, 1]) + struct.pack(">I", 0), "bad magic number"),
        (bytes([0, 0, 8, 0]), "bad magic number"),
        (bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\x00" * 4, "type code 0x0d"),
        (bytes([0, 0, 8, 3]) + struct.pack(">I", 2), "header is truncated"),
        (bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x01\x02", "holds 10 bytes"),
        (bytes([0, 0, 8, 1]) + struct.pack(">I", 1) + b"\x01\x02", "holds 10 bytes"),
    ],
)
def test_parse_rejects_bad_headers(data, message):
    with pytest.raises(LotteryError, match=message) as info:
        parse_idx(data, "some-file")
    assert str(info.value).startswith("some-file: ")
    assert "\n" not in str(info.value)


def test_read_gz_roundtrip_and_content_hash(tmp_path):
    payload = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 2, 2))
    path = write_gz(tmp_path / "x-idx3-ubyte.gz", payload)
    digest = hashlib.sha256(payload).hexdigest()
    assert read_idx_gz(path, content_sha256=digest).shape == (3, 2, 2)
    with pytest.raises(LotteryError, match="delete the file") as info:
        read_idx_gz(path, content_sha256="0" * 64)
    assert str(path) in str(info.value)


def test_read_gz_accepts_a_rewritten_gzip_header(tmp_path):
    """The content hash pins the decompressed bytes, not the gzip container."""
    payload = idx_bytes(np.arange(8, dtype=np.uint8))
    a = tmp_path / "a.gz"
    b = tmp_path / "b.gz"
    a.write_bytes(gzip.compress(payload, mtime=0))
    b.write_bytes(gzip.compress(payload, mtime=123456, compresslevel=1))
    assert a.read_bytes() != b.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    assert torch.equal(read_idx_gz(a, digest), read_idx_gz(b, digest))


def test_truncated_gzip_names_the_file(tmp_path):
    payload = idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 10, 10))
    full = gzip.compress(payload)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(LotteryError, match="truncated or corrupted") as info:
        read_idx_gz(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_not_gzip_and_missing_file(tmp_path):
    path = tmp_path / "plain.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(LotteryError, match="plain.gz"):
        read_idx_gz(path)
    with pytest.raises(LotteryError, match="file not found"):
        read_idx_gz(tmp_path / "absent.gz")


def test_wrong_magic_inside_gzip_names_the_file(tmp_path):
    path = write_gz(tmp_path / "labels.gz", b"\x00\x00\x09\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(LotteryError, match=r"labels\.gz: IDX type code 0x09"):
        read_idx_gz(path)
    path = write_gz(tmp_path / "short.gz", idx_bytes(np.zeros(4, dtype=np.uint8))[:-1])
    with pytest.raises(LotteryError, match=r"short\.gz: IDX header says shape \(4,\)"):
        read_idx_gz(path)
