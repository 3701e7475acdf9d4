"""SNIP: single-shot network pruning by connection sensitivity (Lee et al., ICLR 2019).

The saliency of weight j is |dL/dc_j| for a multiplicative mask c at c = 1 (Section 4.1, Eq. 3
and 6), which equals |w_j * dL/dw_j|: the gradient of the cross-entropy loss on the scored
examples (`PruningContext.score_examples`: one batch of --score-batch examples as the paper's
Section 5, or --score-per-class examples of each class as Frankle et al. ICLR 2021
do; training data only, drawn from the run's seed), taken at the masked network. Eq. 6's
normalization by the sum does not change the ranking and is left out. The highest saliencies are
kept across all prunable tensors (global top-k, Eq. 6 "top-kappa"); biases and batch norm are
never scored. The loss is the mean over the examples (one forward pass: the reference computes
it on one minibatch the same way).

The network is scored in train mode, as in the reference code (`snip.py` builds the graph of the
training network), with torch's random state seeded from the run's seed and restored afterwards,
so dropout, if any, is deterministic; batch-norm statistics change only in a copy.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lottery_ticket.masking import Masks, apply_masks
from lottery_ticket.seeds import derive_seed
from lottery_ticket.strategies import PruningContext, register_strategy


def snip_scores(model: torch.nn.Module, masks: Masks, x: torch.Tensor, y: torch.Tensor,
                seed: int = 0) -> dict[str, torch.Tensor]:
    """|w * dL/dw| of every masked tensor at the masked network (the network is not changed)."""
    model = copy.deepcopy(model).train()
    apply_masks(model, masks)
    params = dict(model.named_parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("snip", seed))
        loss = F.cross_entropy(model(x), y)
    names = sorted(masks)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return {n: (g * params[n]).detach().abs() for n, g in zip(names, grads, strict=True)}


@register_strategy("snip")
def snip(ctx: PruningContext) -> Masks:
    """Keep the highest |w * dL/dw| (SNIP) of the network in `ctx`, globally."""
    x, y = ctx.score_examples()
    return ctx.keep_highest(snip_scores(ctx.model, ctx.masks, x, y, ctx.seed))
