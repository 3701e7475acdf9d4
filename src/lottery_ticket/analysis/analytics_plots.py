"""Figures of the mask, weight and activation analytics (the conventions of `analysis.plots`:
Pm on a log axis decreasing to the right, means over trials with min/max error bars).

* :func:`plot_layer_remaining`: percent of each layer remaining vs level.
* :func:`plot_initial_weights`: the initial values of the surviving weights, per layer, at a few
  levels (Frankle & Carbin 2019, Appendix F.1, Figure 13 of arXiv v5).
* :func:`plot_activations`: dead units and mean activation per layer vs Pm (`lth activations`).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from lottery_ticket.analysis.plots import _RC, _new_figure, _percent_tick, _setup_pm_axis, format_pm

_LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")


def _color(i: int) -> str:
    return _LAYER_COLORS[i % len(_LAYER_COLORS)]


def _errorbar(ax, x, mean, low, high, **style) -> None:
    mean, low, high = (np.asarray(v, float) for v in (mean, low, high))
    ax.errorbar(x, mean, yerr=np.clip(np.nan_to_num(np.vstack([mean - low, high - mean])), 0, None),
                markersize=4, linewidth=1.5, capsize=3, elinewidth=1.0, **style)


def plot_layer_remaining(layers: pd.DataFrame) -> Figure:
    """`masks.layer_table`: percent remaining per tensor (and all together) vs Pm."""
    pm = layers[layers["tensor"] == "all"].set_index("level")["mean"]
    with matplotlib.rc_context(_RC):
        fig = _new_figure()
        ax = fig.add_subplot()
        for i, (tensor, rows) in enumerate(layers.groupby("tensor", sort=False)):
            x = rows["level"].map(pm).to_numpy(float)
            style = {"color": "black", "linestyle": "--"} if tensor == "all" else {"color": _color(i)}
            _errorbar(ax, x, rows["mean"], rows["min"], rows["max"], marker="o", label=tensor, **style)
        _setup_pm_axis(ax, pm.tolist())
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(_percent_tick))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylabel("Weights remaining in the layer (%, log scale)")
        ax.set_title("Weights remaining per layer")
        ax.legend(loc="best", frameon=True, fontsize=8)
    return fig


def plot_initial_weights(samples: dict[int, dict[str, np.ndarray]], pm_by_level: dict[int, float],
                         bins: int = 60) -> Figure:
    """One panel per level: normalized histograms (area 1) of the surviving weights' initial values,
    one line per layer, as the paper's appendix figure."""
    levels = sorted(samples)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(size=(3.2 * max(len(levels), 1) + 0.6, 3.4))
        axes = np.atleast_1d(fig.subplots(1, max(len(levels), 1), sharey=False))
        for ax, level in zip(axes, levels, strict=False):
            for i, (name, values) in enumerate(sorted(samples[level].items())):
                if len(values) == 0:
                    continue
                density, edges = np.histogram(values, bins=bins, density=True)
                ax.stairs(density, edges, color=_color(i), label=name, linewidth=1.3)
            ax.set_title(f"Pm = {format_pm(pm_by_level.get(level, np.nan))}% (level {level})")
            ax.set_xlabel("Initial weight value")
            ax.grid(True)
        axes[0].set_ylabel("Density (area 1 per layer)")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), frameon=False)
        fig.suptitle("Initial values of the weights each ticket keeps (pooled over trials)")
    return fig


def plot_activations(table: pd.DataFrame) -> Figure:
    """`lth activations`' summary: dead-unit fraction and mean activation per layer vs Pm (mean over
    trials, min/max bars)."""
    with matplotlib.rc_context(_RC):
        fig = _new_figure(size=(10.0, 4.2))
        ax_dead, ax_mean = fig.subplots(1, 2)
        for i, (layer, rows) in enumerate(table.groupby("layer", sort=False)):
            stats = rows.groupby("level").agg(pm=("pm", "mean"), dead=("dead_fraction", "mean"),
                                              dead_lo=("dead_fraction", "min"), dead_hi=("dead_fraction", "max"),
                                              mean=("mean", "mean"), mean_lo=("mean", "min"), mean_hi=("mean", "max"))
            _errorbar(ax_dead, stats["pm"], 100 * stats["dead"], 100 * stats["dead_lo"], 100 * stats["dead_hi"],
                      marker="o", color=_color(i), label=layer)
            _errorbar(ax_mean, stats["pm"], stats["mean"], stats["mean_lo"], stats["mean_hi"], marker="o",
                      color=_color(i), label=layer)
        for ax, label in ((ax_dead, "Dead units (%: never > 0 on these examples)"), (ax_mean, "Mean activation")):
            _setup_pm_axis(ax, table["pm"].dropna().tolist())
            ax.set_ylabel(label)
        ax_dead.legend(loc="best", frameon=True, fontsize=8)
        what = ", ".join(sorted({f"{w} weights, {s} split" for w, s in zip(table["weights"], table["split"], strict=True)}))
        fig.suptitle(f"Activations per layer ({what})")
    return fig
