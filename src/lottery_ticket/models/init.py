"""Weight initialization, in one place: Glorot-normal weights and zero biases by default."""

import math

import torch
import torch.nn as nn

from lottery_ticket.errors import LotteryError

INITIALIZERS = ("glorot_normal", "glorot_truncated_normal", "glorot_uniform", "kaiming_normal", "kaiming_uniform")

# TensorFlow's truncated normal keeps draws within 2 standard deviations; its VarianceScaling
# initializer divides the stddev by this constant (the stddev of a unit normal truncated to [-2, 2])
# so the weights still have variance 2 / (fan_in + fan_out).
_TRUNCATED_STD = 0.87962566103423978


def glorot_truncated_normal_(weight: torch.Tensor, generator: torch.Generator) -> None:
    """`tf.glorot_normal_initializer` (TF 1.x), which the original lottery-ticket code uses:
    a normal of stddev sqrt(2 / (fan_in + fan_out)) / 0.8796..., truncated at 2 stddevs."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    std = math.sqrt(2.0 / (fan_in + fan_out)) / _TRUNCATED_STD
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
