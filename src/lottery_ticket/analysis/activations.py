"""`lth activations`: per-layer activations of saved networks of an experiment, their summary
statistics (defined here, in one place) and a figure across levels.

Statistics of one layer's activations A (first dimension: the examples; second: the units, i.e.
the features of a Linear layer or the channels of a convolution; any further dimensions are
positions within the example):

* ``mean``: the mean of every value of A;
* ``zero_fraction``: the fraction of values exactly 0 (what the `activations` callback records);
* per unit, its **firing rate**: the fraction of its values (over the examples, and over the
  positions of a channel) that are > 0, i.e. that pass a ReLU;
* ``dead_fraction``: the fraction of units whose firing rate is 0: never positive on any example
  of the set (a "dead" ReLU unit for that set: no gradient flows through it);
* ``firing_rate_mean`` / ``_min`` / ``_max`` over the units.

For a module's output (a hook on `hidden.0`, before its ReLU) "firing" still means > 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from lottery_ticket import layout
from lottery_ticket.errors import LotteryError

SPLITS = ("train", "validation", "test")
SUMMARY_COLUMNS = ("trial", "level", "run", "weights", "split", "pm", "examples", "layer", "units", "mean",
                   "zero_fraction", "dead_fraction", "firing_rate_mean", "firing_rate_min", "firing_rate_max")


def firing_rates(activations: torch.Tensor) -> torch.Tensor:
    """Per unit (dimension 1), the fraction of its values > 0 (float64)."""
    a = activations.reshape(activations.shape[0], -1) if activations.dim() < 2 else activations
    per_unit = (a > 0).transpose(0, 1).reshape(a.shape[1], -1)
    return per_unit.double().mean(1)


def layer_summary(activations: torch.Tensor) -> dict:
    """The module docstring's statistics of one layer's activations."""
    rates = firing_rates(activations)
    values = activations.double()
    return {
        "units": int(rates.numel()),
        "mean": float(values.mean()),
        "zero_fraction": float((activations == 0).double().mean()),
        "dead_fraction": float((rates == 0).double().mean()),
        "firing_rate_mean": float(rates.mean()),
        "firing_rate_min": float(rates.min()),
        "firing_rate_max": float(rates.max()),
    }


@dataclass(frozen=True)
class Request:
    """Which networks and examples `lth activations` reads."""

    experiment: str
    trials: list[int]
    levels: list[int]
    run: str = layout.TICKET
    weights: str = "final"
    split: str = "validation"
    examples: list[int] | None = None  # example indices into the split; None: all
    layers: list[str] | None = None  # None: every ReLU
    out_dir: str | None = None  # default: <experiment>/activations
    data_root: str | None = None
    download: bool = True
    quiet: bool = False

    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path(self.experiment) / layout.ACTIVATIONS


def _split_inputs(splits, split: str, examples: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = getattr(splits, f"{split}_x")
    if len(x) == 0:
        raise LotteryError(f"the {split} split of this experiment is empty (--validation-size 0?); choose another --split")
    if examples is None:
        return x, torch.arange(len(x))
    index = torch.tensor(examples, dtype=torch.long)
    if int(index.max()) >= len(x):
        raise LotteryError(f"--examples reaches example {int(index.max())}, but the {split} split has {len(x)}")
    return x[index], index


def extract(request: Request) -> pd.DataFrame:
    """Write one safetensors file of activations per network asked (its layers, each layer's
    per-unit firing rates as `<layer>:firing_rate`, the example indices as `examples`), the summary
    table `activations.csv` and the figure across levels; returns the summary table."""
    from lottery_ticket.activations import capture, layer_names
    from lottery_ticket.analysis.masks import remaining_percent
    from lottery_ticket.analysis.table import write_csv
    from lottery_ticket.layout.files import read_experiment, read_network
    from lottery_ticket.runner import RunOptions, load_splits, new_model, trial_seeds
    from lottery_ticket.store import save_tensors

    if request.split not in SPLITS:
        raise LotteryError(f"--split must be one of {', '.join(SPLITS)}, got {request.split!r}")
    hp, seed = read_experiment(request.experiment)
    out = request.output_dir()
    options = RunOptions(data_root=request.data_root, download=request.download, quiet=request.quiet)
    networks = [(t, k, *read_network(request.experiment, t, k, request.run, request.weights))
                for t in request.trials for k in request.levels]  # every file checked before any work
    rows = []
    for trial, level, _, state, masks in networks:
        splits = load_splits(hp, options, trial_seeds(seed, trial)["labels"])
        x, index = _split_inputs(splits, request.split, request.examples)
        model = new_model(hp, splits, seed=0, presets=state)
        layers = request.layers or [n for n in layer_names(model, splits.input_shape) if n.startswith("relu")]
        acts = capture(model, x, layers)
        tensors = {"examples": index}
        pm = remaining_percent(masks)["pm"]
        for layer in layers:
            tensors[layer] = acts[layer]
            tensors[f"{layer}:firing_rate"] = firing_rates(acts[layer])
            rows.append({"trial": trial, "level": level, "run": request.run, "weights": request.weights,
                         "split": request.split, "pm": pm, "examples": len(index), "layer": layer,
                         **layer_summary(acts[layer])})
        path = layout.activations_file(out, trial, level, request.run, request.weights, request.split)
        save_tensors(path, tensors)
        if not request.quiet:
            print(f"{path}: {', '.join(layers)} on {len(index)} {request.split} examples", flush=True)
    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    write_csv(table, out / layout.ACTIVATIONS_CSV)
    from lottery_ticket.analysis.analytics_plots import plot_activations
    from lottery_ticket.analysis.plots import save_figure

    save_figure(plot_activations(table), out / layout.ACTIVATIONS)
    return table
