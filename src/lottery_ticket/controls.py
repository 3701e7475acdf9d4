"""Control experiments: is it the mask alone, or the mask together with the original initialization?

Given a ticket's masks and the weights its retraining starts from (the level-0 initial weights, or
with late rewinding the level-0 weights at the rewind iteration):

* `reinit`: a fresh random initialization (the model's initializer with a new seed), Frankle &
  Carbin (ICLR 2019) Section 2 ("randomly reinitialized");
* `reuse`: each prunable tensor's values sampled (with replacement) from that tensor's *surviving*
  starting values -- the ticket's unmasked original weights, not the pruned ones -- so the
  ticket's own weight distribution per layer with the arrangement destroyed. This follows Frankle
  & Carbin's appendix experiments (ICLR 2019, arXiv v5, LeNet appendix) that reinitialize a
  winning ticket by sampling from the winning ticket's own initial weights of each layer;
* `reuse_sign`: as `reuse`, but each weight keeps the sign of its original value (the same
  appendix's sign-preserving variant: the magnitudes are resampled, the signs kept);
* `random`: the starting weights with random masks keeping the same number of weights per
  tensor (random pruning, Frankle & Carbin Section 2 / Figure 4).

Non-prunable tensors (biases, batch norm) keep their original starting values, except in
`reinit`, where everything is fresh.
"""

from __future__ import annotations

import torch

from lottery_ticket.layout import CONTROLS  # noqa: F401  (the one list; re-exported)
from lottery_ticket.masking import Masks
from lottery_ticket.pruning import random_masks_like


def control_init(
    control: str,
    original: dict[str, torch.Tensor],
    fresh: dict[str, torch.Tensor],
    masks: Masks,
    seed: int,
) -> tuple[dict[str, torch.Tensor], Masks]:
    """(initial state dict, masks) for one control run.

    `original` is the state dict the ticket's retraining starts from (level-0 initial weights, or
    the rewound weights under late rewinding), `fresh` a newly initialized one (same
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
        start = original[name]
        survivors = start[masks[name].to(torch.bool)]
        if survivors.numel() == 0:  # a fully pruned tensor: nothing to sample, all masked anyway
            weights[name] = torch.zeros_like(start)
            continue
        picks = torch.randint(0, survivors.numel(), (start.numel(),), generator=generator)
        sampled = survivors[picks].view_as(start)
        if control == "reuse_sign":
            sign = torch.where(start < 0, -1.0, 1.0).to(sampled.dtype)
            sampled = sampled.abs() * sign
        weights[name] = sampled
    return weights, masks
