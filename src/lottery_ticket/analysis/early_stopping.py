"""Early stopping as the paper defines it, computed from one run's ``metrics.csv``.

Frankle & Carbin report two numbers per run: the *early-stopping iteration* (the iteration
of minimum validation loss) and the *test accuracy at that iteration*.  This module computes
them, plus a few end-of-training numbers, from the long-format metrics table that the trainer
writes (columns ``iteration, split, loss, accuracy``; see ``docs/architecture.md``).

Choices (all deliberate, all tested):

* **Ties** in the minimum validation loss go to the **earliest** iteration.
* **NaN validation losses are ignored** (a diverged evaluation never becomes the minimum).
  Infinite losses are ordinary numbers: they simply never win.
* **Iteration 0 counts**: if the untrained network has the lowest validation loss, the
  early-stopping iteration is 0.
* The test accuracy at early stopping is the ``test`` row *at exactly that iteration*; if
  that row is missing the value is NaN (no interpolation, no nearest row).
* **Final training accuracy** is the ``train`` row (full training set) at the final
  iteration when present; otherwise the accuracy of the last ``train_batch`` row (the mean
  over the minibatches since the previous evaluation, an approximation that the trainer
  logs for every run); otherwise NaN.  ``final_train_split`` says which one was used.
* If the same ``(split, iteration)`` appears more than once (a resumed run that re-logged
  an evaluation), the **last** row in file order wins.
* Without a validation split (``--validation-size 0``, as the ``original-code`` preset: the
  original library has none; recognized by validation rows, if any, without a single loss or
  accuracy value, unlike a diverged run whose accuracies are still numbers), early stopping is measured on the
  **test loss** instead: the iteration of minimum test loss, with the same rules; the two
  ``early_stop_val_*`` fields are then NaN and ``early_stop_split`` is ``"test"`` (else
  ``"validation"``; ``""`` when neither split has usable rows, and the early-stopping fields
  are NaN).  The end-of-training fields are computed from whatever rows exist.  Nothing raises
  on missing or malformed rows.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from lottery_ticket.layout.metrics import METRIC_COLUMNS, read_metrics_lines  # noqa: F401  (re-exported)

EARLY_STOPPING_KEYS = (
    "early_stop_iteration",
    "early_stop_val_loss",
    "early_stop_val_accuracy",
    "early_stop_test_accuracy",
    "final_test_accuracy",
    "best_test_accuracy",
    "final_train_accuracy",
    "final_iteration",
)
"""The numeric keys of :func:`early_stopping`'s result, in a stable order."""

_NAN = math.nan


def read_metrics(path: str | Path) -> pd.DataFrame:
    """Read a ``metrics.csv`` robustly into a table (its lines read by
    ``layout.metrics.read_metrics_lines``); an unreadable or missing file gives an empty table.

    The file may be appended to while a run is training, so a last line without its newline
    (a row being written: ``200,validation,0.`` would parse as a loss of 0) is dropped, and
    malformed rows are skipped rather than raising.  ``iteration`` is an integer column,
    ``loss`` and ``accuracy`` floats (empty cells become NaN), ``split`` a string.
    """
    text = read_metrics_lines(path)
    try:
        raw = pd.read_csv(io.StringIO(text), dtype=str, on_bad_lines="skip",
                          keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return empty_metrics()
    return clean_metrics(raw)


def empty_metrics() -> pd.DataFrame:
    """An empty metrics table with the right columns and dtypes."""
    return pd.DataFrame(
        {
            "iteration": pd.Series([], dtype="int64"),
            "split": pd.Series([], dtype="object"),
            "loss": pd.Series([], dtype="float64"),
            "accuracy": pd.Series([], dtype="float64"),
        }
    )


def clean_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    """Coerce a metrics table to the canonical dtypes, dropping rows without an iteration.

    Missing ``loss``/``accuracy`` columns become NaN; a missing ``iteration`` or ``split``
    column gives an empty table.  Row order (file order) is preserved.
    """
    if "iteration" not in metrics.columns or "split" not in metrics.columns:
        return empty_metrics()
    out = pd.DataFrame(
        {
            "iteration": pd.to_numeric(metrics["iteration"], errors="coerce"),
            "split": metrics["split"].astype(str).str.strip(),
        }
    )
    for column in ("loss", "accuracy"):
        if column in metrics.columns:
            out[column] = pd.to_numeric(metrics[column], errors="coerce").astype("float64")
        else:
            out[column] = _NAN
    out = out[out["iteration"].notna()]
    out = out[(out["iteration"] >= 0) & (out["iteration"] == out["iteration"].round())]
    out["iteration"] = out["iteration"].astype("int64")
    return out.reset_index(drop=True)


def _split_rows(metrics: pd.DataFrame, split: str) -> pd.DataFrame:
    """Rows of one split, one per iteration (last in file order wins), sorted by iteration."""
    rows = metrics[metrics["split"] == split]
    rows = rows.drop_duplicates(subset="iteration", keep="last")
    return rows.sort_values("iteration", kind="stable")


def _value_at(rows: pd.DataFrame, iteration: int, column: str) -> float:
    hit = rows.loc[rows["iteration"] == iteration, column]
    return float(hit.iloc[-1]) if len(hit) else _NAN


def early_stopping(metrics: pd.DataFrame) -> dict:
    """Early-stopping and end-of-training numbers for one run.

    ``metrics`` has the columns ``iteration, split, loss, accuracy`` (as in
    ``metrics.csv``; it is cleaned with :func:`clean_metrics` first, so strings are fine).

    Returns a dict with:

    * ``early_stop_iteration``: iteration of minimum validation loss (ties -> earliest,
      NaN losses ignored, iteration 0 included); an ``int``; without validation rows the
      minimum test loss, NaN without either.
    * ``early_stop_split``: ``"validation"``, ``"test"`` (no validation split) or ``""``.
    * ``early_stop_val_loss`` / ``early_stop_val_accuracy``: validation loss and accuracy
      there.
    * ``early_stop_test_accuracy``: test accuracy at that iteration, NaN if that test row is
      missing.
    * ``final_test_accuracy``: accuracy of the test row with the largest iteration.
    * ``best_test_accuracy``: the maximum test accuracy over all test rows (an oracle number,
      reported for comparison only; the paper's number is the early-stopping one).
    * ``final_train_accuracy`` and ``final_train_split`` (``"train"``, ``"train_batch"`` or
      ``""``): see the module docstring.
    * ``final_iteration``: the largest iteration in the table (any split).
    """
    metrics = clean_metrics(metrics)
    result: dict = {key: _NAN for key in EARLY_STOPPING_KEYS}
    result["final_train_split"] = ""
    result["early_stop_split"] = ""
    if metrics.empty:
        return result

    result["final_iteration"] = int(metrics["iteration"].max())

    validation = _split_rows(metrics, "validation")
    # An empty validation split logs NaN loss *and* accuracy; a diverged run still has accuracies.
    no_split = not (validation["loss"].notna().any() or validation["accuracy"].notna().any())
    validation = validation[validation["loss"].notna()]
    test = _split_rows(metrics, "test")

    if not validation.empty:
        # Sorted by iteration, so idxmin's first occurrence is the earliest tie.
        best = validation.loc[validation["loss"].idxmin()]
        iteration = int(best["iteration"])
        result["early_stop_split"] = "validation"
        result["early_stop_iteration"] = iteration
        result["early_stop_val_loss"] = float(best["loss"])
        result["early_stop_val_accuracy"] = float(best["accuracy"])
        result["early_stop_test_accuracy"] = _value_at(test, iteration, "accuracy")
    elif no_split and test["loss"].notna().any():  # no validation split: on the test loss
        usable = test[test["loss"].notna()]
        best = usable.loc[usable["loss"].idxmin()]
        result["early_stop_split"] = "test"
        result["early_stop_iteration"] = int(best["iteration"])
        result["early_stop_test_accuracy"] = float(best["accuracy"])

    if not test.empty:
        result["final_test_accuracy"] = float(test["accuracy"].iloc[-1])
        best_test = test["accuracy"].max()  # skips NaN; NaN when all are NaN
        result["best_test_accuracy"] = float(best_test)

    train = _split_rows(metrics, "train")
    train_at_end = train[train["iteration"] == result["final_iteration"]]
    if not train_at_end.empty:
        result["final_train_accuracy"] = float(train_at_end["accuracy"].iloc[-1])
        result["final_train_split"] = "train"
    else:
        batches = _split_rows(metrics, "train_batch")
        if not batches.empty:
            result["final_train_accuracy"] = float(batches["accuracy"].iloc[-1])
            result["final_train_split"] = "train_batch"
    return result
