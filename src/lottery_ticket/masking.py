"""Masks and presets for any `torch.nn.Module`.

A mask is a dict `tensor name -> float 0/1 tensor` over the prunable weights. This module is the
one place where masks touch a network:

* `apply_masks` zeroes pruned weights (before training, after loading presets);
* `mask_gradients` zeroes their gradients after every backward pass.

Together they keep a pruned weight exactly 0 through training with any optimizer: its gradient is
0, so Adam's moments, SGD momentum and L2 weight decay (weight 0 times decay) all stay 0, and the
update is 0. Both trainers (autograd and the hand-written fully-connected path) call these.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from lottery_ticket.errors import LotteryError
from lottery_ticket.store import load_tensors

Masks = dict[str, torch.Tensor]

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_names(model: nn.Module) -> list[str]:
    """The default rule: the `weight` of every Linear and Conv layer (not biases, not batch norm)."""
    return [
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
    ]


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """'conv', 'fc' or 'output' for each prunable tensor; the output layer is the last Linear."""
    kinds = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            kinds[f"{module_name}.weight"] = "fc" if isinstance(module, nn.Linear) else "conv"
    linears = [name for name, kind in kinds.items() if kind == "fc"]
    if linears:
        kinds[linears[-1]] = "output"
    return kinds


def full_masks(model: nn.Module) -> Masks:
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.float32) for name in prunable_names(model)}


def check_masks(masks: Masks, model: nn.Module) -> None:
    """Raise a LotteryError unless `masks` name only prunable tensors with matching shapes and 0/1 values."""
    params = dict(model.named_parameters())
    prunable = set(prunable_names(model))
    for name, mask in masks.items():
        if name not in prunable:
            raise LotteryError(
                f"mask for unknown or unprunable tensor {name!r}; prunable tensors: {sorted(prunable)}"
            )
        if tuple(mask.shape) != tuple(params[name].shape):
            raise LotteryError(
                f"mask {name!r} has shape {tuple(mask.shape)}, the weight has {tuple(params[name].shape)}"
            )
        if not torch.all((mask == 0) | (mask == 1)):
            raise LotteryError(f"mask {name!r} is not binary: every value must be exactly 0 or 1")


def prepare_masks(model: nn.Module, masks: Masks | None, device: torch.device) -> Masks:
    """The masks a run trains with: all ones if None, else `masks` checked against the model, as
    float32 on `device`; applied to the model's weights (pruned weights set to 0)."""
    masks = full_masks(model) if masks is None else {k: v.to(torch.float32) for k, v in masks.items()}
    check_masks(masks, model)
    masks = {k: v.to(device) for k, v in masks.items()}
    apply_masks(model, masks)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero every pruned weight in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


@torch.no_grad()
def mask_gradients(named_grads: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Zero the gradient of every pruned weight in place, given (grad, mask) pairs."""
    for grad, mask in named_grads:
        grad.mul_(mask)


@torch.no_grad()
def mask_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, masks: Masks) -> None:
    """Zero the optimizer state (SGD momentum, Adam's moments) of every pruned weight in place:
    state restored from a run with a larger mask (weight rewinding, Renda et al. 2020) would
    otherwise move weights this mask prunes. With it, the invariant above holds again."""
    for param, mask in gradient_mask_pairs(model, masks):
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value.mul_(mask)


def gradient_mask_pairs(model: nn.Module, masks: Masks) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(parameter, mask on the parameter's device) pairs, built once per run. Masks of all ones
    are left out: multiplying by 1 returns every float bitwise, so masking those gradients is
    pure cost (~3% of a LeNet step in a dense run, benchmarks/PROFILE.md)."""
    params = dict(model.named_parameters())
    return [(params[name], mask.to(params[name].device, params[name].dtype)) for name, mask in masks.items()
            if not bool(mask.all())]


@torch.no_grad()
def apply_presets(model: nn.Module, presets: dict[str, torch.Tensor]) -> None:
    """Set parameters and buffers to preset values; every preset must name a tensor of the model."""
    state = model.state_dict()
    for name, value in presets.items():
        if name not in state:
            raise LotteryError(f"preset for unknown tensor {name!r}")
        if tuple(value.shape) != tuple(state[name].shape):
            raise LotteryError(
                f"preset {name!r} has shape {tuple(value.shape)}, the model has {tuple(state[name].shape)}"
            )
        state[name].copy_(value)


# --------------------------------------------------------------------------- mask algebra


def union(*masks: Masks) -> Masks:
    """A weight is kept if any mask keeps it."""
    return _combine(masks, torch.maximum)


def intersection(*masks: Masks) -> Masks:
    """A weight is kept only if every mask keeps it."""
    return _combine(masks, torch.minimum)


def _combine(masks: tuple[Masks, ...], op) -> Masks:
    if not masks:
        raise ValueError("need at least one mask")
    names = set(masks[0])
    for m in masks[1:]:
        if set(m) != names:
            raise LotteryError(f"masks name different tensors: {sorted(names ^ set(m))}")
    out = {}
    for name in masks[0]:
        value = masks[0][name]
        for m in masks[1:]:
            if m[name].shape != value.shape:
                raise LotteryError(f"masks for {name!r} have different shapes")
            value = op(value, m[name])
        out[name] = value.clone()
    return out


def load_masks(spec: Masks | str | Path | list) -> Masks:
    """A mask dict from a dict, a safetensors path, or a list of those (combined by union)."""
    if isinstance(spec, dict):
        return {k: v.to(torch.float32) for k, v in spec.items()}
    if isinstance(spec, (str, Path)):
        return {k: v.to(torch.float32) for k, v in load_tensors(spec).items()}
    if isinstance(spec, (list, tuple)):
        return union(*[load_masks(s) for s in spec])
    raise TypeError(f"cannot load masks from {type(spec).__name__}")


def density(masks: Masks) -> float:
    """Fraction of prunable weights that remain."""
    kept = sum(int(m.sum().item()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / total if total else 1.0
