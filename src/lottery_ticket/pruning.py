"""Magnitude pruning: per layer (the paper's LeNet and Conv rule) or global (VGG, ResNet).

Rounding, exactly: a tensor with `n` remaining weights pruned at fraction `f` loses
`floor(f * n + 0.5)` weights (round half up), the ones of smallest magnitude among those still
kept. Equal magnitudes are broken by position: the weight earlier in the flattened tensor is pruned
first (global pruning: tensors in sorted name order, then position). A pruned weight is never
revived: the new mask is the old mask with more zeros. Results do not depend on dict order.
"""

from __future__ import annotations

import math

import torch

from lottery_ticket.errors import LotteryError
from lottery_ticket.masking import Masks
from lottery_ticket.seeds import tensor_seed


def prune_count(fraction: float, remaining: int) -> int:
    """How many of `remaining` weights a level removes at `fraction` (round half up)."""
    if not 0.0 <= fraction < 1.0:
        raise LotteryError(f"pruning fraction must be in [0, 1), got {fraction}")
    return math.floor(fraction * remaining + 0.5)


def _prune_smallest(weights: torch.Tensor, mask: torch.Tensor, count: int, invert: bool = False) -> torch.Tensor:
    """A copy of `mask` with the `count` smallest-magnitude kept weights set to 0 (with `invert`:
    the largest, the inversion sanity check of Frankle et al. ICLR 2021)."""
    new = mask.detach().to(torch.float32).flatten().clone()
    if count == 0:
        return new.view_as(mask)
    kept = torch.nonzero(new, as_tuple=True)[0]
    magnitudes = weights.detach().flatten().to(torch.float64, copy=False)[kept].abs()
    if invert:
        magnitudes = -magnitudes
    order = torch.sort(magnitudes, stable=True).indices
    new[kept[order[:count]]] = 0.0
    return new.view_as(mask)


def prune_layerwise(masks: Masks, weights: dict[str, torch.Tensor], fractions: dict[str, float],
                    invert: bool = False) -> Masks:
    """Prune each tensor by its own fraction of its remaining weights (`fractions[name]`)."""
    out = {}
    for name, mask in masks.items():
        fraction = fractions.get(name, 0.0)
        remaining = int(mask.sum().item())
        out[name] = _prune_smallest(weights[name].cpu(), mask.cpu(), prune_count(fraction, remaining), invert)
    return out


def prune_global(
    masks: Masks, weights: dict[str, torch.Tensor], fraction: float, never_prune: list[str] = (), invert: bool = False
) -> Masks:
    """Prune `fraction` of all remaining weights with one magnitude threshold across tensors."""
    unknown = set(never_prune) - set(masks)
    if unknown:
        raise LotteryError(f"--never-prune names unknown tensors {sorted(unknown)}; prunable: {sorted(masks)}")
    names = sorted(n for n in masks if n not in set(never_prune))
    out = {name: masks[name].detach().cpu().to(torch.float32).clone() for name in masks}
    if not names:
        return out
    flat_masks = torch.cat([out[n].flatten() for n in names])
    flat_weights = torch.cat([weights[n].detach().cpu().flatten().to(torch.float64) for n in names])
    remaining = int(flat_masks.sum().item())
    pruned = _prune_smallest(flat_weights, flat_masks, prune_count(fraction, remaining), invert)
    offset = 0
    for n in names:
        size = out[n].numel()
        out[n] = pruned[offset : offset + size].view_as(out[n]).clone()
        offset += size
    return out


def layer_fractions(kinds: dict[str, str], fc: float, conv: float, output: float) -> dict[str, float]:
    """Per-tensor fractions from per-kind rates ('fc', 'conv', 'output')."""
    rate = {"fc": fc, "conv": conv, "output": output}
    return {name: rate[kind] for name, kind in kinds.items()}


def random_masks_like(masks: Masks, seed: int) -> Masks:
    """Masks keeping the same number of weights per tensor as `masks`, at random positions.

    Each tensor draws from its own generator, seeded by (seed, tensor name), so the result does not
    depend on the order of the dict.
    """
    out = {}
    for name, mask in masks.items():
        generator = torch.Generator().manual_seed(tensor_seed(seed, name))
        kept = int(mask.sum().item())
        new = torch.zeros(mask.numel(), dtype=torch.float32)
        new[torch.randperm(mask.numel(), generator=generator)[:kept]] = 1.0
        out[name] = new.view(mask.shape)
    return out



# --------------------------------------------------------------------------- score-based pruning


class LayerCollapse(LotteryError):
    """A strategy would prune a whole layer (the network would compute a constant)."""


def density_count(density: float, total: int) -> int:
    """How many of `total` weights a mask of `density` keeps (round half up, as `prune_count`)."""
    if not 0.0 < density <= 1.0:
        raise LotteryError(f"density must be in (0, 1], got {density}")
    return math.floor(density * total + 0.5)


def keep_highest(
    masks: Masks,
    scores: dict[str, torch.Tensor],
    keep: int,
    *,
    invert: bool = False,
    never_prune: list[str] = (),
    allow_collapse: bool = False,
) -> Masks:
    """New masks keeping the `keep` highest-scoring weights among those `masks` keeps, across all
    tensors (one global ranking, as SNIP, GraSP and SynFlow rank).

    * Only kept weights compete: a masked weight stays masked whatever its score.
    * `invert` keeps the lowest scores instead (Frankle et al. ICLR 2021, Section 5 "inversion"):
      the ranking of the negated score, so signed scores reverse and zeros stay finite (never
      1/score).
    * Ties are broken by position, as magnitude pruning: tensors in sorted name order, then the
      flattened position; among equal scores the earlier weight is pruned first.
    * `never_prune` tensors keep their masks and are not counted; `keep` counts the others.
    * A tensor that had weights and would keep none is layer collapse (Tanaka et al. 2020,
      Section 3): a LotteryError unless `allow_collapse`.
    """
    unknown = set(never_prune) - set(masks)
    if unknown:
        raise LotteryError(f"--never-prune names unknown tensors {sorted(unknown)}; prunable: {sorted(masks)}")
    names = sorted(n for n in masks if n not in set(never_prune))
    out = {name: masks[name].detach().cpu().to(torch.float32).clone() for name in masks}
    flat_masks = torch.cat([out[n].flatten() for n in names])
    flat_scores = torch.cat([scores[n].detach().cpu().flatten().to(torch.float64) for n in names])
    kept = torch.nonzero(flat_masks, as_tuple=True)[0]
    if keep > len(kept):
        raise LotteryError(f"cannot keep {keep} weights: only {len(kept)} remain unpruned")
    candidate = flat_scores[kept]
    if not torch.isfinite(candidate).all():
        raise LotteryError("pruning scores are not all finite (NaN or inf): the network or its data "
                           "gives no usable ranking")
    order = torch.sort(-candidate if invert else candidate, stable=True).indices
    flat_masks[kept[order[: len(kept) - keep]]] = 0.0
    offset = 0
    for n in names:
        size = out[n].numel()
        out[n] = flat_masks[offset : offset + size].view_as(out[n]).clone()
        offset += size
        if not allow_collapse and out[n].sum() == 0 and masks[n].sum() > 0:
            raise LayerCollapse(
                f"layer collapse: keeping {keep} weights would prune all of {n}, disconnecting the network "
                "(choose a higher density, or pass --allow-layer-collapse to accept it)")
    return out
