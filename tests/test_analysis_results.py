"""Results table, aggregation, figures and reports on hand-made experiment directories."""

from __future__ import annotations

import base64
import io
import json
import math
import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from lottery_ticket.analysis import (
    aggregate,
    find_runs,
    load_metrics,
    load_results,
    mask_density,
    summary_table,
    write_csv,
)
from lottery_ticket.analysis.plots import (
    _pm_ticks,
    choose_levels,
    make_plots,
    plot_early_stop_accuracy,
)
from lottery_ticket.analysis.report import write_report
from lottery_ticket.analysis.table import parse_run_name
from lottery_ticket.errors import LotteryError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ITERATIONS = (0, 100, 200, 300, 400, 500)
HPARAMS = {"training": {"lr": 0.0012, "iterations": 500}, "model": {"name": "lenet"}}

# ------------------------------------------------------------------------------- fixtures
#
# 2 trials x 3 levels x (main, reinit_0).  Masks: fc1 (100 weights) keeps 100/80/64 ones,
# fc2 (20 weights) keeps 20/16/13, so Pm = 100, 80, 77/120*100 = 64.1666...
# Validation loss is minimal at ES = 100 * (1 + trial + level) for main, 500 for reinit;
# test accuracy there is 0.90 + 0.01 * level + 0.001 * trial (main), 0.80 - 0.01 * level
# + 0.002 * trial (reinit); everywhere else the test accuracy is 0.5.
# Final training accuracy (a `train` row at 500) is 0.99 - 0.01 * level.

FC1_ONES = (100, 80, 64)
FC2_ONES = (20, 16, 13)


def expected_pm(level: int) -> float:
    return 100.0 * (FC1_ONES[level] + FC2_ONES[level]) / 120


def es_iteration(trial: int, level: int, control: str) -> int:
    return 100 * (1 + trial + level) if control == "main" else 500


def es_accuracy(trial: int, level: int, control: str) -> float:
    if control == "main":
        return 0.90 + 0.01 * level + 0.001 * trial
    return 0.80 - 0.01 * level + 0.002 * trial


def make_masks(level: int) -> dict[str, torch.Tensor]:
    fc1 = torch.zeros(100)
    fc1[: FC1_ONES[level]] = 1
    fc2 = torch.zeros(20)
    fc2[: FC2_ONES[level]] = 1
    return {"fc1.weight": fc1.reshape(10, 10), "fc2.weight": fc2.reshape(5, 4)}


def write_run(root, trial, level, run, *, complete=True, metrics=True, masks=True):
    """Write one hand-made run directory; returns it."""
    control = "main" if run == "main" else run.rsplit("_", 1)[0]
    d = root / f"trial_{trial}" / f"level_{level}" / run
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({
        "hparams": HPARAMS,
        "run": {"trial": trial, "level": level, "control": control, "run_index": 0,
                "seeds": {}},
        "versions": {"torch": "x"},
    }))
    if masks:
        save_file(make_masks(level), str(d / "masks.safetensors"))
    if metrics:
        es = es_iteration(trial, level, control)
        lines = ["iteration,split,loss,accuracy"]
        for it in ITERATIONS:
            if it:
                lines.append(f"{it},train_batch,0.5,0.7")
            loss = 0.1 if it == es else 1.0 + it / 1000
            acc = es_accuracy(trial, level, control) if it == es else 0.5
            lines.append(f"{it},validation,{loss},0.6")
            lines.append(f"{it},test,{loss},{acc}")
        lines.append(f"500,train,0.01,{0.99 - 0.01 * level}")
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    if complete:
        (d / "COMPLETE").write_text("{}")
    return d


def make_experiment(root, *, experiment_json=True):
    root.mkdir(parents=True, exist_ok=True)
    if experiment_json:
        (root / "experiment.json").write_text(json.dumps(
            {"kind": "lottery", "hparams": HPARAMS, "versions": {"torch": "2.x", "python": "3"}}))
    for trial in range(2):
        for level in range(3):
            for run in ("main", "reinit_0"):
                write_run(root, trial, level, run)
    return root


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return make_experiment(tmp_path_factory.mktemp("analysis") / "exp")


@pytest.fixture(scope="module")
def report(experiment, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(experiment, out)


@pytest.fixture
def partial(tmp_path):
    """The full experiment plus a running run (no COMPLETE, partial metrics), a run without
    metrics or masks yet, and stray files that are not runs."""
    root = make_experiment(tmp_path / "partial")
    write_run(root, 2, 0, "main", complete=False)
    write_run(root, 2, 1, "main", complete=False, metrics=False, masks=False)
    (root / "trial_2" / "level_1" / "main" / "metrics.csv").write_text(
        "iteration,split,loss,accuracy\n0,validation,2.3,0.1\n0,te")
    write_run(root, 2, 2, "main", complete=False, metrics=False, masks=False)
    (root / "trial_2" / "level_2" / "main" / "masks.safetensors").write_bytes(b"garbage")
    (root / "notes.txt").write_text("not a run")
    (root / "plots").mkdir()
    (root / "trial_0" / "level_9").mkdir()
    return root


# ----------------------------------------------------------------------------- table


def test_parse_run_name():
    assert parse_run_name("main") == ("main", 0)
    assert parse_run_name("reinit_2") == ("reinit", 2)
    assert parse_run_name("reuse_sign_3") == ("reuse_sign", 3)
    assert parse_run_name("random_10") == ("random", 10)


def test_pm_from_masks(tmp_path):
    save_file(make_masks(2), str(tmp_path / "m.safetensors"))
    density = mask_density(tmp_path / "m.safetensors")
    assert density["pm"] == pytest.approx(77 / 120 * 100, abs=1e-12)
    assert density["pm_fc1.weight"] == 64.0
    assert density["pm_fc2.weight"] == 65.0
    assert mask_density(tmp_path / "missing.safetensors") == {}


def test_load_results_one_row_per_run(experiment):
    df = load_results(experiment)
    assert len(df) == 12
    assert list(df[["trial", "level", "run"]].itertuples(index=False, name=None))[:4] == [
        (0, 0, "main"), (0, 0, "reinit_0"), (0, 1, "main"), (0, 1, "reinit_0")]
    assert df["complete"].all() and df["has_metrics"].all() and df["has_masks"].all()
    assert set(df["control"]) == {"main", "reinit"}
    assert (df["run_index"] == 0).all()
    for row in df.itertuples():
        assert row.pm == pytest.approx(expected_pm(row.level), abs=1e-12)
        assert row.early_stop_iteration == es_iteration(row.trial, row.level, row.control)
        assert row.early_stop_test_accuracy == pytest.approx(
            es_accuracy(row.trial, row.level, row.control), abs=1e-12)
        assert row.final_iteration == 500
        assert row.final_train_accuracy == pytest.approx(0.99 - 0.01 * row.level)
        assert row.final_train_split == "train"
    assert df.loc[df["level"] == 1, "pm_fc1.weight"].eq(80.0).all()
    assert df.loc[df["level"] == 2, "pm_fc2.weight"].eq(65.0).all()


def test_aggregate_mean_std_count_over_trials(experiment):
    agg = aggregate(load_results(experiment))
    assert list(zip(agg["level"], agg["control"], strict=True)) == [
        (0, "main"), (0, "reinit"), (1, "main"), (1, "reinit"), (2, "main"), (2, "reinit")]
    sd = math.sqrt(0.5)  # sample std of two values one unit apart
    for row in agg.itertuples():
        assert row.runs == 2 and row.trials == 2 and row.complete == 2
        assert row.pm == pytest.approx(expected_pm(row.level), abs=1e-12)
        assert row.early_stop_test_accuracy_count == 2
        if row.control == "main":
            assert row.early_stop_iteration_mean == 100 * (1.5 + row.level)
            assert row.early_stop_iteration_std == pytest.approx(100 * sd, rel=1e-12)
            assert row.early_stop_test_accuracy_mean == pytest.approx(
                0.9005 + 0.01 * row.level, rel=1e-12)
            assert row.early_stop_test_accuracy_std == pytest.approx(0.001 * sd, rel=1e-9)
        else:
            assert row.early_stop_iteration_mean == 500
            assert row.early_stop_iteration_std == 0
            assert row.early_stop_test_accuracy_mean == pytest.approx(
                0.801 - 0.01 * row.level, rel=1e-12)
            assert row.early_stop_test_accuracy_std == pytest.approx(0.002 * sd, rel=1e-9)
            assert row.early_stop_test_accuracy_min == pytest.approx(0.80 - 0.01 * row.level)
            assert row.early_stop_test_accuracy_max == pytest.approx(0.802 - 0.01 * row.level)


def test_aggregate_single_trial_has_nan_std(experiment):
    df = load_results(experiment)
    agg = aggregate(df[df["trial"] == 0])
    assert agg["early_stop_iteration_std"].isna().all()
    assert (agg["early_stop_iteration_count"] == 1).all()
    assert aggregate(df.iloc[0:0]).empty


def test_write_csv_round_trip(experiment, tmp_path):
    df = load_results(experiment)
    path = write_csv(df, tmp_path / "sub" / "results.csv")
    back = pd.read_csv(path)
    assert len(back) == 12
    assert back["early_stop_test_accuracy"].tolist() == df["early_stop_test_accuracy"].tolist()
    assert back["pm"].tolist() == df["pm"].tolist()


def test_summary_table_numbers(experiment):
    text = summary_table(experiment)
    lines = text.splitlines()
    assert "mean±std over 2 trials" in lines[0]
    assert lines[1].split() == ["level", "Pm", "%", "ticket", "acc", "%", "ticket", "ES", "iter",
                                "reinit", "acc", "%", "reinit", "ES", "iter"]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["0"] == ["0", "100", "90.05±0.07", "150±71", "80.10±0.14", "500±0"]
    assert rows["1"] == ["1", "80.0", "91.05±0.07", "250±71", "79.10±0.14", "500±0"]
    assert rows["2"] == ["2", "64.2", "92.05±0.07", "350±71", "78.10±0.14", "500±0"]
    assert len({len(line) for line in lines[1:]}) <= 2  # fixed width (rstrip on the last)


def test_partial_experiment_table(partial):
    df = load_results(partial)
    assert len(df) == 15
    extra = df[df["trial"] == 2].set_index("level")
    assert not extra["complete"].any()
    assert extra.loc[0, "has_metrics"] and extra.loc[0, "early_stop_iteration"] == 300
    assert extra.loc[1, "has_metrics"]  # two rows survive the truncated file
    assert extra.loc[1, "early_stop_iteration"] == 0
    assert math.isnan(extra.loc[1, "early_stop_test_accuracy"])
    assert not extra.loc[2, "has_metrics"] and math.isnan(extra.loc[2, "early_stop_iteration"])
    assert not extra.loc[2, "has_masks"] and math.isnan(extra.loc[2, "pm"])
    assert math.isnan(extra.loc[1, "pm"])
    text = summary_table(partial)
    assert "(3 of 15 runs not included" in text
    assert "mean±std over 2 trials" in text  # the incomplete trial is left out
    assert "mean±std over 2-3 trials" in summary_table(partial, include_incomplete=True)


def test_empty_experiment(tmp_path):
    df = load_results(tmp_path)
    assert df.empty and "early_stop_iteration" in df.columns and "pm" in df.columns
    assert aggregate(df).empty
    assert summary_table(tmp_path) == "no results yet"
    assert find_runs(tmp_path / "missing") == []


def test_load_metrics_long_table(experiment):
    m = load_metrics(experiment)
    assert set(m["control"]) == {"main"}
    assert len(m) == 6 * (len(ITERATIONS) * 3 - 1 + 1)
    both = load_metrics(experiment, controls=None)
    assert set(both["control"]) == {"main", "reinit"}


# ----------------------------------------------------------------------------- plots


def assert_png(data: bytes) -> np.ndarray:
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(image[..., :3].std()) > 0.01  # not a blank canvas
    return image


def test_pm_ticks_and_level_choice():
    assert _pm_ticks([100, 80, 64.1]) == [100, 80, 64.1]
    pms = [100 * 0.8**k for k in range(25)]
    ticks = _pm_ticks(pms)
    assert ticks[0] == 100 and ticks[-1] == pms[-1] and len(ticks) <= 13
    assert choose_levels({0: 100.0, 1: 80.0}) == [0, 1]
    chosen = choose_levels({k: 100 * 0.8**k for k in range(16)}, count=5)
    assert chosen[0] == 0 and chosen[-1] == 15 and len(chosen) == 5


def test_make_plots_writes_every_figure(experiment, tmp_path):
    agg = aggregate(load_results(experiment))
    plots = make_plots(agg, load_metrics(experiment), tmp_path / "plots")
    assert [p.name for p in plots] == [
        "early_stop_iteration", "early_stop_accuracy", "accuracy_curves", "final_accuracy"]
    for plot in plots:
        assert plot.png.parent == tmp_path / "plots"
        assert_png(plot.png.read_bytes())
        svg = plot.svg.read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        assert plot.caption and plot.title
    from_runs = make_plots(load_results(experiment), None, tmp_path / "runs")  # per-run table
    assert [p.name for p in from_runs] == [
        "early_stop_iteration", "early_stop_accuracy", "final_accuracy"]
    fig = plot_early_stop_accuracy(agg, errorbars="minmax")
    (ax,) = fig.axes
    assert ax.get_xlim()[0] > ax.get_xlim()[1]  # Pm decreases to the right
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100%", "80.0%", "64.2%"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["winning ticket",
                                                                    "random reinit"]
    with pytest.raises(ValueError):
        make_plots(agg, None, tmp_path / "bad", errorbars="sem")


# ----------------------------------------------------------------------------- report

IMG_RE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def test_report_files(report):
    for key in ("html", "markdown", "results_csv", "aggregate_csv"):
        assert report[key].is_file() and report[key].stat().st_size > 0
    pngs = sorted(p.name for p in report["plots_dir"].glob("*.png"))
    svgs = sorted(p.name for p in report["plots_dir"].glob("*.svg"))
    assert pngs == ["accuracy_curves.png", "early_stop_accuracy.png", "early_stop_iteration.png",
                    "final_accuracy.png", "layers_remaining.png"]  # (no initial weights: no initial_weights.png)
    assert svgs == [p.replace(".png", ".svg") for p in pngs]
    results = pd.read_csv(report["results_csv"])
    assert len(results) == 12 and results["complete"].all()
    assert not results["path"].str.startswith("/").any()  # portable, relative paths


def test_report_html_images_decode(report):
    page = report["html"].read_text(encoding="utf-8")
    images = IMG_RE.findall(page)
    assert len(images) == 5 == page.count("<img ")  # (the fifth: weights remaining per layer)
    for encoded in images:
        assert_png(base64.b64decode(encoded, validate=True))
    assert 'src="http' not in page and "<link" not in page  # self-contained
    assert page.count("<figcaption>") == 5
    assert "90.05±0.07" in page and "350±71" in page  # summary table
    assert "0.0012" in page and "lenet" in page  # hyperparameters
    assert "Partial experiment" not in page


def test_report_markdown_links_exist(report):
    md = report["markdown"].read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5
    for link in links:
        assert (report["markdown"].parent / link).is_file()
    assert "90.05±0.07" in md and "| level |" in md


def test_report_on_partial_experiment(partial, tmp_path):
    paths = write_report(partial, tmp_path / "out")
    page = paths["html"].read_text(encoding="utf-8")
    assert "Partial experiment: 12 of 15 runs complete, 3 incomplete" in page
    assert "(1 without metrics yet)" in page
    assert "trial_2/level_0/main" in page
    assert len(IMG_RE.findall(page)) == 5  # (with the weights remaining per layer)
    assert len(pd.read_csv(paths["results_csv"])) == 15
    assert "Partial experiment" in paths["markdown"].read_text(encoding="utf-8")


def test_report_without_complete_runs_or_experiment_json(tmp_path):
    root = tmp_path / "exp"
    write_run(root, 0, 0, "main", complete=False)
    write_run(root, 0, 1, "main", complete=False, metrics=False)
    paths = write_report(root)
    assert paths["html"].parent == root
    page = paths["html"].read_text(encoding="utf-8")
    assert "0 of 2 runs complete" in page and "No figures yet" in page
    assert "From trial_0/level_0/main/run.json" in page and "0.0012" in page
    paths = write_report(root, tmp_path / "incl", include_incomplete=True)
    assert len(IMG_RE.findall(paths["html"].read_text(encoding="utf-8"))) >= 2


def test_report_escapes_strings(tmp_path):
    root = tmp_path / "exp"
    write_run(root, 0, 0, "main", complete=False)  # no figures: keeps the test fast
    evil = '<script>alert("x")</script>'
    (root / "experiment.json").write_text(json.dumps({
        "kind": "lottery & <b>", "hparams": {evil: {"name": evil}},
        "versions": {"torch": evil}}))
    page = write_report(root)["html"].read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "lottery &amp; &lt;b&gt;" in page


def test_report_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(LotteryError):
        write_report(tmp_path / "nope")


# ----------------------------------------------------------------------------- issue 12 items 6, 9


def test_report_defaults_to_min_max_error_bars_and_counts_runs(report):
    text = report["markdown"].read_text(encoding="utf-8")
    assert "Error bars in the figures show the minimum and maximum" in text
    assert "| trials | runs |" in text
    assert "minimum validation loss" in text


def test_averages_text_counts_trials_and_control_runs(tmp_path):
    from lottery_ticket.analysis.table import averages_text

    root = make_experiment(tmp_path / "exp")
    for trial in range(2):
        for level in range(3):
            for run in ("reinit_1", "reinit_2"):
                write_run(root, trial, level, run)
    agg = aggregate(load_results(root))
    text = averages_text(agg)
    assert "level 2 (Pm 64.2%): ticket 2 trials; reinit 6 runs (3 per trial, 2 trials)" in text
    assert averages_text(aggregate(load_results(tmp_path / "none"))).endswith("no complete runs yet")


def test_lth_report_prints_the_averages_and_takes_errorbars(tmp_path, capsys):
    from lottery_ticket.cli import main

    root = make_experiment(tmp_path / "exp")
    assert main(["report", str(root)]) == 0
    out = capsys.readouterr().out
    assert "each point averages" in out and "level 0 (Pm 100%): ticket 2 trials; reinit 2 trials" in out
    assert main(["report", str(root), "--errorbars", "std"]) == 0
    assert "show one standard deviation" in (root / "report.md").read_text(encoding="utf-8")


def test_report_says_early_stopping_is_on_the_test_loss_without_a_validation_split(tmp_path):
    root = tmp_path / "novalidation"
    d = root / "trial_0" / "level_0" / "main"
    d.mkdir(parents=True)
    save_file(make_masks(0), str(d / "masks.safetensors"))
    (d / "metrics.csv").write_text("iteration,split,loss,accuracy\n0,validation,,\n0,test,2.0,0.1\n"
                                   "100,validation,,\n100,test,0.5,0.9\n200,validation,,\n200,test,0.7,0.95\n")
    (d / "COMPLETE").write_text("{}")
    paths = write_report(root)
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "minimum test loss: these runs have no validation split" in text
    row = pd.read_csv(paths["results_csv"]).iloc[0]
    assert (row["early_stop_iteration"], row["early_stop_split"], row["early_stop_test_accuracy"]) == (100, "test", 0.9)
