"""Resumable training state in one safetensors file (tensors) with a JSON header (the rest).

Holds the model's state dict, the optimizer's state, the RNG states and the metrics logged so far.
One file written atomically: a checkpoint is either complete or absent. Loading never unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from lottery_ticket import layout
from lottery_ticket.errors import LotteryError
from lottery_ticket.store import write_bytes_atomic

FILE = layout.CHECKPOINT_FILE


def save_checkpoint(
    directory: str | Path, model, optimizer, iteration: int, extra: dict, buffers: dict | None = None
) -> None:
    """`extra` is JSON-able metadata; `buffers` are tensors of the training loop (name -> tensor)."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"loop/{k}": v for k, v in (buffers or {}).items()})
    opt = optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "state": {}}
    for index, state in opt["state"].items():
        opt_meta["state"][str(index)] = {}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                opt_meta["state"][str(index)][key] = value
    tensors["rng/cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    meta = {"iteration": iteration, "optimizer": opt_meta, "extra": extra}
    cpu = {k: _own_storage(v.detach().to("cpu").contiguous()) for k, v in tensors.items()}
    write_bytes_atomic(Path(directory) / FILE, save(cpu, metadata={"meta": json.dumps(meta)}))


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, or a copy where it is a slice of a larger storage (the per-network parameters of a
    batched run are views of one stack), which safetensors refuses to save."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def load_checkpoint(directory: str | Path, model, optimizer) -> tuple[int, dict, dict]:
    """Restore model, optimizer and RNG states; return (iteration, extra, loop buffers)."""
    path = Path(directory) / FILE
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise LotteryError(f"corrupted checkpoint {path}: {e}; delete it to restart this run") from None
    device = next(model.parameters()).device
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    opt_state = {"param_groups": meta["optimizer"]["param_groups"], "state": {}}
    for index, plain in meta["optimizer"]["state"].items():
        state = dict(plain)
        prefix = f"optimizer/{index}/"
        for k, v in tensors.items():
            if k.startswith(prefix):
                key = k[len(prefix):]
                # Adam keeps `step` on the CPU unless fused/capturable; keep the saved placement rule.
                state[key] = v if key == "step" else v.to(device)
        opt_state["state"][int(index)] = state
    optimizer.load_state_dict(opt_state)
    torch.set_rng_state(tensors["rng/cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    buffers = {k[len("loop/"):]: v.to(device) for k, v in tensors.items() if k.startswith("loop/")}
    return int(meta["iteration"]), meta["extra"], buffers


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / FILE).is_file()
