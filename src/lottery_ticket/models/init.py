"""Weight initialization, in one place: Glorot-normal weights and zero biases by default."""

import math

import torch
import torch.nn as nn

from lottery_ticket.errors import LotteryError

INITIALIZERS = ("glorot_normal", "glorot_truncated_normal", "glorot_uniform", "kaiming_normal", "kaiming_uniform")

# The original lottery-ticket code (foundations/model_fc.py) initializes with TF 1.x's
# tf.contrib.layers.xavier_initializer(uniform=False): a normal of stddev sqrt(1.3 * factor / n),
# n = (fan_in + fan_out) / 2, factor 1, truncated at 2 stddevs (the 1.3 makes up for the variance
# the truncation removes, so the weights keep about variance 2 / (fan_in + fan_out)).
_TRUNCATION_FACTOR = 1.3


def glorot_truncated_normal_(weight: torch.Tensor, generator: torch.Generator) -> None:
    """The original code's truncated-normal Glorot initialization (see above)."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    std = math.sqrt(_TRUNCATION_FACTOR * 2.0 / (fan_in + fan_out))
    nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std, generator=generator)


@torch.no_grad()
def initialize(model: nn.Module, init: str, seed: int) -> None:
    """Initialize every Linear/Conv weight with `init`, zero biases, unit batch-norm scales.

    Modules are visited in registration order with one generator, so the result depends only on
    the architecture, `init` and `seed`.
    """
    if init not in INITIALIZERS:
        raise LotteryError(f"unknown initializer {init!r}; choose from {', '.join(INITIALIZERS)}")
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            weight = module.weight
            if init == "glorot_normal":
                nn.init.xavier_normal_(weight, generator=generator)
            elif init == "glorot_truncated_normal":
                glorot_truncated_normal_(weight, generator)
            elif init == "glorot_uniform":
                nn.init.xavier_uniform_(weight, generator=generator)
            elif init == "kaiming_normal":
                nn.init.kaiming_normal_(weight, nonlinearity="relu", generator=generator)
            else:
                nn.init.kaiming_uniform_(weight, nonlinearity="relu", generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
