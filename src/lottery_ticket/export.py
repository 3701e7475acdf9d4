"""The sparse export (`lth export`): a pruned network in one safetensors file holding only the
weights its masks keep, and its reading back.

Format `lottery_ticket.sparse/1` (a plain safetensors file; any safetensors reader opens it):

* the file's metadata has `format` = `lottery_ticket.sparse/1` and `tensors`, a JSON object
  `{name: {"shape": [...], "dtype": "float32", "encoding": "dense" | "all" | "bitmap" | "indices"}}` naming
  every tensor of the network's state dict, in state-dict order;
* a tensor without a mask (biases, batch-norm statistics, anything not prunable) is stored as it is,
  under its own name (`encoding` "dense");
* a masked tensor `W` is stored as `W:values`, the kept weights (mask 1) in row-major order of
  their positions, in W's dtype, plus its positions: none when the mask keeps every weight
  (encoding "all": e.g. a layer in --never-prune), else whichever is smaller:
  `W:bitmap` (encoding "bitmap"): the flattened mask as packed bits, uint8, ceil(n / 8) bytes,
  bit i in byte i // 8 at bit 7 - i % 8 (most significant first, `numpy.packbits` order); or
  `W:indices` (encoding "indices"): the flat positions of the kept weights, ascending, int32
  (int64 for tensors of 2**31 elements or more), 4 bytes each. The bitmap is chosen when
  ceil(n / 8) <= 4 k (k kept of n), i.e. above 1/32 = 3.1% density.

Reading back (`load_sparse`) gives the state dict and the masks. Every kept weight and every dense
tensor comes back bitwise; every pruned weight comes back as +0.0. (A network stores a pruned
weight as 0 times its value before pruning, which is -0.0 where that value was negative; the
export does not keep the sign of a zero: -0.0 == 0.0, and the network's outputs are bitwise the
same: tested on every registered model.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from lottery_ticket.errors import LotteryError
from lottery_ticket.store import write_bytes_atomic

FORMAT = "lottery_ticket.sparse/1"
VALUES, BITMAP, INDICES = ":values", ":bitmap", ":indices"
_INT32_LIMIT = 2**31


def encoding(numel: int, kept: int) -> str:
    """How to store the positions of `kept` of `numel` weights: "all" (every one kept), else the
    smaller of "bitmap" (ceil(numel / 8) bytes) and "indices" (4 bytes each; ties: bitmap)."""
    if kept == numel:
        return "all"
    return "bitmap" if math.ceil(numel / 8) <= 4 * kept else "indices"


def sparse_tensors(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """The tensors and metadata of the export of `state` (a state dict) pruned by `masks`."""
    unknown = sorted(set(masks) - set(state))
    if unknown:
        raise LotteryError(f"masks name tensors the network does not have: {unknown}")
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict] = {}
    for name, value in state.items():
        value = value.detach().to("cpu").contiguous()
        entry = {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        if name not in masks:
            tensors[name] = value
            entry["encoding"] = "dense"
        else:
            mask = masks[name].detach().to("cpu")
            if tuple(mask.shape) != tuple(value.shape):
                raise LotteryError(f"mask {name!r} has shape {tuple(mask.shape)}, the tensor {tuple(value.shape)}")
            keep = mask.flatten() != 0
            tensors[name + VALUES] = value.flatten()[keep].clone()
            entry["encoding"] = encoding(keep.numel(), int(keep.sum()))
            if entry["encoding"] == "bitmap":
                tensors[name + BITMAP] = torch.from_numpy(np.packbits(keep.numpy()))
            elif entry["encoding"] == "indices":
                dtype = torch.int32 if keep.numel() < _INT32_LIMIT else torch.int64
                tensors[name + INDICES] = keep.nonzero().flatten().to(dtype)
        layout[name] = entry
    return tensors, {"format": FORMAT, "tensors": json.dumps(layout)}


def sparse_bytes(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> bytes:
    """The export file's contents (its size is what `lth report` shows as the export size)."""
    tensors, metadata = sparse_tensors(state, masks)
    return save(tensors, metadata=metadata)


def dense_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The same network as an ordinary safetensors file (as `final.safetensors` stores it)."""
    return save({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def save_sparse(path: str | Path, state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> int:
    """Write the export of `state` pruned by `masks` to `path`, atomically; returns its size."""
    data = sparse_bytes(state, masks)
    write_bytes_atomic(path, data)
    return len(data)


def load_sparse(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state dict, masks) of an export; the masks are float32 0/1 tensors of the masked tensors."""
    path = Path(path)
    if not path.is_file():
        raise LotteryError(f"missing file {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise LotteryError(f"{path} is not a sparse export ({FORMAT}); it has format {metadata.get('format')!r}")
            stored = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118  (safe_open has no iterator)
        layout = json.loads(metadata["tensors"])
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise LotteryError(f"corrupted or truncated sparse export {path}: {e}") from None
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for name, entry in layout.items():
        if entry["encoding"] == "dense":
            state[name] = stored[name]
            continue
        shape, numel = tuple(entry["shape"]), math.prod(entry["shape"])
        if entry["encoding"] == "all":
            keep = torch.ones(numel, dtype=torch.bool)
        elif entry["encoding"] == "bitmap":
            bits = np.unpackbits(stored[name + BITMAP].numpy(), count=numel)
            keep = torch.from_numpy(bits.astype(bool))
        else:
            keep = torch.zeros(numel, dtype=torch.bool)
            keep[stored[name + INDICES].long()] = True
        values = stored[name + VALUES]
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[keep] = values
        state[name] = flat.view(shape)
        masks[name] = keep.to(torch.float32).view(shape)
    return state, masks
