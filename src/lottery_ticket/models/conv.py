"""Conv-2, Conv-4 and Conv-6 from Figure 2 of the lottery ticket paper (VGG-like, for CIFAR-10).

Each stage is two 3x3 convolutions with padding 1 ("same") and ReLU, then a 2x2 max pool:
Conv-2 has one stage (64), Conv-4 two (64, 128), Conv-6 three (64, 128, 256). Then flatten,
two hidden Linear layers of 256 with ReLU (optionally followed by dropout, as in the paper's
dropout experiments) and a Linear output layer. Convolutions and Linear layers have biases
(zero at initialization; biases are not prunable).

Module names: `convs.<i>` (convolutions, in order), `hidden.<i>` (hidden Linear layers) and
`output` (the output layer, the last `nn.Linear` registered, as the pruning code expects).

Also holds the option/shape checks shared with `vgg.py` and `resnet.py`.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from lottery_ticket.errors import LotteryError
from lottery_ticket.models.registry import ModelEntry, register

# Filters per stage (two convolutions each, then a 2x2 max pool).
CONV_STAGES: dict[str, tuple[int, ...]] = {
    "conv2": (64,),
    "conv4": (64, 128),
    "conv6": (64, 128, 256),
}
HIDDEN = (256, 256)


def check_options(name: str, options: dict, allowed: tuple[str, ...] = ()) -> None:
    """Reject options the model does not understand.

    `dropout` set to None or 0 is accepted (and ignored) by every model, so callers may always
    pass the dropout hyperparameter; a nonzero dropout needs `dropout` in `allowed`.
    """
    for key, value in options.items():
        if key in allowed:
            continue
        if key == "dropout" and not value:
            continue
        if key == "dropout":
            raise LotteryError(f"dropout is not supported for model {name!r}")
        raise LotteryError(f"unsupported option {key!r} for model {name!r}")


def check_dropout(value) -> float:
    """A dropout rate in [0, 1); None means 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LotteryError(f"dropout must be a number in [0, 1), got {value!r}")
    rate = float(value)
    if not 0.0 <= rate < 1.0 or math.isnan(rate):
        raise LotteryError(f"dropout must be in [0, 1), got {value!r}")
    return rate


def check_image_shape(
    name: str, input_shape: tuple[int, ...], min_size: int = 1
) -> tuple[int, int, int]:
    """Validate a (channels, height, width) input shape; height and width at least `min_size`."""
    if len(input_shape) != 3 or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in input_shape
    ):
        raise LotteryError(
            f"model {name!r} needs an input shape (channels, height, width), got {tuple(input_shape)}"
        )
    channels, height, width = (int(d) for d in input_shape)
    if height < min_size or width < min_size:
        raise LotteryError(
            f"model {name!r} needs inputs at least {min_size}x{min_size}, got {height}x{width}"
        )
    return channels, height, width


class ConvNet(nn.Module):
    """Stages of (conv 3x3, ReLU, conv 3x3, ReLU, max pool 2x2), then FC-ReLU layers and output."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        stages: tuple[int, ...],
        hidden: tuple[int, ...],
        num_classes: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        channels, height, width = input_shape
        convs = []
        for filters in stages:
            convs.append(nn.Conv2d(channels, filters, kernel_size=3, padding=1))
            convs.append(nn.Conv2d(filters, filters, kernel_size=3, padding=1))
            channels = filters
            height, width = height // 2, width // 2
        self.convs = nn.ModuleList(convs)
        widths = [channels * height * width, *hidden]
        self.hidden = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=False)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.output = nn.Linear(widths[-1], num_classes)  # registered last: the output layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(0, len(self.convs), 2):
            x = F.relu(self.convs[i](x))
            x = F.relu(self.convs[i + 1](x))
            x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        for layer in self.hidden:
            x = F.relu(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.output(x)


def build_conv(name: str, num_classes: int, input_shape: tuple[int, ...], **options) -> ConvNet:
    check_options(name, options, allowed=("dropout",))
    dropout = check_dropout(options.get("dropout"))
    stages = CONV_STAGES[name]
    shape = check_image_shape(name, input_shape, min_size=2 ** len(stages))
    return ConvNet(shape, stages, HIDDEN, num_classes, dropout)


for _name, _convs, _weights in (
    ("conv2", "64-64-pool", "4.3M"),
    ("conv4", "64-64-pool-128-128-pool", "2.4M"),
    ("conv6", "64-64-pool-128-128-pool-256-256-pool", "2.3M"),
):
    register(
        ModelEntry(
            pattern=_name,
            build=build_conv,
            examples=(_name,),
            default_preset=_name,
            dataset="cifar10",
            description=(
                f"Conv-{_name[-1]} (paper Figure 2): 3x3 convs {_convs}, FC 256-256-10, "
                f"{_weights} weights; option dropout"
            ),
        )
    )
