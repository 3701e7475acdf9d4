"""Reader for the gzip-compressed IDX files of MNIST and Fashion-MNIST.

IDX layout (big-endian): two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions, one uint32 per dimension, then the data in row-major order. The header is checked
here so that a wrong, truncated or corrupted file fails with one line naming it, instead of a
reshape error somewhere later.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from lottery_ticket.errors import LotteryError

UNSIGNED_BYTE = 0x08


def parse_idx(data: bytes, source: str = "<bytes>") -> torch.Tensor:
    """Decode uncompressed IDX bytes into a uint8 tensor shaped as the header says."""
    if len(data) < 4:
        raise LotteryError(f"{source}: not an IDX file (only {len(data)} bytes)")
    zero0, zero1, type_code, ndim = data[:4]
    if zero0 != 0 or zero1 != 0 or ndim == 0:
        raise LotteryError(f"{source}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    if type_code != UNSIGNED_BYTE:
        raise LotteryError(
            f"{source}: IDX type code 0x{type_code:02x} is not supported (expected 0x08, unsigned byte)"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise LotteryError(f"{source}: IDX header is truncated ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + math.prod(dims)
    if len(data) != expected:
        raise LotteryError(
            f"{source}: IDX header says shape {tuple(dims)} ({expected} bytes) "
            f"but the file holds {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)
    return torch.from_numpy(array.copy())  # copy: frombuffer over bytes is read-only


def read_idx_gz(path: str | Path, content_sha256: str | None = None) -> torch.Tensor:
    """Decompress and parse one .gz IDX file.

    `content_sha256` pins the *decompressed* bytes, so a copy whose gzip header was rewritten
    (Debian's packages strip the file name and timestamp) is still recognized as the original.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise LotteryError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as error:
        raise LotteryError(
            f"{path}: cannot decompress ({error}); the file is truncated or corrupted, delete it and retry"
        ) from None
    if content_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != content_sha256:
            raise LotteryError(
                f"{path}: contents do not match the published dataset (sha256 of the decompressed "
                f"data is {actual}, expected {content_sha256}); delete the file so a fresh copy is "
                "downloaded"
            )
    return parse_idx(data, str(path))
