"""Sanity check "layerwise random shuffling" (Frankle et al., ICLR 2021, Section 5): the ticket's
mask permuted at random within each layer, on the ticket's starting weights.

Each layer keeps its exact number of unpruned weights (so its density), at new positions. The
permutation is drawn per tensor from (the run's seed, tensor name) and redrawn while it leaves the
mask unchanged, so the check always tests a different mask (a layer that is all kept or all pruned
has no other arrangement and stays as it is). In distribution this is `random_pruning` (random
positions at the ticket's per-layer counts); `shuffle` is the check's own name, and guarantees
that no layer's mask survives by chance.
"""

from __future__ import annotations

import torch

from lottery_ticket.branches import register_branch
from lottery_ticket.branches.controls import ControlBranch
from lottery_ticket.masking import Masks
from lottery_ticket.seeds import tensor_seed


def shuffle_layerwise(masks: Masks, seed: int) -> Masks:
    """Each mask's values permuted at random (a different arrangement wherever one exists)."""
    out = {}
    for name in sorted(masks):
        mask = masks[name].detach().cpu().to(torch.float32)
        flat = mask.flatten()
        generator = torch.Generator().manual_seed(tensor_seed(seed, name))
        shuffled = flat[torch.randperm(flat.numel(), generator=generator)]
        if 0 < flat.sum() < flat.numel():
            while torch.equal(shuffled, flat):
                shuffled = flat[torch.randperm(flat.numel(), generator=generator)]
        out[name] = shuffled.view_as(mask).clone()
    return out


@register_branch("shuffle")
class Shuffle(ControlBranch):
    control = False  # a sanity check run by `lth branch`, not one of `lth reinit --control`
    description = ("sanity check: the ticket's mask shuffled at random within each layer (same per-layer "
                   "density), original starting weights (Frankle et al. 2021, Section 5)")

    def init(self, original, fresh, masks, seed):
        return dict(original), shuffle_layerwise(masks, seed)
