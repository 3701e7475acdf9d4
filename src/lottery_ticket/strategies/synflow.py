"""SynFlow: iterative synaptic flow pruning, data-free (Tanaka et al., NeurIPS 2020).

Algorithm 1 of the paper and the reference code (ganguli-lab/Synaptic-Flow, `Pruners/pruners.py`
`SynFlow.score` and `prune.py` `prune_loop`):

* the network is linearized: every parameter and buffer replaced by its absolute value;
* R = 1^T (prod_l |W_l|) 1: the sum of the outputs for one all-ones input (no data at all);
* the score of weight w is |w * dR/dw| (Eq. 2's synaptic saliency of R);
* --synflow-iterations rounds (100 in the paper), each scoring the network as masked so far and
  keeping the highest scores globally, on the exponential schedule: after round i of n the
  density is d0 * (d / d0)^(i / n) (`prune_loop`'s `sparsity**((epoch + 1) / epochs)` from a
  full network; from d0 < 1 when a lottery level starts from pruned masks);
* in eval mode and in float64 (the code runs the network in double precision, since products of
  many |W| overflow or underflow float32).

It scores a float64 copy of the network, so the caller's network keeps its original signed weights
(the code linearizes in place and restores the signs afterwards). Ranking among kept weights with
exact counts differs from the code's `score <= threshold` only where scores tie at the threshold
(the code prunes every tied weight; this keeps exactly the scheduled count, ties by position).
"""

from __future__ import annotations

import copy
import math

import torch

from lottery_ticket.hparams import never_prune
from lottery_ticket.masking import Masks, apply_masks
from lottery_ticket.strategies import PruningContext, register_strategy


def linearize(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 eval-mode copy of `model` with every parameter and buffer replaced by its
    absolute value (the caller's network is not changed)."""
    model = copy.deepcopy(model).to(torch.float64).eval()
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.abs_()
    return model


def flow_scores(linear: torch.nn.Module, masks: Masks, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """|w * dR/dw| of every masked tensor of the linearized network `linear`, masked in place by
    `masks` first (masks only ever gain zeros, so masking the same copy again is exact)."""
    apply_masks(linear, masks)
    params = dict(linear.named_parameters())
    names = sorted(masks)
    ones = torch.ones((1, *input_shape), dtype=torch.float64)
    grads = torch.autograd.grad(linear(ones).sum(), [params[n] for n in names])
    return {n: (g * params[n]).detach().abs() for n, g in zip(names, grads, strict=True)}


def synflow_scores(model: torch.nn.Module, masks: Masks, input_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """|w * dR/dw| (float64) of every masked tensor, R the output sum of the linearized masked
    network for an all-ones input of `input_shape` (one example); the network is not changed."""
    return flow_scores(linearize(model), masks, input_shape)


def synflow_schedule(remaining: int, keep: int, rounds: int) -> list[int]:
    """The kept count after each round: remaining * (keep / remaining)^(i / rounds), rounded half
    up, ending at exactly `keep` (the exponential schedule of SynFlow's Algorithm 1)."""
    ratio = keep / remaining
    return [math.floor(remaining * ratio ** (i / rounds) + 0.5) for i in range(1, rounds)] + [keep]


def input_shape(ctx: PruningContext) -> tuple[int, ...]:
    """The network's input shape: from the data if given, else from the dataset registry."""
    if ctx.splits is not None:
        return tuple(ctx.splits.input_shape)
    from lottery_ticket.data.registry import DATASETS

    return tuple(DATASETS.get(ctx.hp.dataset.dataset).input_shape)


@register_strategy("synflow")
def synflow(ctx: PruningContext) -> Masks:
    """Iterative SynFlow to the target density (data-free)."""
    masks = ctx.masks
    shape = input_shape(ctx)
    frozen = set(never_prune(ctx.hp.pruning))
    remaining = int(sum(m.sum().item() for name, m in masks.items() if name not in frozen))
    linear = linearize(ctx.model)
    for keep in synflow_schedule(remaining, ctx.target_count(), ctx.hp.pruning.synflow_iterations):
        masks = ctx.keep_highest(flow_scores(linear, masks, shape), keep, masks)
    return masks
