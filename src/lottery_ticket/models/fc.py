"""Fully-connected networks from a layer spec: `fc_300_100` is 784-300-100-10 with ReLU."""

import math
import re

import torch
import torch.nn as nn

from lottery_ticket.errors import LotteryError
from lottery_ticket.models.registry import ModelEntry, register


class FullyConnected(nn.Module):
    """Flatten, then Linear+ReLU per hidden width, then a Linear output layer."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int):
        super().__init__()
        widths = [in_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=False))
        self.output = nn.Linear(widths[-1], num_classes)

    def linears(self) -> list[nn.Linear]:
        return [*self.hidden, self.output]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.output(x)


NAME_PATTERN = r"lenet_300_100|fc(_[1-9][0-9]*)+"


def is_fully_connected(name: str) -> bool:
    """Whether `name` is a model of this family (small steps: fastest on one thread per run)."""
    return re.fullmatch(NAME_PATTERN, name) is not None


def build_fc(name: str, num_classes: int, input_shape: tuple[int, ...], **options) -> FullyConnected:
    if options.get("dropout"):
        raise LotteryError("dropout is not supported for fully-connected models")
    hidden = [300, 100] if name == "lenet_300_100" else [int(w) for w in name.split("_")[1:]]
    return FullyConnected(math.prod(input_shape), hidden, num_classes)


register(
    ModelEntry(
        pattern=NAME_PATTERN,
        build=build_fc,
        examples=("lenet_300_100", "fc_300_100", "fc_1000"),
        default_preset="paper",
        dataset="mnist",
        description="LeNet-300-100 (784-300-100-10) and any fully-connected fc_N_M_... with ReLU",
    )
)

