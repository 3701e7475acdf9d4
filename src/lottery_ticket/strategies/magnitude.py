"""The paper's magnitude pruning: per layer (LeNet and Conv nets) or global (VGG-19, ResNet-18).

`layerwise`: Frankle & Carbin (2019) Section 2/3 prune each layer by its own rate (fc, conv and
output layers; Appendix tables). `global`: Section 4 prunes VGG-19 and ResNet-18 with one
magnitude threshold across all convolutions. The rounding and tie rules are in `pruning.py`.
With `ctx.invert` (the `invert` branch) both prune the largest magnitudes instead. Both ignore
`ctx.density`: they prune by their per-level rates.
"""

from __future__ import annotations

from lottery_ticket.hparams import never_prune
from lottery_ticket.masking import Masks, layer_kinds
from lottery_ticket.pruning import layer_fractions, prune_global, prune_layerwise
from lottery_ticket.strategies import PruningContext, register_strategy


@register_strategy("layerwise")
def layerwise(ctx: PruningContext) -> Masks:
    """Each tensor loses --fc-fraction, --conv-fraction or --output-fraction of its remaining weights."""
    p = ctx.hp.pruning
    fractions = layer_fractions(layer_kinds(ctx.architecture), p.fc_fraction, p.conv_fraction, p.output_fraction)
    for name in never_prune(p):
        fractions[name] = 0.0
    return prune_layerwise(ctx.masks, ctx.weights, fractions, ctx.invert)


@register_strategy("global")
def global_(ctx: PruningContext) -> Masks:
    """--global-fraction of all remaining weights (except --never-prune) below one threshold."""
    p = ctx.hp.pruning
    return prune_global(ctx.masks, ctx.weights, p.global_fraction, never_prune(p), ctx.invert)
