"""Reading and writing results files: atomic writes, safetensors networks, JSON.

Every file is written under a temporary name in the same directory, flushed, fsynced and renamed,
so a crash leaves either the old file or the complete new one, never a truncated file.
Nothing here unpickles: tensors go through safetensors, everything else through JSON/CSV.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from lottery_ticket.errors import LotteryError
from lottery_ticket.layout import temp_name_pattern


@contextlib.contextmanager
def _user_io_errors(path: Path, action: str):
    try:
        yield
    except PermissionError:
        raise LotteryError(f"cannot {action} {path}: permission denied") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise LotteryError(f"cannot {action} {path}: no space left on device") from None
        if e.errno in (errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EISDIR, errno.EDQUOT) or (
            e.errno == errno.EEXIST and action == "create directory"  # a file is in the way
        ):
            raise LotteryError(f"cannot {action} {path}: {os.strerror(e.errno)}") from None
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    with _user_io_errors(path.parent, "create directory"):
        path.parent.mkdir(parents=True, exist_ok=True)
    with _user_io_errors(path, "write"):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should be readable like any file
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def remove_temp_files(directory: str | Path, names) -> None:
    """Delete the temporary files `write_bytes_atomic` left in `directory` (not below it) when
    killed mid-write while writing one of `names`: `.<name>.<random>.tmp`, nothing else, so a
    user's own files are never touched. Only for the directory's one writer (see lock.RunLock)."""
    ours = temp_name_pattern(names)
    try:
        entries = list(Path(directory).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for leftover in entries:
        if ours.fullmatch(leftover.name) and leftover.is_file() and not leftover.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LotteryError(f"missing file {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LotteryError(f"corrupted JSON file {path}: {e}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save a network (name -> tensor) as safetensors, atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_bytes_atomic(path, save(cpu))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a network saved by `save_tensors`; a missing or damaged file is a LotteryError."""
    path = Path(path)
    if not path.is_file():
        raise LotteryError(f"missing file {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise LotteryError(f"corrupted or truncated tensor file {path}: {e}") from None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of every parameter and buffer."""
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
