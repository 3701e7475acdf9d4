"""What a ticket costs, per level, in one place: remaining parameters, dense and sparse FLOPs per
example, and the size of its sparse export against the dense file.

Counting rule for FLOPs (stated in the report): 2 FLOPs (a multiply and an add) per
multiply-accumulate of the weight layers (Linear and Conv), per example. A weight tensor W of a
layer applied at P positions per example (1 for a Linear layer on a flat input, the output height
x width for a 2-D convolution) costs 2 * numel(W) * P dense and 2 * kept(W) * P sparse, i.e. as if
every pruned weight's multiply-accumulate were skipped. Biases, batch norm, activations, pooling
and residual additions are not counted (each is O(activations), not O(weights): e.g. LeNet-300-100
has 266,200 weight MACs and 410 biases). These are the arithmetic counts usually quoted for
unstructured sparsity, not a speed: dense hardware gains nothing from scattered zeros, and sparse
kernels pay index overhead (Blalock et al., "What is the state of neural network pruning?",
MLSys 2020, Section 4, on why FLOP and parameter counts must be reported with their rule).
The positions P come from one forward pass of one example with forward hooks on the weight
layers (eval mode, no gradients).

Parameters: ``remaining_weights`` counts the prunable weights the masks keep; ``parameters`` every
parameter of the network after pruning (all parameters minus the pruned weights: biases and
batch-norm scales and shifts included; buffers such as running statistics not). Sizes: the bytes of
the network's state dict as a safetensors file (``dense_bytes``, what ``final.safetensors`` holds)
and as the sparse export of ``lth export`` (``export_bytes``); both depend on the masks, shapes and
dtypes only, not on the weights' values.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from lottery_ticket.analysis.stats import spread
from lottery_ticket.masking import PRUNABLE_TYPES

EFFICIENCY_COLUMNS = ("remaining_weights", "parameters", "dense_flops", "sparse_flops", "dense_bytes",
                      "export_bytes")


def positions_per_example(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """``{weight name: positions per example}`` for every Linear and Conv layer: the output elements
    per example divided by the output channels (or features), from one forward pass of a zero input
    with forward hooks (eval mode, no gradients; the model's mode is restored)."""
    found: dict[str, int] = {}
    hooks = []
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            name = f"{module_name}.weight" if module_name else "weight"

            def record(module, inputs, output, name=name):
                channels = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
                found[name] = output[0].numel() // channels

            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return found


def flops(model: nn.Module, masks: dict[str, torch.Tensor], positions: dict[str, int]) -> tuple[int, int]:
    """(dense, sparse) FLOPs per example by the module docstring's rule; a weight layer without a
    mask counts in full in both."""
    params = dict(model.named_parameters())
    dense = sparse = 0
    for name, count in positions.items():
        size = params[name].numel()
        kept = int((masks[name] != 0).sum().item()) if name in masks else size
        dense += 2 * size * count
        sparse += 2 * kept * count
    return dense, sparse


def network_costs(model: nn.Module, masks: dict[str, torch.Tensor], positions: dict[str, int]) -> dict[str, int]:
    """One network's numbers (the keys of :data:`EFFICIENCY_COLUMNS`)."""
    from lottery_ticket.export import dense_bytes, sparse_bytes

    state = model.state_dict()
    kept = sum(int((m != 0).sum().item()) for m in masks.values())
    pruned = sum(m.numel() for m in masks.values()) - kept
    dense, sparse = flops(model, masks, positions)
    return {
        "remaining_weights": kept,
        "parameters": sum(p.numel() for p in model.parameters()) - pruned,
        "dense_flops": dense,
        "sparse_flops": sparse,
        "dense_bytes": len(dense_bytes(state)),
        "export_bytes": len(sparse_bytes(state, masks)),
    }


def experiment_model(experiment_dir: str | Path) -> tuple[nn.Module, tuple[int, ...]]:
    """The experiment's architecture (weights irrelevant) and its input shape, from experiment.json
    (a LotteryError if its hyperparameters cannot be read or built)."""
    from lottery_ticket.data.registry import DATASETS
    from lottery_ticket.layout.files import read_experiment
    from lottery_ticket.models import build_model

    hp, _ = read_experiment(experiment_dir)
    dataset = DATASETS.get(hp.dataset.dataset)
    model = build_model(hp.model.model, seed=0, num_classes=dataset.num_classes, input_shape=dataset.input_shape,
                        init=hp.model.init, dropout=hp.model.dropout)
    return model, tuple(dataset.input_shape)


def efficiency_table(model: nn.Module, input_shape: tuple[int, ...],
                     masks: dict[tuple[int, int], dict[str, torch.Tensor]]) -> pd.DataFrame:
    """Per level, over the trials' tickets: ``level, trials`` and for each of
    :data:`EFFICIENCY_COLUMNS` its mean, min and max (``<column>``, ``<column>_min``,
    ``<column>_max``)."""
    positions = positions_per_example(model, input_shape)
    per_run = {key: network_costs(model, m, positions) for key, m in sorted(masks.items())}
    rows = []
    for level in sorted({level for _, level in per_run}):
        runs = [costs for (_, k), costs in per_run.items() if k == level]
        row: dict = {"level": level, "trials": len(runs)}
        for column in EFFICIENCY_COLUMNS:
            s = spread(r[column] for r in runs)
            row.update({column: s.mean, f"{column}_min": s.min, f"{column}_max": s.max})
        rows.append(row)
    return pd.DataFrame(rows)


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
