"""Early stopping from hand-made metrics logs (lottery_ticket.analysis.early_stopping)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery_ticket.analysis import early_stopping, read_metrics
from lottery_ticket.analysis.early_stopping import EARLY_STOPPING_KEYS


def log(*rows) -> pd.DataFrame:
    """rows: (iteration, split, loss, accuracy) tuples."""
    return pd.DataFrame(list(rows), columns=["iteration", "split", "loss", "accuracy"])


def evals(iteration, val_loss, test_acc, val_acc=0.5, test_loss=1.0):
    return [(iteration, "validation", val_loss, val_acc), (iteration, "test", test_loss, test_acc)]


def test_minimum_validation_loss_and_test_accuracy_there():
    df = log(*evals(0, 2.3, 0.10), (100, "train_batch", 0.9, 0.70), *evals(100, 0.50, 0.80),
             (200, "train_batch", 0.4, 0.90), *evals(200, 0.30, 0.91),
             (300, "train_batch", 0.2, 0.95), *evals(300, 0.35, 0.93, val_acc=0.9),
             (300, "train", 0.1, 0.97))
    r = early_stopping(df)
    assert r["early_stop_iteration"] == 200
    assert r["early_stop_val_loss"] == 0.30
    assert r["early_stop_val_accuracy"] == 0.5
    assert r["early_stop_test_accuracy"] == 0.91
    assert r["final_test_accuracy"] == 0.93
    assert r["best_test_accuracy"] == 0.93
    assert r["final_train_accuracy"] == 0.97
    assert r["final_train_split"] == "train"
    assert r["final_iteration"] == 300


def test_ties_go_to_the_earliest_iteration():
    df = log(*evals(0, 1.0, 0.1), *evals(100, 0.2, 0.8), *evals(200, 0.2, 0.9),
             *evals(300, 0.2, 0.95))
    r = early_stopping(df)
    assert r["early_stop_iteration"] == 100
    assert r["early_stop_test_accuracy"] == 0.8


def test_ties_earliest_even_when_rows_are_out_of_order():
    df = log(*evals(300, 0.2, 0.95), *evals(100, 0.2, 0.8), *evals(0, 1.0, 0.1),
             *evals(200, 0.2, 0.9))
    assert early_stopping(df)["early_stop_iteration"] == 100


def test_iteration_zero_can_be_the_minimum():
    df = log(*evals(0, 0.1, 0.42), *evals(100, 0.5, 0.3), *evals(200, 0.7, 0.2))
    r = early_stopping(df)
    assert r["early_stop_iteration"] == 0
    assert r["early_stop_test_accuracy"] == 0.42
    assert r["early_stop_val_loss"] == 0.1


def test_nan_validation_losses_are_ignored():
    df = log(*evals(0, 1.0, 0.1), *evals(100, math.nan, 0.99), *evals(200, 0.4, 0.7),
             *evals(300, math.nan, 0.98))
    r = early_stopping(df)
    assert r["early_stop_iteration"] == 200
    assert r["early_stop_test_accuracy"] == 0.7
    assert r["best_test_accuracy"] == 0.99


def test_all_validation_losses_nan_gives_nan_early_stopping():
    df = log(*evals(0, math.nan, 0.1), *evals(100, math.nan, 0.5))
    r = early_stopping(df)
    for key in ("early_stop_iteration", "early_stop_val_loss", "early_stop_test_accuracy"):
        assert math.isnan(r[key])
    assert r["final_test_accuracy"] == 0.5


def test_missing_test_row_at_the_early_stopping_iteration_is_nan():
    df = log(*evals(0, 1.0, 0.1), (100, "validation", 0.2, 0.9), *evals(200, 0.5, 0.8))
    r = early_stopping(df)
    assert r["early_stop_iteration"] == 100
    assert math.isnan(r["early_stop_test_accuracy"])
    assert r["final_test_accuracy"] == 0.8


def test_no_validation_rows_at_all_early_stops_on_the_test_loss():
    """--validation-size 0 (the original-code preset): the minimum *test* loss, stated as such."""
    df = log((0, "test", 1.0, 0.1), (100, "train_batch", 0.5, 0.6), (100, "test", 0.5, 0.7),
             (200, "test", 0.6, 0.75), (200, "validation", math.nan, math.nan))
    r = early_stopping(df)
    assert (r["early_stop_iteration"], r["early_stop_test_accuracy"], r["early_stop_split"]) == (100, 0.7, "test")
    assert math.isnan(r["early_stop_val_loss"]) and math.isnan(r["early_stop_val_accuracy"])
    assert r["final_test_accuracy"] == 0.75
    assert r["final_iteration"] == 200
    assert early_stopping(log(*evals(0, 1.0, 0.1), *evals(100, 0.5, 0.6)))["early_stop_split"] == "validation"


def test_no_validation_or_test_loss_gives_nan_early_stopping():
    df = log((0, "test", math.nan, 0.1), (100, "train_batch", 0.5, 0.6), (100, "test", math.nan, 0.7))
    r = early_stopping(df)
    for key in ("early_stop_iteration", "early_stop_val_loss", "early_stop_val_accuracy",
                "early_stop_test_accuracy"):
        assert math.isnan(r[key])
    assert r["early_stop_split"] == ""
    assert r["final_test_accuracy"] == 0.7
    assert r["final_train_accuracy"] == 0.6
    assert r["final_iteration"] == 100


@pytest.mark.parametrize("frame", [
    pd.DataFrame(),
    pd.DataFrame(columns=["iteration", "split", "loss", "accuracy"]),
    pd.DataFrame({"something": [1, 2]}),
])
def test_empty_or_malformed_tables_give_all_nan(frame):
    r = early_stopping(frame)
    assert all(math.isnan(r[key]) for key in EARLY_STOPPING_KEYS)
    assert r["final_train_split"] == ""


def test_final_train_accuracy_falls_back_to_last_train_batch():
    df = log(*evals(0, 1.0, 0.1), (100, "train_batch", 0.5, 0.6), *evals(100, 0.5, 0.5),
             (200, "train_batch", 0.3, 0.75), *evals(200, 0.4, 0.6))
    r = early_stopping(df)
    assert r["final_train_accuracy"] == 0.75
    assert r["final_train_split"] == "train_batch"


def test_train_row_not_at_the_final_iteration_is_not_final():
    # A resumed/partial log: the full-train evaluation is older than the last iteration.
    df = log(*evals(0, 1.0, 0.1), (100, "train", 0.1, 0.99), (200, "train_batch", 0.3, 0.8),
             *evals(200, 0.4, 0.6))
    r = early_stopping(df)
    assert r["final_train_accuracy"] == 0.8
    assert r["final_train_split"] == "train_batch"


def test_duplicate_rows_last_one_wins():
    df = log(*evals(0, 1.0, 0.1), *evals(100, 0.9, 0.2), *evals(100, 0.3, 0.85),
             *evals(200, 0.5, 0.8))
    r = early_stopping(df)
    assert r["early_stop_iteration"] == 100
    assert r["early_stop_val_loss"] == 0.3
    assert r["early_stop_test_accuracy"] == 0.85


def test_string_cells_as_read_from_csv():
    df = log(("0", "validation", "1.0", "0.1"), ("0", "test", "1.0", "0.1"),
             ("100", "validation", "0.5", "0.6"), ("100", "test", "", "0.65"),
             ("200", "validation", "nan", "0.7"))
    r = early_stopping(df)
    assert r["early_stop_iteration"] == 100
    assert r["early_stop_test_accuracy"] == 0.65
    assert r["final_iteration"] == 200


def test_read_metrics_tolerates_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("iteration,split,loss,accuracy\n0,validation,1.0,0.1\n0,test,1.0,0.1\n"
                    "100,validation,0.5,0.6\n100,test,0.6,0.62\n200,valid")
    df = read_metrics(path)
    assert len(df) == 4
    r = early_stopping(df)
    assert r["early_stop_iteration"] == 100
    assert r["early_stop_test_accuracy"] == 0.62
    assert read_metrics(tmp_path / "missing.csv").empty
    (tmp_path / "empty.csv").write_text("")
    assert read_metrics(tmp_path / "empty.csv").empty


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.none(), st.sampled_from([0.1, 0.2, 0.3, 0.5, 1.0])),
                min_size=1, max_size=12))
def test_matches_brute_force(losses):
    df = log(*[row for i, loss in enumerate(losses)
               for row in evals(100 * i, math.nan if loss is None else loss, i / 100)])
    r = early_stopping(df)
    valid = [(loss, i) for i, loss in enumerate(losses) if loss is not None]
    if not valid:
        assert math.isnan(r["early_stop_iteration"])
        return
    best_loss, best_i = min(valid)  # min over (loss, index): ties -> smallest index
    assert r["early_stop_iteration"] == 100 * best_i
    assert r["early_stop_val_loss"] == best_loss
    assert r["early_stop_test_accuracy"] == best_i / 100
