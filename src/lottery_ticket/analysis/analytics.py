"""The report's analytics sections: confidence intervals, ticket vs control paired by trial, weights
remaining per layer, mask overlap, surviving initial weights, efficiency. Each section is a table
(and figures) computed by `stats`, `masks` and `efficiency`; `report.py` renders them as they are,
and their CSV files are written beside `aggregate.csv`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from lottery_ticket import layout
from lottery_ticket.analysis import efficiency
from lottery_ticket.analysis.masks import (
    layer_table,
    overlap_table,
    surviving_initial_weights,
    ticket_masks,
)
from lottery_ticket.analysis.plots import Plot, choose_levels, save_figure
from lottery_ticket.analysis.stats import paired_comparison
from lottery_ticket.analysis.table import control_label, control_sort_key, format_pm, write_csv
from lottery_ticket.branches import (
    ReportSection as Section,  # (one section type for every report part)
)
from lottery_ticket.errors import LotteryError

CI_METRICS = (("early_stop_iteration", "ES iteration", 1.0, 0), ("early_stop_test_accuracy", "test acc @ES %", 100.0, 2),
              ("final_test_accuracy", "final test acc %", 100.0, 2), ("final_train_accuracy", "final train acc %", 100.0, 2))


def number(value: float, digits: int = 2, scale: float = 1.0) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value * scale:,.{digits}f}"


def with_range(mean: float, low: float, high: float, digits: int = 2, scale: float = 1.0) -> str:
    """``"90.05 [90.00, 90.10]"``: the mean and the range; the mean alone when the range is one value."""
    text = number(mean, digits, scale)
    if text != "-" and np.isfinite(low) and np.isfinite(high) and number(low, digits, scale) != number(high, digits, scale):
        text += f" [{number(low, digits, scale)}, {number(high, digits, scale)}]"
    return text


def interval(low: float, high: float, digits: int, scale: float = 1.0) -> str:
    return f"[{number(low, digits, scale)}, {number(high, digits, scale)}]" if np.isfinite(low) else "n < 3"


def confidence_section(agg: pd.DataFrame) -> Section:
    header = ["level", "run kind", "Pm %", "n"] + [label for _, label, _, _ in CI_METRICS]
    rows = []
    for r in agg.to_dict("records"):
        rows.append([str(r["level"]), control_label(r["control"]), format_pm(r["pm"]),
                     str(int(r["early_stop_iteration_count"]))]
                    + [interval(r[f"{m}_ci_low"], r[f"{m}_ci_high"], digits, scale) for m, _, scale, digits in CI_METRICS])
    return Section(
        "95% confidence intervals", "Student t interval of the mean over the n runs of each point, mean ± "
        "t(0.975, n-1)·s/√n (s: sample standard deviation); given only where n ≥ 3 (t-based rather than "
        "normal because n is small: t(0.975, 2) = 4.30, not 1.96). It assumes roughly normal variation "
        "between trials; the ranges in the table above assume nothing.", header, rows)


def paired_table(results: pd.DataFrame, metric: str = "early_stop_iteration") -> pd.DataFrame:
    """Per level and control kind: control minus ticket of `metric`, paired by trial (the control's
    runs in a trial averaged first); see `stats.paired_comparison`."""
    rows = []
    for level in sorted(results["level"].unique()):
        at_level = results[results["level"] == level]
        ticket_rows = at_level[at_level["control"] == layout.TICKET]
        ticket = dict(zip(ticket_rows["trial"], ticket_rows[metric], strict=True))
        for control in sorted(set(at_level["control"]) - {layout.TICKET}, key=control_sort_key):
            runs = at_level[at_level["control"] == control]
            per_trial = {t: list(group[metric]) for t, group in runs.groupby("trial")}
            paired = paired_comparison(ticket, per_trial)
            if paired.n == 0:
                continue
            rows.append({"level": int(level), "control": control, "metric": metric, **paired.__dict__})
    return pd.DataFrame(rows)


def paired_section(paired: pd.DataFrame, pm_by_level: dict[int, float]) -> Section:
    header = ["level", "Pm %", "control", "trials", "control - ticket (mean)", "95% CI", "min, max",
              "ticket earlier / later / tie", "sign test p"]
    rows = [[str(r["level"]), format_pm(pm_by_level.get(r["level"], math.nan)), control_label(r["control"]),
             str(r["n"]), number(r["mean_difference"], 0), interval(r["ci_low"], r["ci_high"], 0),
             f"{number(r['min_difference'], 0)}, {number(r['max_difference'], 0)}",
             f"{r['control_later']} / {r['control_earlier']} / {r['ties']}", f"{r['sign_test_p']:.3g}"]
            for r in paired.to_dict("records")]
    return Section(
        "Ticket vs control: early-stopping iteration, paired by trial",
        "For each trial, the control's early-stopping iteration (the mean of its runs in that trial) minus "
        "the ticket's: positive means the ticket stopped earlier (learned faster). Mean of the differences "
        "with its paired t 95% interval (n ≥ 3), their range, how many trials the ticket stopped earlier / "
        "later / at the same iteration, and the two-sided exact sign test over the non-tied trials (with 3 "
        "trials its smallest possible p is 0.25, with 5 it is 0.0625).", header, rows)


def layers_section(layers: pd.DataFrame, plots: list[Plot]) -> Section:
    tensors = list(dict.fromkeys(layers["tensor"]))
    header = ["level", *[("Pm % (all)" if t == "all" else t) for t in tensors]]
    rows = []
    for level, group in layers.groupby("level"):
        by_tensor = {r["tensor"]: r for r in group.to_dict("records")}
        rows.append([str(level)] + [with_range(by_tensor[t]["mean"], by_tensor[t]["min"], by_tensor[t]["max"], 2)
                                    if t in by_tensor else "-" for t in tensors])
    return Section("Weights remaining per layer", "Percent of each prunable tensor's weights the tickets keep "
                   "(mean over trials, [min, max] where trials differ).", header, rows, plots)


def overlap_section(overlap: pd.DataFrame) -> Section:
    header = ["level", "Pm %", "pairs", "Jaccard between trials", "random masks (expected)", "trials",
              "Jaccard with previous level"]
    rows = [[str(r["level"]), format_pm(r["pm"]), str(r["pairs"]),
             with_range(r["between_trials_mean"], r["between_trials_min"], r["between_trials_max"], 3),
             number(r["random_baseline"], 3), str(r["trials"]),
             with_range(r["consecutive_mean"], r["consecutive_min"], r["consecutive_max"], 3)]
            for r in overlap.to_dict("records")]
    return Section(
        "Mask overlap", "Jaccard index |A∩B| / |A∪B| of the tickets' kept weights (all prunable tensors "
        "together): between the tickets of every pair of trials at a level (mean [min, max] over pairs), "
        "beside the index two independent random masks of the same density would have (pq / (p + q - pq)); "
        "and between each trial's ticket and its previous level's (mean [min, max] over trials; with "
        "iterative magnitude pruning a level's mask lies inside the previous one, so this is the ratio of "
        "their sizes).", header, rows)


def efficiency_section(table: pd.DataFrame, pm_by_level: dict[int, float]) -> Section:
    header = ["level", "Pm %", "trials", "remaining weights", "parameters", "dense MFLOPs/example",
              "sparse MFLOPs/example", "sparse/dense FLOPs", "dense file bytes", "sparse export bytes",
              "export/dense size"]
    rows = []
    for r in table.to_dict("records"):
        def cell(column, digits=0, scale=1.0, r=r):
            return with_range(r[column], r[f"{column}_min"], r[f"{column}_max"], digits, scale)
        rows.append([str(r["level"]), format_pm(pm_by_level.get(r["level"], math.nan)), str(r["trials"]),
                     cell("remaining_weights"), cell("parameters"), cell("dense_flops", 3, 1e-6),
                     cell("sparse_flops", 3, 1e-6), number(efficiency.ratio(r["sparse_flops"], r["dense_flops"]), 3),
                     cell("dense_bytes"), cell("export_bytes"),
                     number(efficiency.ratio(r["export_bytes"], r["dense_bytes"]), 3)])
    return Section(
        "Efficiency", "Per ticket (mean [min, max] over trials): prunable weights kept; parameters after "
        "pruning (biases and batch-norm parameters included); FLOPs per example counted as 2 per "
        "multiply-accumulate of the Linear and Conv layers (biases, normalization, activations and pooling "
        "not counted), dense and with every pruned weight's multiply-accumulate skipped (arithmetic, not "
        "speed: dense hardware gains nothing from scattered zeros); the state dict's size as an ordinary "
        "safetensors file and as `lth export`'s sparse file (kept values plus a bitmap or indices per "
        "tensor).", header, rows)


def report_sections(root: Path, used: pd.DataFrame, agg: pd.DataFrame, out: Path) -> tuple[list[Section], dict[str, Path]]:
    """Every analytics section of the report (those without data left out) and the CSV files written."""
    sections, files = [], {}
    if agg.empty:
        return sections, files
    sections.append(confidence_section(agg))
    main = agg[agg["control"] == layout.TICKET]
    pm_by_level = {int(r["level"]): float(r["pm"]) for r in main.to_dict("records")}
    paired = paired_table(used)
    if not paired.empty:
        files["paired_csv"] = write_csv(paired, out / layout.PAIRED_CSV)
        sections.append(paired_section(paired, pm_by_level))
    masks = ticket_masks(root, used)
    if not masks:
        return sections, files
    plots_dir = out / layout.PLOTS
    layers = layer_table(masks)
    files["layers_csv"] = write_csv(layers, out / layout.LAYERS_CSV)
    from lottery_ticket.analysis.analytics_plots import plot_initial_weights, plot_layer_remaining

    plots = [_save(plot_layer_remaining(layers), plots_dir, "layers_remaining", "Weights remaining per layer",
                   "Percent of each layer's weights the tickets keep vs Pm (mean over trials, min/max bars); "
                   "the dashed line is all prunable weights together.")]
    levels = choose_levels(pm_by_level, count=4)
    samples = surviving_initial_weights(root, masks, levels)
    if samples:
        plots.append(_save(
            plot_initial_weights(samples, pm_by_level), plots_dir, "initial_weights",
            "Initial values of the surviving weights",
            "Normalized histograms (area 1 per layer) of the initial values (level 0's initialization) of the "
            "weights each level's tickets keep, pooled over trials, as Frankle & Carbin (2019) Appendix F.1 "
            "(Figure 13 of arXiv v5): as Pm falls, small initial magnitudes are pruned away and the "
            "distribution becomes bimodal."))
    sections.append(layers_section(layers, plots))
    overlap = overlap_table(masks)
    files["overlap_csv"] = write_csv(overlap, out / layout.OVERLAP_CSV)
    sections.append(overlap_section(overlap))
    try:
        model, input_shape = efficiency.experiment_model(root)
        table = efficiency.efficiency_table(model, input_shape, masks)
    except (LotteryError, KeyError) as e:
        sections.append(Section("Efficiency", f"Not computed: the experiment's network could not be rebuilt "
                                f"from its experiment.json or does not match its masks ({e}).", [], []))
        return sections, files
    files["efficiency_csv"] = write_csv(table, out / layout.EFFICIENCY_CSV)
    sections.append(efficiency_section(table, pm_by_level))
    return sections, files


def _save(fig, plots_dir: Path, name: str, title: str, caption: str) -> Plot:
    png, svg = save_figure(fig, plots_dir / name)
    return Plot(name, title, caption, png, svg)
