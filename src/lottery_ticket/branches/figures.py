"""The `lth report` sections of the measuring branches: instability and retraining tables and figures.

They read the complete runs of a branch (`layout.find_runs`, the branch's run kind) and their
tables (`instability.csv`, `retraining.csv`, the pairs' `instability.json`), and draw with
`analysis.plots` (its style, `save_figure`). Spreads are the minimum and maximum over every
pair (instability) or trial (retraining) behind a point.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lottery_ticket import layout
from lottery_ticket.branches import ReportSection
from lottery_ticket.layout.files import verify_run
from lottery_ticket.store import read_json

INTERPOLATION_PANELS = 4  # at most this many k in the interpolation figure


def _tables(experiment: Path, kind: str, name: str) -> pd.DataFrame:
    """The named table of every complete run of `kind`, concatenated (empty if none)."""
    frames = []
    for run in layout.find_runs(experiment):
        if run.control == kind and layout.is_complete(run.path) and (run.path / name).is_file():
            verify_run(run.path, [layout.RUN_FILE])
            frames.append(pd.read_csv(run.path / name).assign(run=str(run.path)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _spread(values: pd.Series) -> str:
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} [{values.min():.2f}, {values.max():.2f}]"


def _pm_label(pm: float) -> str:
    return f"Pm {pm:.3g}%"


def instability_section(experiment: Path, plots_dir: Path, kind: str) -> ReportSection | None:
    from lottery_ticket.analysis.plots import Plot, _new_figure, save_figure

    table = _tables(experiment, kind, layout.INSTABILITY_TABLE)
    if table.empty:
        return None
    rows = []
    groups = table.groupby(["level", "k"], sort=True)
    for (level, k), group in groups:
        test = group[group["split"] == "test"]["barrier"]
        train = group[group["split"] == "train"]["barrier"]
        rows.append([str(level), f"{group['pm'].iloc[0]:.1f}", str(k), str(len(test)), _spread(test),
                     _spread(train), "yes" if test.max() < 2.0 else "no"])
    plots = []
    plots_dir.mkdir(parents=True, exist_ok=True)

    test = table[table["split"] == "test"]
    fig = _new_figure()
    ax = fig.subplots()
    for _, group in test.groupby("level", sort=True):
        by_k = group.groupby("k")["barrier"]
        mean, low, high = by_k.mean(), by_k.min(), by_k.max()
        ax.errorbar(mean.index, mean.values, yerr=[mean.values - low.values, high.values - mean.values],
                    marker="o", capsize=3, label=_pm_label(group["pm"].iloc[0]))
    ax.axhline(2.0, color="gray", linestyle="--", linewidth=1, label="stable below 2%")
    ax.set_xlabel("rewind iteration k")
    ax.set_ylabel("test error barrier (percentage points)")
    ax.grid(True)
    ax.legend()
    png, svg = save_figure(fig, plots_dir / "instability")
    plots.append(Plot("instability", "Instability vs. rewind iteration",
                      "Test error barrier height (max over the linear path between two copies trained from "
                      "iteration k with different data orders, minus the mean of the endpoints' errors; "
                      "Frankle et al. 2020) per level; points are means, bars the min and max over pairs "
                      "and trials; below the dashed line a network counts as stable.", png, svg))

    curves = []
    for run in sorted(set(table["run"])):
        for _, row in table[(table["run"] == run) & (table["split"] == "test")].iterrows():
            record = read_json(layout.pair_dir(run, int(row["k"]), int(row["pair"])) / layout.INSTABILITY_RESULT)
            curves.append((int(row["level"]), float(row["pm"]), int(row["k"]), record["alphas"],
                           record["curve"]["test"]["error"]))
    ks = sorted({c[2] for c in curves})[:INTERPOLATION_PANELS]
    fig = _new_figure((4.2 * len(ks), 4.0))
    axes = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axes, ks, strict=True):
        for level in sorted({c[0] for c in curves}):
            mine = [c for c in curves if c[0] == level and c[2] == k]
            if not mine:
                continue
            frame = pd.DataFrame([c[4] for c in mine], columns=mine[0][3])
            ax.plot(frame.columns, frame.mean().values, label=_pm_label(mine[0][1]))
            ax.fill_between(frame.columns, frame.min().values, frame.max().values, alpha=0.2)
        ax.set_title(f"k = {k}")
        ax.set_xlabel("interpolation alpha")
        ax.set_ylabel("test error (%)")
        ax.grid(True)
    axes[0].legend()
    png, svg = save_figure(fig, plots_dir / "instability_interpolation")
    plots.append(Plot("instability_interpolation", "Test error along the linear path between the copies",
                      "Test error of (1 - alpha) W_a + alpha W_b for each level (mean over pairs, band: min "
                      "to max), one panel per rewind iteration k.", png, svg))
    note = ("Instability analysis (Frankle, Dziugaite, Roy & Carbin, ICML 2020): for each level's ticket and "
            "rewind iteration k, two copies trained from the ticket's weights at k with different data "
            "orders, evaluated at evenly spaced points on the line between them. Barrier = max over alpha "
            "of the error minus the mean of the two endpoints' errors, in percentage points, mean [min, "
            "max] over pairs and trials; stable: every pair's test barrier below 2%. Networks with batch "
            "norm have its statistics recomputed on the training data at every interpolated point.")
    header = ["level", "Pm (%)", "k", "pairs", "test barrier", "train barrier", "stable (< 2%)"]
    return ReportSection("Instability (linear mode connectivity)", note, header, rows, plots)


def retraining_section(experiment: Path, plots_dir: Path, kind: str) -> ReportSection | None:
    from lottery_ticket.analysis.plots import Plot, _new_figure, _setup_pm_axis, save_figure

    table = _tables(experiment, kind, layout.RETRAINING_TABLE)
    if table.empty:
        return None
    rows = []
    keys = ["level", "schedule", "method", "t", "cycle"]
    for key, group in table.groupby(keys, sort=True):
        level, schedule, method, t, cycle = key
        rows.append([str(level), schedule, method, str(t), str(cycle), f"{group['pm'].iloc[0]:.1f}",
                     str(len(group)), _spread(100 * group["final_test_accuracy"])])
    plots_dir.mkdir(parents=True, exist_ok=True)
    fig = _new_figure()
    ax = fig.subplots()
    for (method, t), group in table.groupby(["method", "t"], sort=True):
        by_pm = group.groupby("pm")["final_test_accuracy"]
        mean = 100 * by_pm.mean()
        low, high = 100 * by_pm.min(), 100 * by_pm.max()
        ax.errorbar(mean.index, mean.values, yerr=[mean.values - low.values, high.values - mean.values],
                    marker="o", capsize=3, label=f"{method}, t={t}")
    _setup_pm_axis(ax, sorted(table["pm"].unique()))
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(True)
    ax.legend()
    png, svg = save_figure(fig, plots_dir / "retraining")
    plot = Plot("retraining", "Retraining after pruning: accuracy vs. weights remaining",
                "Final test accuracy after pruning and retraining t iterations with each method "
                "(Renda, Frankle & Carbin 2020); points are means, bars the min and max over trials.", png, svg)
    note = ("Retraining after pruning (Renda, Frankle & Carbin, ICLR 2020): the ticket's final weights "
            "pruned by the experiment's strategy, then retrained t iterations by fine-tuning (final weights, "
            "the final learning rate), weight rewinding (weights, optimizer state and schedule position of "
            "iteration T - t) or learning-rate rewinding (final weights, the schedule's last t iterations). "
            "Final test accuracy (%), mean [min, max] over trials.")
    header = ["level", "schedule", "method", "t", "cycle", "Pm (%)", "trials", "final test accuracy"]
    return ReportSection("Retraining after pruning", note, header, rows, [plot])
