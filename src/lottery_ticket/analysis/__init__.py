"""Results analysis: early stopping, the tidy results table, figures and reports.

Public API (figures and reports are imported lazily, so ``import lottery_ticket.analysis``
does not load matplotlib)::

    early_stopping(metrics) -> dict                      # one run's metrics table
    load_results(experiment_dir) -> DataFrame            # one row per run
    load_metrics(experiment_dir, controls=(layout.TICKET,)) -> DataFrame   # long metrics table
    aggregate(df) -> DataFrame                           # mean/std/count per (level, control)
    write_csv(df, path) -> Path
    summary_table(experiment_dir) -> str                 # fixed-width text for the CLI
    make_plots(agg, metrics, out_dir) -> list[Plot]      # PNG + SVG figures
    write_report(experiment_dir, out_dir=None) -> dict[str, Path]
"""

from __future__ import annotations

import importlib

# Imported eagerly: the submodule ``early_stopping`` shares its name with the function, and
# binding the function here (after the submodule import) makes the package attribute the
# function, whatever imports the submodule later.
from lottery_ticket.analysis.early_stopping import early_stopping, read_metrics
from lottery_ticket.analysis.table import (
    aggregate,
    find_runs,
    load_metrics,
    load_results,
    mask_density,
    summary_table,
    write_csv,
)

_LAZY = {
    "make_plots": "plots",
    "Plot": "plots",
    "write_report": "report",
}

__all__ = [
    "Plot",
    "aggregate",
    "early_stopping",
    "find_runs",
    "load_metrics",
    "load_results",
    "make_plots",
    "mask_density",
    "read_metrics",
    "summary_table",
    "write_csv",
    "write_report",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
