"""Every user mistake in a flag or a hand-edited record: one `error:` line naming the flag or the
file, exit 2, checked before anything is written (issue 17, items 6-8).

Every CLI call runs `lottery_ticket.cli.main` in this process: anything but a LotteryError would
raise here with its traceback and fail the test.
"""

import json
import shutil
from dataclasses import fields

import pytest
from conftest import lth
from test_faults import one_line_error, snapshot

from lottery_ticket import hparams as H
from lottery_ticket import layout
from lottery_ticket.errors import LotteryError

SMALL = ["--model", "fc_100", "--iterations", "200", "--eval-every", "100", "--quiet"]

# (extra flags, text the one error line must contain); each given to both `train` and `lottery`
BAD_FLAGS = [
    (["--lr-gamma", "-1"], "--lr-gamma"),
    (["--lr-gamma", "0"], "--lr-gamma"),
    (["--lr-gamma", "nan"], "--lr-gamma"),
    (["--lr-gamma", "inf"], "--lr-gamma"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.1"], "--lr"),
    (["--momentum", "nan"], "--momentum"),
    (["--momentum", "1"], "--momentum"),
    (["--momentum", "-0.5"], "--momentum"),
    (["--weight-decay", "inf"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--weight-decay", "-0.0001"], "--weight-decay"),
    (["--dropout", "nan"], "--dropout"),
    (["--dropout", "1"], "--dropout"),
    (["--dropout", "-0.1"], "--dropout"),
    (["--dropout", "0.5"], "dropout is not supported"),  # fully-connected model: after the range
    (["--fc-fraction", "1"], "--fc-fraction"),
    (["--fc-fraction", "nan"], "--fc-fraction"),
    (["--conv-fraction", "-0.1"], "--conv-fraction"),
    (["--output-fraction", "inf"], "--output-fraction"),
    (["--global-fraction", "1.5"], "--global-fraction"),
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", str(2**64)], "--batch-size"),
    (["--validation-size", "-1"], "--validation-size"),
    (["--split-seed", str(2**70)], "--split-seed"),
    (["--split-seed", "-1"], "--split-seed"),
    (["--iterations", "-1"], "--iterations"),
    (["--iterations", str(2**64)], "--iterations"),
    (["--iterations", "0"], "--iterations"),
    (["--epochs", "-1"], "--epochs"),
    (["--eval-every", "0"], "--eval-every"),
    (["--warmup-iterations", "-1"], "--warmup-iterations"),
    (["--rewind-iteration", "-1"], "--rewind-iteration"),
    (["--lr-milestones", "10,x"], "--lr-milestones"),
    (["--optimizer", "adagrad"], "--optimizer"),
    (["--strategy", "no_such_strategy"], "--strategy"),
    (["--normalization", "zca"], "--normalization"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--init", "zeros"], "--init"),
    (["--model", "resnet9000"], "unknown model"),
    (["--never-prune", "typo"], "--never-prune"),
    (["--strategy", "global", "--never-prune", "typo"], "--never-prune"),
    (["--checkpoint-seconds", "nan"], "--checkpoint-seconds"),
    (["--checkpoint-seconds", "inf"], "--checkpoint-seconds"),
    (["--checkpoint-seconds", "0"], "--checkpoint-seconds"),
    (["--checkpoint-seconds", "-1"], "--checkpoint-seconds"),
    (["--threads", "0"], "--threads"),
    (["--threads", str(10**6)], "--threads"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**70)], "--seed"),
]

LOTTERY_ONLY = [
    (["--levels", "-1"], "--levels"),
    (["--levels", str(10**9)], "--levels"),
    (["--trials", "0"], "--trials"),
    (["--trials", str(10**9)], "--trials"),
    (["--workers", "0"], "--workers"),
    (["--workers", str(10**6)], "--workers"),
    (["--batched", "--model", "conv2", "--dataset", "mnist", "--dropout", "0.5"], "--batched"),
    (["--batched", "--augment"], "--batched"),
    (["--batched", "--permute-labels"], "--batched"),
]

TRAIN_ONLY = [
    (["--trial", "-1"], "--trial"),
    (["--trial", str(2**70)], "--trial"),
]

CASES = [("train", *case) for case in BAD_FLAGS + TRAIN_ONLY] + [("lottery", *case) for case in BAD_FLAGS + LOTTERY_ONLY]


@pytest.mark.parametrize("command, flags, needle", CASES, ids=[f"{c}{' '.join(f)}" for c, f, _ in CASES])
def test_bad_flag_is_one_line_and_writes_nothing(tmp_path, capsys, command, flags, needle):
    out = tmp_path / "out"
    assert lth(command, *SMALL, *flags, "--output-dir", out, "--data-root", tmp_path / "no-data") == 2
    one_line_error(capsys.readouterr().err, needle)
    assert list(tmp_path.iterdir()) == []  # no run/experiment directory, no data download


@pytest.mark.parametrize("flags", [["--never-prune", "typo"], ["--dropout", "0.5"],
                                   ["--strategy", "global", "--never-prune", "fc.weight,typo"],
                                   ["--batched", "--model", "conv2", "--dataset", "mnist", "--dropout", "0.5"]])
def test_mistake_writes_nothing_so_the_fixed_command_runs_in_the_same_directory(tmp_path, capsys, mnist_root, flags):
    exp = tmp_path / "exp"
    common = ["lottery", *SMALL, "--levels", 1, "--threads", 1, "--output-dir", exp, "--data-root", mnist_root]
    assert lth(*common, *flags) == 2
    one_line_error(capsys.readouterr().err)
    assert not exp.exists()
    assert lth(*common) == 0
    assert layout.is_complete(layout.run_dir(exp, 0, 1))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist_root):
    """A finished one-trial, one-level experiment with one reinit control at level 1."""
    exp = tmp_path_factory.mktemp("validation") / "exp"
    assert lth("lottery", *SMALL, "--levels", 1, "--threads", 1, "--output-dir", exp, "--data-root", mnist_root) == 0
    assert lth("reinit", "--experiment", exp, "--levels", 1, "--quiet", "--threads", 1, "--data-root", mnist_root) == 0
    return exp, mnist_root


BAD_RECORDS = [
    {},
    [],
    "text",
    {"hparams": {}},  # no seed
    {"hparams": [], "seed": 0},
    {"hparams": {"training": 5}, "seed": 0},
    {"hparams": {"training": {"lr": "fast"}}, "seed": 0},
    {"hparams": {"training": {"lr": -1.0}}, "seed": 0},
    {"hparams": {"training": {"iterations": 200.5}}, "seed": 0},
    {"hparams": {"dataset": {"augment": "yes"}}, "seed": 0},
    {"hparams": {"nonsense": {}}, "seed": 0},
    {"hparams": {}, "seed": 2**70},
    {"hparams": {}, "seed": "0"},
]


@pytest.mark.parametrize("record", BAD_RECORDS, ids=[json.dumps(r)[:40] for r in BAD_RECORDS])
def test_damaged_experiment_record_is_one_line_naming_it(finished, tmp_path, capsys, record):
    original, root = finished
    exp = tmp_path / "exp"
    shutil.copytree(original, exp)
    (exp / layout.EXPERIMENT_FILE).write_text(json.dumps(record))
    before = snapshot(exp)
    for argv in (["lottery", *SMALL, "--levels", 1, "--threads", 1, "--output-dir", exp, "--data-root", root],
                 ["reinit", "--experiment", exp, "--levels", 1, "--quiet", "--threads", 1, "--data-root", root],
                 ["reinit", "--experiment", exp, "--levels", 1, "--quiet", "--batched", "--data-root", root]):
        assert lth(*argv) == 2, argv
        one_line_error(capsys.readouterr().err, str(exp / layout.EXPERIMENT_FILE))
    assert snapshot(exp) == before


@pytest.mark.parametrize("record", [{}, [], {"hparams": {}}, {"run": {}, "hparams": {"training": {"lr": "nan"}}},
                                    {"run": [], "hparams": {}}])
@pytest.mark.parametrize("control", ["main", "reinit"])
def test_damaged_run_record_is_one_line_naming_it(finished, tmp_path, capsys, record, control):
    original, root = finished
    exp = tmp_path / "exp"
    shutil.copytree(original, exp)
    run_file = layout.run_dir(exp, 0, 1, control, 0) / layout.RUN_FILE
    run_file.write_text(json.dumps(record))
    before = snapshot(exp)
    argv = (["lottery", *SMALL, "--levels", 1, "--threads", 1, "--output-dir", exp, "--data-root", root]
            if control == "main" else
            ["reinit", "--experiment", exp, "--levels", 1, "--quiet", "--threads", 1, "--data-root", root])
    assert lth(*argv) == 2
    one_line_error(capsys.readouterr().err, str(run_file))
    assert snapshot(exp) == before


@pytest.mark.parametrize("levels, needle", [("0-300000000", "--levels"), ("1,300000000", "--levels"),
                                            ("2", "no level(s) [2]"), ("0-x", "--levels"), ("3-1", "--levels")])
def test_reinit_levels_are_bounded_before_a_list_is_built(finished, tmp_path, capsys, levels, needle):
    original, root = finished
    exp = tmp_path / "exp"
    shutil.copytree(original, exp)
    before = snapshot(exp)
    assert lth("reinit", "--experiment", exp, "--levels", levels, "--quiet", "--data-root", root) == 2
    one_line_error(capsys.readouterr().err, needle)
    assert snapshot(exp) == before


@pytest.mark.parametrize("flags, needle", [(["--runs", "0"], "--runs"), (["--runs", str(10**9)], "--runs"),
                                           (["--workers", "0"], "--workers"), (["--threads", "0"], "--threads"),
                                           (["--checkpoint-seconds", "nan"], "--checkpoint-seconds")])
def test_bad_reinit_flags_write_nothing(finished, tmp_path, capsys, flags, needle):
    original, root = finished
    exp = tmp_path / "exp"
    shutil.copytree(original, exp)
    before = snapshot(exp)
    assert lth("reinit", "--experiment", exp, "--levels", "0-1", *flags, "--data-root", root) == 2
    one_line_error(capsys.readouterr().err, needle)
    assert snapshot(exp) == before


def test_a_bad_sweep_line_is_refused_before_any_line_runs(tmp_path, capsys):
    argfile = tmp_path / "lines.txt"
    first, bad = tmp_path / "first", tmp_path / "bad"
    argfile.write_text(f"train {' '.join(SMALL)} --output-dir {first}\n"
                       f"train {' '.join(SMALL)} --lr-gamma nan --output-dir {bad}\n")
    assert lth("sweep", argfile, "--workers", 1) == 2
    one_line_error(capsys.readouterr().err, "--lr-gamma")
    assert not first.exists() and not bad.exists()


# --------------------------------------------------------------------------- the declarations


def test_every_numeric_hyperparameter_declares_its_range_and_every_choice_list_is_current():
    from lottery_ticket.data.registry import DATASETS
    from lottery_ticket.models.init import INITIALIZERS

    for section in H.SECTIONS.values():
        for f in fields(section):
            if H._kind(f) in (int, float):
                assert isinstance(f.metadata.get("range"), H.Range), f.name
    assert H._choices(H.ModelHparams.__dataclass_fields__["init"]) == list(INITIALIZERS)
    assert H._choices(H.DatasetHparams.__dataclass_fields__["dataset"]) == DATASETS.names()


def test_from_dict_checks_like_flags_and_reads_json_integers_as_floats():
    hp = H.Hparams.from_dict({"training": {"lr": 1, "momentum": 0}})
    assert hp.training.lr == 1.0 and type(hp.training.lr) is float and type(hp.training.momentum) is float
    for bad, needle in [({"training": {"lr": float("inf")}}, "--lr"), ({"training": {"momentum": True}}, "--momentum"),
                        ({"dataset": {"batch_size": 1.0}}, "--batch-size"), ({"model": {"model": 3}}, "--model"),
                        ({"pruning": {"never_prune": None}}, "--never-prune"), ([], "JSON object")]:
        with pytest.raises(LotteryError, match=needle):
            H.Hparams.from_dict(bad)


def test_input_shapes_match_the_datasets(mnist_root):
    """check_model builds networks for the registry's declared shapes before any data is loaded."""
    from lottery_ticket.data.registry import DATASETS
    from lottery_ticket.runner import Context, load_splits

    splits = load_splits(H.preset_hparams("paper"), Context(data_root=str(mnist_root)), None)
    entry = DATASETS.get("mnist")
    assert splits.input_shape == entry.input_shape and splits.num_classes == entry.num_classes


def test_help_shows_each_numeric_hyperparameter_range(capsys):
    with pytest.raises(SystemExit):
        lth("train", "--help")
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("learning rate (paper: 0.0012; allowed: > 0, finite)", "SGD momentum (paper: 0.0; allowed: [0, 1))",
                   "training minibatch size (paper: 60; allowed: an integer >= 1)"):
        assert needle in text
