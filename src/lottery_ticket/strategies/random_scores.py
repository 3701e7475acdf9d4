"""Random pruning as a score-based strategy: every weight gets a uniform random score and the
highest are kept globally (Frankle et al., ICLR 2021, Section 3 "Random": each layer ends at about
the same density). Scores are drawn per tensor from (seed, tensor name), so the masks do not
depend on dict order; `invert` gives another random mask of the same count."""

from __future__ import annotations

import torch

from lottery_ticket.masking import Masks
from lottery_ticket.seeds import derive_seed, tensor_seed
from lottery_ticket.strategies import PruningContext, register_strategy


def random_scores(masks: Masks, seed: int) -> dict[str, torch.Tensor]:
    scores = {}
    for name, mask in masks.items():
        generator = torch.Generator().manual_seed(tensor_seed(derive_seed("random_scores", seed), name))
        scores[name] = torch.rand(mask.shape, generator=generator, dtype=torch.float64)
    return scores


@register_strategy("random")
def random(ctx: PruningContext) -> Masks:
    """Keep the weights with the highest random scores, across all prunable tensors."""
    return ctx.keep_highest(random_scores(ctx.masks, ctx.seed))
