"""`--callback activations`: per-ReLU activation statistics on the validation split at each evaluation.

Users of the original paper's code asked for per-layer activations; this records, for every ReLU
the network applies (in forward order: `relu0` is the first hidden layer's), the mean activation
and the fraction of outputs that are exactly zero ("dead" for that example), over the whole
validation split (the test split if --validation-size is 0). ReLUs are found by intercepting
`torch.relu` / `F.relu` calls during the forward pass, so every model family is covered without
per-model code. Columns: iteration, layer, units (per example), mean_activation, zero_fraction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lottery_ticket.callbacks import register_callback

BATCH = 1_000  # as the trainer's evaluation
_RELUS = {torch.relu, torch.relu_, F.relu, F.relu_}


class _RecordRelus(TorchFunctionMode):
    """Adds each ReLU output's (sum, zeros, count) to `stats`, by call order within a forward pass."""

    def __init__(self, stats: list):
        super().__init__()
        self.stats = stats
        self.index = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _RELUS:
            if self.index == len(self.stats):
                self.stats.append([out[0].numel(), 0.0, 0, 0])
            entry = self.stats[self.index]
            entry[1] += out.double().sum().item()
            entry[2] += int((out == 0).sum().item())
            entry[3] += out.numel()
            self.index += 1
        return out


@register_callback("activations")
def activations(model, iteration, splits):
    x = splits.validation_x if len(splits.validation_y) else splits.test_x
    stats: list = []
    for start in range(0, len(x), BATCH):
        mode = _RecordRelus(stats)
        with mode:
            model(x[start : start + BATCH])
    return [
        {"layer": f"relu{i}", "units": units, "mean_activation": total / count, "zero_fraction": zeros / count}
        for i, (units, total, zeros, count) in enumerate(stats)
    ]
