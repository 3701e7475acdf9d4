"""Control experiments: is it the mask alone, or the mask together with the original initialization?

Given a ticket's masks and the original (level-0) initial weights:

* `reinit`: a fresh random initialization (the model's initializer with a new seed);
* `reuse`: each prunable tensor's values sampled (with replacement) from the original initial
  values of that tensor, i.e. from the original initial weight distribution;
* `reuse_sign`: as `reuse`, but each weight keeps the sign of its original initial value;
* `random`: the original initial weights with random masks keeping the same number of weights per
  tensor (random pruning).

Non-prunable tensors (biases, batch norm) keep their original initial values, except in
`reinit`, where everything is fresh.
"""

from __future__ import annotations

import torch

from lottery_ticket.masking import Masks
from lottery_ticket.pruning import random_masks_like

CONTROLS = ("reinit", "reuse", "reuse_sign", "random")


def control_init(
    control: str,
    original: dict[str, torch.Tensor],
    fresh: dict[str, torch.Tensor],
    masks: Masks,
    seed: int,
) -> tuple[dict[str, torch.Tensor], Masks]:
    """(initial state dict, masks) for one control run.

    `original` is the level-0 initial state dict, `fresh` a newly initialized one (same
    architecture, a seed of this control run), `masks` the ticket's masks at this level.
    """
    if control == "reinit":
        return dict(fresh), masks
    if control == "random":
        return dict(original), random_masks_like(masks, seed)
    if control not in ("reuse", "reuse_sign"):
        raise ValueError(f"unknown control {control!r}")
    generator = torch.Generator().manual_seed(seed)
    weights = dict(original)
    for name in sorted(masks):
        values = original[name].flatten()
        picks = torch.randint(0, values.numel(), (values.numel(),), generator=generator)
        sampled = values[picks].view_as(original[name])
        if control == "reuse_sign":
            sign = torch.where(original[name] < 0, -1.0, 1.0).to(sampled.dtype)
            sampled = sampled.abs() * sign
        weights[name] = sampled
    return weights, masks
