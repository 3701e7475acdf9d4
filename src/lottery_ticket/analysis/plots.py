"""Figures in the style of Frankle & Carbin (2019), saved as PNG (150 dpi) and SVG.

All figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg
(PNG) and SVG backends directly; ``pyplot`` and its global state are never used, so this is
safe in headless processes and threads.

* :func:`plot_early_stop_iteration`: early-stopping iteration vs Pm (paper Figure 4 left).
* :func:`plot_early_stop_accuracy`: test accuracy at early stopping vs Pm.
* :func:`plot_accuracy_curves`: test accuracy over training for a few levels (Figure 3).
* :func:`plot_final_accuracy`: final training and test accuracy vs Pm.
* :func:`make_plots`: all of the above into a folder, returning :class:`Plot` records.

Conventions: Pm (percent of weights remaining) is on a log axis that *decreases to the
right*, with ticks at the measured Pm values; the ticket (``main``) and each control keep one
color and marker in every figure; points are means over trials and **error bars are the
range (minimum and maximum) over trials**, as in the paper's figures (``errorbars="minmax"``,
the default) or one standard deviation (``errorbars="std"``, drawn only where two or more
trials exist).  Accuracies are fractions in
the data and shown in percent.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from lottery_ticket import layout
from lottery_ticket.analysis.table import aggregate, control_sort_key, format_pm

CONTROL_STYLES: dict[str, dict] = {
    layout.TICKET: {"color": "#1f77b4", "marker": "o", "label": "winning ticket"},
    "reinit": {"color": "#ff7f0e", "marker": "s", "label": "random reinit"},
    "reuse": {"color": "#2ca02c", "marker": "^", "label": "reuse"},
    "reuse_sign": {"color": "#9467bd", "marker": "D", "label": "reuse sign"},
    "random": {"color": "#d62728", "marker": "v", "label": "random pruning"},
}
_EXTRA_COLORS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_EXTRA_MARKERS = ("P", "X", "*", "h", "<")

ERRORBAR_KINDS = ("std", "minmax")

_RC = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 12,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.35,
    "svg.hashsalt": "lottery_ticket",
    "svg.fonttype": "none",
}


def control_style(control: str) -> dict:
    """Color, marker and legend label of a run kind (stable for unknown kinds too)."""
    if control in CONTROL_STYLES:
        return dict(CONTROL_STYLES[control])
    slot = sum(map(ord, control)) % len(_EXTRA_COLORS)
    return {"color": _EXTRA_COLORS[slot], "marker": _EXTRA_MARKERS[slot], "label": control}


@dataclass(frozen=True)
class Plot:
    """A saved figure: its files and the text a report shows with it."""

    name: str
    title: str
    caption: str
    png: Path
    svg: Path


CAPTIONS = {
    "early_stop_iteration": (
        "Early-stopping iteration vs. weights remaining",
        "Iteration of minimum validation loss (lower = learns faster) as pruning proceeds "
        "to the right; winning tickets that stay below their random controls learn faster "
        "than them.",
    ),
    "early_stop_accuracy": (
        "Test accuracy at early stopping vs. weights remaining",
        "Test accuracy at the iteration of minimum validation loss as pruning proceeds to "
        "the right; a winning ticket matches or beats the unpruned network (leftmost point) "
        "while its random controls fall off sooner.",
    ),
    "accuracy_curves": (
        "Test accuracy during training (winning tickets)",
        "Test accuracy over training iterations for a few pruning levels (one line per Pm, "
        "mean over trials, band = ±1 std); sparser tickets that rise faster and higher "
        "than the dense network learn faster and generalize better.",
    ),
    "final_accuracy": (
        "Final training and test accuracy vs. weights remaining",
        "Accuracy at the end of training on the training set (left) and test set (right); "
        "a gap between the two panels is overfitting, and training accuracy near 100% "
        "means sparsity has not yet limited the network's capacity.",
    ),
}


# ----------------------------------------------------------------------------- helpers


def _errorbar_caption(errorbars: str) -> str:
    return ("Points are means over trials; error bars show one standard deviation."
            if errorbars == "std" else
            "Points are means over trials; error bars show the minimum and maximum.")


def _check_errorbars(errorbars: str) -> None:
    if errorbars not in ERRORBAR_KINDS:
        raise ValueError(f"errorbars must be one of {ERRORBAR_KINDS}, got {errorbars!r}")


def _pm_ticks(values: Sequence[float], max_ticks: int = 12) -> list[float]:
    """Measured Pm values to label, thinned so labels on a log axis do not collide."""
    pms = sorted({float(v) for v in values if np.isfinite(v) and v > 0}, reverse=True)
    if len(pms) <= 2:
        return pms
    span = np.log10(pms[0]) - np.log10(pms[-1])
    min_gap = span / max_ticks if span > 0 else 0
    kept = [pms[0]]
    for pm in pms[1:]:
        if np.log10(kept[-1]) - np.log10(pm) >= min_gap * 0.999:
            kept.append(pm)
    if kept[-1] != pms[-1]:  # always label the sparsest point
        if len(kept) > 1 and np.log10(kept[-1]) - np.log10(pms[-1]) < min_gap:
            kept[-1] = pms[-1]
        else:
            kept.append(pms[-1])
    return kept


def _percent_tick(value: float, _pos=None) -> str:
    return f"{format_pm(value)}%"


def _setup_pm_axis(ax, pms: Sequence[float]) -> None:
    """Log x axis of Pm, decreasing to the right, ticks at the measured values."""
    finite = [p for p in pms if np.isfinite(p) and p > 0]
    ax.set_xscale("log")
    ticks = _pm_ticks(finite)
    if finite:
        hi, lo = max(finite), min(finite)
        pad = 10 ** (0.04 * max(np.log10(hi / lo), 0.5))
        ax.set_xlim(hi * pad, lo / pad)  # inverted: largest Pm on the left
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(_percent_tick))
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) > 9:
        for label in ax.get_xticklabels():
            label.set_rotation(45)
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_xlabel("Weights remaining, Pm (%, log scale)")
    ax.grid(True, which="major")


def _controls(agg: pd.DataFrame) -> list[str]:
    return sorted(agg["control"].unique(), key=control_sort_key)


def _series(agg: pd.DataFrame, control: str, metric: str, scale: float, errorbars: str):
    rows = agg[(agg["control"] == control) & agg[f"{metric}_mean"].notna()
               & agg["pm"].notna() & (agg["pm"] > 0)]
    rows = rows.sort_values("pm", ascending=False)
    x = rows["pm"].to_numpy(float)
    y = rows[f"{metric}_mean"].to_numpy(float) * scale
    if errorbars == "std":
        err = np.nan_to_num(rows[f"{metric}_std"].to_numpy(float) * scale, nan=0.0)
        yerr = np.vstack([err, err])
    else:
        lo = rows[f"{metric}_min"].to_numpy(float) * scale
        hi = rows[f"{metric}_max"].to_numpy(float) * scale
        yerr = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
    return x, y, yerr


def _draw_vs_pm(ax, agg, metric, scale, errorbars, *, linestyle="-", label_suffix=""):
    drawn = False
    for control in _controls(agg):
        x, y, yerr = _series(agg, control, metric, scale, errorbars)
        if len(x) == 0:
            continue
        style = control_style(control)
        ax.errorbar(x, y, yerr=yerr, color=style["color"], marker=style["marker"],
                    markersize=5, linewidth=1.6, linestyle=linestyle, capsize=3,
                    elinewidth=1.0, label=style["label"] + label_suffix)
        drawn = True
    return drawn


def _new_figure(size=(6.4, 4.4)) -> Figure:
    return Figure(figsize=size, layout="constrained")


def _has_data(agg: pd.DataFrame, metric: str) -> bool:
    return (not agg.empty and f"{metric}_mean" in agg
            and bool((agg[f"{metric}_mean"].notna() & agg["pm"].notna()).any()))


# ----------------------------------------------------------------------------- figures


def plot_early_stop_iteration(agg: pd.DataFrame, *, errorbars: str = "minmax") -> Figure:
    """Early-stopping iteration (mean over trials) vs Pm, ticket and controls."""
    _check_errorbars(errorbars)
    with matplotlib.rc_context(_RC):
        fig = _new_figure()
        ax = fig.add_subplot()
        _draw_vs_pm(ax, agg, "early_stop_iteration", 1.0, errorbars)
        _setup_pm_axis(ax, agg["pm"].dropna().tolist())
        ax.set_ylabel("Early-stopping iteration (training iterations)")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
        ax.set_title(CAPTIONS["early_stop_iteration"][0])
        ax.legend(loc="best", frameon=True)
    return fig


def plot_early_stop_accuracy(agg: pd.DataFrame, *, errorbars: str = "minmax") -> Figure:
    """Test accuracy at the early-stopping iteration (mean over trials) vs Pm."""
    _check_errorbars(errorbars)
    with matplotlib.rc_context(_RC):
        fig = _new_figure()
        ax = fig.add_subplot()
        _draw_vs_pm(ax, agg, "early_stop_test_accuracy", 100.0, errorbars)
        _setup_pm_axis(ax, agg["pm"].dropna().tolist())
        ax.set_ylabel("Test accuracy at early stopping (%)")
        ax.set_title(CAPTIONS["early_stop_accuracy"][0])
        ax.legend(loc="best", frameon=True)
    return fig


def plot_final_accuracy(agg: pd.DataFrame, *, errorbars: str = "minmax") -> Figure:
    """Two panels: final training accuracy and final test accuracy vs Pm (shared y)."""
    _check_errorbars(errorbars)
    with matplotlib.rc_context(_RC):
        fig = _new_figure(size=(10.0, 4.4))
        ax_train, ax_test = fig.subplots(1, 2, sharey=True)
        pms = agg["pm"].dropna().tolist()
        for ax, metric, title in (
            (ax_train, "final_train_accuracy", "Training set, end of training"),
            (ax_test, "final_test_accuracy", "Test set, end of training"),
        ):
            _draw_vs_pm(ax, agg, metric, 100.0, errorbars)
            _setup_pm_axis(ax, pms)
            ax.set_title(title)
        ax_train.set_ylabel("Accuracy (%)")
        ax_test.tick_params(labelleft=True)
        handles, labels = ax_test.get_legend_handles_labels()
        if not handles:
            handles, labels = ax_train.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5),
                       frameon=False)
        fig.suptitle(CAPTIONS["final_accuracy"][0])
    return fig


def choose_levels(pm_by_level: dict[int, float], count: int = 5) -> list[int]:
    """A few levels spread evenly in log Pm, always including the densest and sparsest.

    With the usual constant pruning rate this is evenly spaced levels; e.g. for the
    paper's Lenet levels it picks Pm ~ 100, 51.3, 21.1, 7.0, 3.6 style values.
    """
    items = sorted(((lvl, pm) for lvl, pm in pm_by_level.items()), key=lambda t: t[0])
    if len(items) <= count:
        return [lvl for lvl, _ in items]
    known = [(lvl, pm) for lvl, pm in items if np.isfinite(pm) and pm > 0]
    if len(known) < count:
        picks = np.linspace(0, len(items) - 1, count).round().astype(int)
        return sorted({items[i][0] for i in picks})
    logs = np.log10([pm for _, pm in known])
    targets = np.linspace(logs[0], logs[-1], count)
    chosen: list[int] = []
    for target in targets:
        order = np.argsort(np.abs(logs - target), kind="stable")
        for i in order:
            if known[i][0] not in chosen:
                chosen.append(known[i][0])
                break
    return sorted(chosen)


def plot_accuracy_curves(
    metrics: pd.DataFrame,
    pm_by_level: dict[int, float],
    *,
    levels: Sequence[int] | None = None,
    control: str = layout.TICKET,
    split: str = "test",
) -> Figure:
    """Accuracy over training iterations, one line per level (mean over trials, ±1 std band).

    ``metrics`` is the long table of :func:`~lottery_ticket.analysis.table.load_metrics`
    (columns ``trial, level, control, iteration, split, accuracy``); ``pm_by_level`` labels
    the lines.  ``levels=None`` picks a few with :func:`choose_levels`.
    """
    data = metrics[(metrics["control"] == control) & (metrics["split"] == split)]
    data = data[data["accuracy"].notna()]
    available = sorted(int(v) for v in data["level"].unique())
    if levels is None:
        levels = choose_levels({lvl: pm_by_level.get(lvl, np.nan) for lvl in available})
    levels = [lvl for lvl in levels if lvl in available]
    with matplotlib.rc_context(_RC):
        fig = _new_figure(size=(11.0, 4.6))
        ax_full, ax_zoom = fig.subplots(1, 2)
        colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(len(levels), 1)))
        means = []
        for color, level in zip(colors, levels, strict=False):
            rows = data[data["level"] == level]
            stats = rows.groupby("iteration")["accuracy"].agg(["mean", "std"]).sort_index()
            x = stats.index.to_numpy(float)
            y = stats["mean"].to_numpy(float) * 100.0
            std = stats["std"].to_numpy(float) * 100.0
            means.append(y)
            label = f"Pm = {format_pm(pm_by_level.get(level, np.nan))}%  (level {level})"
            for ax in (ax_full, ax_zoom):
                ax.plot(x, y, color=color, linewidth=1.6, label=label)
                if np.isfinite(std).any():
                    band = np.nan_to_num(std)
                    ax.fill_between(x, y - band, y + band, color=color, alpha=0.15, linewidth=0)
        for ax, title in ((ax_full, "Whole run"), (ax_zoom, "Zoomed to the top")):
            ax.set_xlabel("Training iterations")
            ax.set_ylabel(f"{split.capitalize()} accuracy (%)")
            ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
            ax.grid(True)
            ax.set_title(title)
        _zoom_to_top(ax_zoom, means)
        fig.suptitle(CAPTIONS["accuracy_curves"][0] if split == "test" and control == layout.TICKET
                     else f"{split.capitalize()} accuracy during training ({control})")
        if levels:
            # Bottom right of the whole-run panel is empty once curves plateau; in the zoomed
            # panel the sparsest curves run through it.
            ax_full.legend(loc="lower right", frameon=True)
    return fig


def _zoom_to_top(ax, curves: list[np.ndarray]) -> None:
    """Y limits showing the plateaus: from a bit below the lowest plateau to above the best.

    A curve's plateau is its median over the second half of training; the window is at least
    one percentage point tall so that noise does not fill it.
    """
    plateaus, peaks = [], []
    for y in curves:
        y = y[np.isfinite(y)]
        if len(y) < 2:
            continue
        plateaus.append(float(np.median(y[len(y) // 2:])))
        peaks.append(float(y.max()))
    if not plateaus:
        return
    lo, hi = min(plateaus), max(peaks)
    span = max(hi - lo, 1.0)
    ax.set_ylim(lo - 0.6 * span, hi + 0.25 * span)


def _thousands(value: float, _pos=None) -> str:
    if abs(value) >= 1000:
        text = f"{value / 1000:.3f}".rstrip("0").rstrip(".")  # 1250 -> 1.25K, not 1.2K
        return f"{text}K"
    return f"{value:.0f}"


# ----------------------------------------------------------------------------- all figures


def save_figure(fig: Figure, stem: str | Path, *, dpi: int = 150) -> tuple[Path, Path]:
    """Save ``fig`` as ``<stem>.png`` (at ``dpi``) and ``<stem>.svg``; returns both paths.

    Each is rendered in memory and written atomically (a crash leaves no truncated figure)."""
    from lottery_ticket.store import write_bytes_atomic

    stem = Path(stem)
    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    with matplotlib.rc_context(_RC):
        for path, kwargs in ((png, {"format": "png", "dpi": dpi, "metadata": {"Software": None}}),
                             (svg, {"format": "svg", "metadata": {"Date": None}})):
            buffer = io.BytesIO()
            fig.savefig(buffer, **kwargs)
            write_bytes_atomic(path, buffer.getvalue())
    return png, svg


def make_plots(
    agg: pd.DataFrame,
    metrics: pd.DataFrame | None,
    out_dir: str | Path,
    *,
    levels: Sequence[int] | None = None,
    errorbars: str = "minmax",
    dpi: int = 150,
) -> list[Plot]:
    """Draw and save every figure that has data; returns them in report order.

    ``agg`` is :func:`~lottery_ticket.analysis.table.aggregate`'s table (a per-run table of
    :func:`~lottery_ticket.analysis.table.load_results` is aggregated first, as given: filter
    it, e.g. to complete runs, beforehand), ``metrics`` the long
    table of :func:`~lottery_ticket.analysis.table.load_metrics` (``None`` skips the
    training-curve figure), ``levels`` the levels of the training-curve figure (default: a
    few chosen by :func:`choose_levels`).  Files are ``out_dir/<name>.png`` and ``.svg``.
    Figures without data (e.g. no complete run yet) are skipped, not drawn empty.
    """
    _check_errorbars(errorbars)
    if "early_stop_iteration_mean" not in agg.columns and "early_stop_iteration" in agg.columns:
        agg = aggregate(agg)
    out_dir = Path(out_dir)
    plots: list[Plot] = []
    bar_note = " " + _errorbar_caption(errorbars)

    def save(name: str, fig: Figure, extra: str = "") -> None:
        png, svg = save_figure(fig, out_dir / name, dpi=dpi)
        title, caption = CAPTIONS[name]
        plots.append(Plot(name, title, caption + extra, png, svg))

    if _has_data(agg, "early_stop_iteration"):
        save("early_stop_iteration", plot_early_stop_iteration(agg, errorbars=errorbars),
             bar_note)
    if _has_data(agg, "early_stop_test_accuracy"):
        save("early_stop_accuracy", plot_early_stop_accuracy(agg, errorbars=errorbars),
             bar_note)
    if metrics is not None and not metrics.empty:
        main = agg[agg["control"] == layout.TICKET] if not agg.empty else agg
        pm_by_level = {int(r.level): float(r.pm) for r in main.itertuples()}
        test_rows = metrics[(metrics["control"] == layout.TICKET) & (metrics["split"] == "test")]
        if test_rows["accuracy"].notna().any():
            save("accuracy_curves", plot_accuracy_curves(metrics, pm_by_level, levels=levels))
    if _has_data(agg, "final_train_accuracy") or _has_data(agg, "final_test_accuracy"):
        save("final_accuracy", plot_final_accuracy(agg, errorbars=errorbars), bar_note)
    return plots
