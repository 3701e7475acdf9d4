"""`--callback activations`: per-ReLU activation statistics on the validation split at each evaluation.

Users of the original paper's code asked for per-layer activations; this records, for every ReLU
the network applies (in forward order: `relu0` is the first hidden layer's), the mean activation
and the fraction of outputs that are exactly zero ("dead" for that example), over the whole
validation split (the test split if --validation-size is 0). ReLUs are found by intercepting
`torch.relu` / `F.relu` calls during the forward pass (`activations.ReluCalls`, shared with
`lth activations`), so every model family is covered without per-model code. Columns:
iteration, layer, units (per example), mean_activation, zero_fraction. (`lth activations` reads
saved networks instead and adds dead units and per-unit firing rates.)
"""

from __future__ import annotations

from lottery_ticket.activations import BATCH, ReluCalls
from lottery_ticket.callbacks import register_callback


@register_callback("activations")
def activations(model, iteration, splits):
    x = splits.validation_x if len(splits.validation_y) else splits.test_x
    stats: list = []  # per ReLU: [units per example, sum, zeros, count]

    def add(index, out):
        if index == len(stats):
            stats.append([out[0].numel(), 0.0, 0, 0])
        entry = stats[index]
        entry[1] += out.double().sum().item()
        entry[2] += int((out == 0).sum().item())
        entry[3] += out.numel()

    for start in range(0, len(x), BATCH):
        with ReluCalls(add):
            model(x[start : start + BATCH])
    return [
        {"layer": f"relu{i}", "units": units, "mean_activation": total / count, "zero_fraction": zeros / count}
        for i, (units, total, zeros, count) in enumerate(stats)
    ]
