"""The tidy results table: one row per run of an experiment directory, and its aggregates.

Reads the layout of ``docs/architecture.md`` through ``lottery_ticket.layout`` (its one owner):
every run directory of an experiment, with its run.json, metrics.csv, masks and COMPLETE.

Everything here works on a *running* experiment: a run directory without ``metrics.csv``
gets NaN metrics, one without ``masks.safetensors`` gets NaN Pm, one without ``COMPLETE``
gets ``complete=False``; unreadable files of a run that is not complete are treated as
missing.  The files read from a complete run (``run.json``, ``metrics.csv``,
``masks.safetensors``) are first checked against the SHA-256 digests its ``COMPLETE`` recorded
(``store.verify_run``): a damaged one is a ``LotteryError`` naming it, never numbers computed
from it.  Runs completed before digests were recorded are read unchecked.  Nothing is
unpickled: masks are read with ``safetensors.torch.load_file``.

Accuracies are fractions in [0, 1] as the trainer logs them; the text table prints them as
percentages.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lottery_ticket import layout
from lottery_ticket.analysis.early_stopping import (
    EARLY_STOPPING_KEYS,
    early_stopping,
    read_metrics,
)
from lottery_ticket.analysis.stats import spread
from lottery_ticket.layout import RunDir, find_runs  # noqa: F401  (re-exported: the layout owns them)
from lottery_ticket.layout import kind_sort_key as control_sort_key
from lottery_ticket.layout import run_kind as parse_run_name  # noqa: F401  (re-exported)

CONTROL_ORDER = layout.RUN_KINDS
"""Known run kinds, in display order (`layout.RUN_KINDS`); unknown kinds sort after these, alphabetically."""

METRICS = EARLY_STOPPING_KEYS
"""The per-run numeric columns that :func:`aggregate` summarizes."""

BASE_COLUMNS = (
    "trial",
    "level",
    "run",
    "control",
    "run_index",
    "complete",
    "has_metrics",
    "has_masks",
    "pm",
    *METRICS,
    "final_train_split",
    "early_stop_split",
    "path",
)

SPREAD_COLUMNS = ("mean", "std", "min", "max", "count", "ci_low", "ci_high")
"""The columns :func:`aggregate` gives each metric (``<metric>_<column>``)."""
SPREAD_FIELDS = {"count": "n"}  # column -> `stats.Spread` field, where they differ


def mask_density(masks_path: str | Path) -> dict[str, float]:
    """Percent of weights remaining from a ``masks.safetensors`` file.

    Returns ``{"pm": overall, "pm_<tensor name>": per tensor, ...}`` where overall counts all
    tensors together (100 * ones / size).  A missing or unreadable file gives ``{}``.
    """
    from lottery_ticket.analysis.masks import remaining_percent
    from lottery_ticket.store import load_tensors

    try:
        masks = load_tensors(masks_path)
    except Exception:  # missing, truncated or not a safetensors file: treat as absent
        return {}
    return remaining_percent(masks)


def run_row(run: RunDir) -> dict:
    """The results-table row of one run directory (never raises on missing files; raises
    LotteryError on a damaged file of a complete run)."""
    from lottery_ticket.layout.files import verify_run

    verify_run(run.path, [layout.RUN_FILE, layout.METRICS, layout.MASKS])
    metrics_path = run.path / layout.METRICS
    masks_path = run.path / layout.MASKS
    row: dict = {
        "trial": run.trial,
        "level": run.level,
        "run": run.run,
        "control": run.control,
        "run_index": run.run_index,
        "complete": layout.is_complete(run.path),
        "has_metrics": False,
        "has_masks": False,
        "path": str(run.path),
    }
    density = mask_density(masks_path) if masks_path.is_file() else {}
    row["has_masks"] = bool(density)
    row["pm"] = density.pop("pm", math.nan)
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else None
    row["has_metrics"] = metrics is not None and not metrics.empty
    row.update(early_stopping(metrics) if metrics is not None else early_stopping(pd.DataFrame()))
    row.update(density)
    return row


def load_results(experiment_dir: str | Path) -> pd.DataFrame:
    """One tidy row per run directory of an experiment.

    Columns: ``trial, level, run, control, run_index, complete, has_metrics, has_masks, pm``,
    the metrics of :func:`~lottery_ticket.analysis.early_stopping.early_stopping`
    (``early_stop_iteration, early_stop_val_loss, early_stop_val_accuracy,
    early_stop_test_accuracy, final_test_accuracy, best_test_accuracy, final_train_accuracy,
    final_iteration``), ``final_train_split``, ``early_stop_split``, ``path``, then ``pm_<tensor name>`` per
    prunable tensor.  Runs with missing files are kept, with NaN where data is missing.
    An experiment without runs gives an empty table with these columns.
    """
    rows = [run_row(run) for run in find_runs(experiment_dir)]
    df = pd.DataFrame(rows, columns=None if rows else list(BASE_COLUMNS))
    layer_columns = sorted(c for c in df.columns if c.startswith("pm_"))
    df = df.reindex(columns=[*BASE_COLUMNS, *layer_columns])
    for column in ("trial", "level", "run_index"):
        df[column] = df[column].astype("int64")
    for column in ("complete", "has_metrics", "has_masks"):
        df[column] = df[column].astype(bool)
    for column in ("pm", *METRICS, *layer_columns):
        df[column] = df[column].astype("float64")
    for column in ("final_train_split", "early_stop_split"):
        df[column] = df[column].fillna("").astype(str)
    return df.reset_index(drop=True)


def load_metrics(
    experiment_dir: str | Path,
    *,
    controls: Iterable[str] | None = (layout.TICKET,),
    complete_only: bool = False,
) -> pd.DataFrame:
    """The metrics of many runs in one long table (for training curves).

    Columns ``trial, level, run, control, run_index, iteration, split, loss, accuracy``.
    ``controls=None`` reads every run; ``complete_only`` skips runs without ``COMPLETE``.
    A complete run's ``metrics.csv`` is checked against its recorded digest first.
    """
    from lottery_ticket.layout.files import verify_run

    wanted = None if controls is None else set(controls)
    frames = []
    for run in find_runs(experiment_dir):
        if wanted is not None and run.control not in wanted:
            continue
        if complete_only and not layout.is_complete(run.path):
            continue
        metrics_path = run.path / layout.METRICS
        if not metrics_path.is_file():
            continue
        verify_run(run.path, [layout.METRICS])
        metrics = read_metrics(metrics_path)
        if metrics.empty:
            continue
        metrics = metrics.drop_duplicates(subset=["split", "iteration"], keep="last")
        metrics.insert(0, "run_index", run.run_index)
        metrics.insert(0, "control", run.control)
        metrics.insert(0, "run", run.run)
        metrics.insert(0, "level", run.level)
        metrics.insert(0, "trial", run.trial)
        frames.append(metrics)
    columns = ["trial", "level", "run", "control", "run_index", "iteration", "split", "loss",
               "accuracy"]
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype=float) for c in columns})
    return pd.concat(frames, ignore_index=True)[columns]


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count over trials, per (level, control).

    Runs of one control at one level are pooled: with several controls per trial
    (runs 0 and 1 of ``reinit``) all of them count.  Filter ``df`` first to choose which runs
    are included (e.g. ``df[df.complete]``).

    Columns: ``level, control, runs`` (rows pooled), ``trials`` (distinct trials),
    ``complete`` (complete runs), ``pm`` (mean Pm), ``pm_std``, then for each metric ``m`` of
    :data:`METRICS`: ``m_mean``, ``m_std`` (sample standard deviation, ddof=1, so NaN for a
    single value), ``m_min``, ``m_max``, ``m_count`` (non-NaN values), then the mean of each
    ``pm_<tensor>``.  NaN values are skipped.  Sorted by level, then ticket first.
    """
    layer_columns = [c for c in df.columns if c.startswith("pm_")]
    out_columns = ["level", "control", "runs", "trials", "complete", "pm", "pm_std"]
    for metric in METRICS:
        out_columns += [f"{metric}_{s}" for s in SPREAD_COLUMNS]
    out_columns += layer_columns
    if df.empty:
        return pd.DataFrame(columns=out_columns)

    records = []
    for (level, control), group in df.groupby(["level", "control"], sort=False):
        record: dict = {
            "level": int(level),
            "control": control,
            "runs": len(group),
            "trials": int(group["trial"].nunique()),
            "complete": int(group["complete"].sum()) if "complete" in group else 0,
            "pm": _mean(group["pm"]),
            "pm_std": _std(group["pm"]),
        }
        for metric in METRICS:
            values = spread(group[metric] if metric in group else ())
            record.update({f"{metric}_{s}": getattr(values, SPREAD_FIELDS.get(s, s)) for s in SPREAD_COLUMNS})
        for column in layer_columns:
            record[column] = _mean(group[column])
        records.append(record)
    out = pd.DataFrame(records, columns=out_columns)
    order = sorted(range(len(out)), key=lambda i: (out["level"].iloc[i],
                                                   control_sort_key(out["control"].iloc[i])))
    return out.iloc[order].reset_index(drop=True)


def _mean(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def _std(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV (no index, full float precision), atomically; returns the path."""
    from lottery_ticket.store import write_text_atomic

    path = Path(path)
    write_text_atomic(path, df.to_csv(index=False))
    return path


# ----------------------------------------------------------------------------- text table


def format_pm(pm: float) -> str:
    """Pm as the paper prints it: ``100``, ``51.3``, ``7.0``, ``0.45`` (no % sign)."""
    if pm is None or not np.isfinite(pm):
        return "?"
    if pm >= 99.95:
        return "100"
    if pm >= 1:
        return f"{pm:.1f}"
    if pm >= 0.1:
        return f"{pm:.2f}"
    return f"{pm:.2g}"


def format_mean_std(mean: float, std: float, *, scale: float = 1.0, digits: int = 2) -> str:
    """``"98.12±0.07"``; ``"98.12"`` when the std is NaN (one trial); ``"-"`` when no data."""
    if mean is None or not np.isfinite(mean):
        return "-"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and np.isfinite(std):
        text += f"±{std * scale:.{digits}f}"
    return text


def control_label(control: str) -> str:
    """Short human names for run kinds, used in tables and legends."""
    return {layout.TICKET: "ticket"}.get(control, control)


def summary_rows(agg: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and cell strings of the summary table (shared by the text and HTML views)."""
    controls = sorted(agg["control"].unique(), key=control_sort_key) if len(agg) else []
    header = ["level", "Pm %"]
    for control in controls:
        header += [f"{control_label(control)} acc %", f"{control_label(control)} ES iter"]
    rows = []
    for level in sorted(agg["level"].unique()) if len(agg) else []:
        at_level = agg[agg["level"] == level]
        main = at_level[at_level["control"] == layout.TICKET]
        pm = main["pm"].iloc[0] if len(main) else _mean(at_level["pm"])
        cells = [str(int(level)), format_pm(pm)]
        for control in controls:
            hit = at_level[at_level["control"] == control]
            if hit.empty:
                cells += ["-", "-"]
                continue
            r = hit.iloc[0]
            cells.append(format_mean_std(r["early_stop_test_accuracy_mean"],
                                         r["early_stop_test_accuracy_std"], scale=100.0))
            cells.append(format_mean_std(r["early_stop_iteration_mean"],
                                         r["early_stop_iteration_std"], digits=0))
        rows.append(cells)
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Fixed-width text: left-aligned first column, the rest right-aligned."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=False)]

    def line(cells: list[str]) -> str:
        parts = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in rows]
    return "\n".join(lines)


def trials_text(agg: pd.DataFrame) -> str:
    """``"3 trials"``, or ``"1-3 trials (no ± where only one)"`` when levels differ."""
    if agg.empty:
        return "0 trials"
    lo, hi = int(agg["trials"].min()), int(agg["trials"].max())
    if lo == hi:
        return f"{hi} trial{'s' if hi != 1 else ''}"
    return f"{lo}-{hi} trials (no ± where only one)"


def averages_text(agg: pd.DataFrame) -> str:
    """What each point averages, per level and run kind (the paper: 5 trials per point, 3 control
    runs per trial), e.g. ``level 7 (Pm 21.0%): ticket 5 trials; reinit 15 runs (3 per trial,
    5 trials)``."""
    if agg.empty:
        return "each point averages: no complete runs yet"
    lines = ["each point averages (trials; control runs per trial):"]
    for level in sorted(agg["level"].unique()):
        at_level = agg[agg["level"] == level].sort_values("control", key=lambda c: c.map(control_sort_key))
        parts = []
        for r in at_level.itertuples(index=False):
            runs, trials = int(r.runs), int(r.trials)
            text = f"{control_label(r.control)} {trials} trial{'s' if trials != 1 else ''}"
            if runs != trials:
                per = f"{runs // trials}" if runs % trials == 0 else f"{runs / trials:.1f}"
                text = f"{control_label(r.control)} {runs} runs ({per} per trial, {trials} trial{'s' if trials != 1 else ''})"
            parts.append(text)
        lines.append(f"  level {int(level)} (Pm {format_pm(at_level['pm'].iloc[0])}%): " + "; ".join(parts))
    return "\n".join(lines)


def format_summary(agg: pd.DataFrame) -> str:
    """The fixed-width summary of an :func:`aggregate` table (see :func:`summary_table`)."""
    if agg.empty:
        return "no results yet"
    header, rows = summary_rows(agg)
    note = ("test accuracy at early stopping (%) and early-stopping iteration, "
            f"mean±std over {trials_text(agg)}")
    return note + "\n" + format_table(header, rows)


def summary_table(experiment_dir: str | Path, *, include_incomplete: bool = False) -> str:
    """A short fixed-width table for the end of ``lth lottery``.

    One line per level: level, Pm %, then for the ticket and each control present the test
    accuracy at early stopping (percent, mean±std over trials) and the early-stopping
    iteration (mean±std).  Only complete runs count unless ``include_incomplete``; a
    trailing line says how many runs were left out.
    """
    df = load_results(experiment_dir)
    used = df if include_incomplete else df[df["complete"]]
    used = used[used["has_metrics"]]
    text = format_summary(aggregate(used))
    left_out = len(df) - len(used)
    if left_out:
        text += f"\n({left_out} of {len(df)} runs not included: incomplete or without metrics)"
    return text
