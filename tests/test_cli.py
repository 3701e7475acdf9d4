"""The `lth` command on the real MNIST: the paper's experiment end to end, controls, sweeps, errors."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import lth

from lottery_ticket import layout
from lottery_ticket.cli import parse_levels
from lottery_ticket.layout.files import read_metrics
from lottery_ticket.masking import density
from lottery_ticket.store import load_tensors, save_tensors

SHORT = ["--iterations", "200", "--eval-every", "100", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def lottery(tmp_path_factory, mnist_root):
    """`lth lottery --preset paper --levels 3 --iterations 2000` on the real MNIST (the issue's check)."""
    root = mnist_root
    exp = tmp_path_factory.mktemp("exp") / "lenet"
    code = lth("lottery", "--preset", "paper", "--levels", 3, "--iterations", 2000, "--output-dir", exp,
               "--data-root", root, "--quiet", "--workers", 1, "--threads", 1)
    assert code == 0
    return exp, root


def test_lottery_layout_and_pruning_schedule(lottery):
    exp, _ = lottery
    expected = {  # kept fraction of each layer per level: 0.8^k hidden, 0.9^k output (rounded counts)
        "hidden.0.weight": [235200, 188160, 150528, 120422],
        "hidden.1.weight": [30000, 24000, 19200, 15360],
        "output.weight": [1000, 900, 810, 729],
    }
    for level in range(4):
        run = layout.run_dir(exp, 0, level)
        assert layout.is_complete(run)
        masks = load_tensors(run / layout.MASKS)
        for name, counts in expected.items():
            assert int(masks[name].sum()) == counts[level], (level, name)
    assert json.loads((exp / layout.EXPERIMENT_FILE).read_text())["hparams"]["training"]["iterations"] == 2000


def test_lottery_resets_to_level0_initial_weights_and_keeps_pruned_weights_zero(lottery):
    exp, _ = lottery
    initial0 = load_tensors(layout.run_dir(exp, 0, 0) / layout.INITIAL)
    for level in range(4):
        run = layout.run_dir(exp, 0, level)
        masks, initial, final = (load_tensors(run / f) for f in (layout.MASKS, layout.INITIAL, layout.FINAL))
        for name, mask in masks.items():
            kept = mask == 1
            assert torch.equal(initial[name][kept], initial0[name][kept])
            assert torch.all(final[name][~kept] == 0) and torch.all(initial[name][~kept] == 0)
        for name in ("hidden.0.bias", "output.bias"):
            assert torch.equal(initial[name], initial0[name])


def test_logged_test_accuracy_is_that_of_the_saved_final_weights(lottery):
    from lottery_ticket.data import load_dataset
    from lottery_ticket.models import build_model
    from lottery_ticket.trainer import evaluate

    exp, root = lottery
    splits = load_dataset("mnist", root, quiet=True)
    run = layout.run_dir(exp, 0, 3)
    model = build_model("lenet_300_100", seed=0)
    model.load_state_dict(load_tensors(run / layout.FINAL))
    _, acc = evaluate(model, splits.test_x, splits.test_y)
    logged = [r for r in read_metrics(run / layout.METRICS) if r[1] == "test"][-1]
    assert logged[3] == acc
    assert acc > 0.95


def test_rerun_skips_completed_levels_and_refuses_different_hparams(lottery, capsys):
    exp, root = lottery
    final = layout.run_dir(exp, 0, 3) / layout.FINAL
    mtime = final.stat().st_mtime_ns
    assert lth("lottery", "--levels", 3, "--iterations", 2000, "--output-dir", exp, "--data-root", root,
               "--quiet", "--workers", 1) == 0
    assert final.stat().st_mtime_ns == mtime
    assert lth("lottery", "--levels", 3, "--iterations", 2000, "--lr", "0.01", "--output-dir", exp,
               "--data-root", root, "--quiet") == 2
    err = capsys.readouterr().err
    assert "training.lr: 0.0012 -> 0.01" in err and err.count("\n") == 1
    assert final.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("control", ["reinit", "reuse", "reuse_sign", "random"])
def test_controls_use_the_ticket_masks(lottery, control):
    exp, root = lottery
    # control runs use the experiment's hyperparameters (2,000 iterations here)
    assert lth("reinit", "--experiment", exp, "--control", control, "--levels", "2", "--runs", 1,
               "--data-root", root, "--quiet", "--workers", 1, "--threads", 1) == 0
    run = layout.run_dir(exp, 0, 2, control, 0)
    assert layout.is_complete(run)
    ticket_masks = load_tensors(layout.run_dir(exp, 0, 2) / layout.MASKS)
    masks = load_tensors(run / layout.MASKS)
    initial = load_tensors(run / layout.INITIAL)
    original = load_tensors(layout.run_dir(exp, 0, 0) / layout.INITIAL)
    name = "hidden.0.weight"
    if control == "random":
        assert int(masks[name].sum()) == int(ticket_masks[name].sum())
        assert not torch.equal(masks[name], ticket_masks[name])
        kept = masks[name] == 1
        assert torch.equal(initial[name][kept], original[name][kept])
    else:
        assert torch.equal(masks[name], ticket_masks[name])
        kept = masks[name] == 1
        assert not torch.equal(initial[name][kept], original[name][kept])
    if control == "reuse_sign":
        assert torch.equal(torch.sign(initial[name][kept]), torch.sign(original[name][kept]))
    if control in ("reuse", "reuse_sign"):
        values = set(original[name].abs().flatten().tolist())
        assert set(initial[name][kept].abs().flatten().tolist()) <= values


def test_train_with_masks_and_presets_and_mask_errors(lottery, tmp_path, capsys):
    exp, root = lottery
    level2 = layout.run_dir(exp, 0, 2)
    out = tmp_path / "one"
    assert lth("train", "--output-dir", out, "--masks", level2 / layout.MASKS, "--init-weights",
               layout.run_dir(exp, 0, 0) / layout.INITIAL, "--data-root", root, *SHORT) == 0
    assert density(load_tensors(out / layout.MASKS)) == pytest.approx(density(load_tensors(level2 / layout.MASKS)))
    bad = load_tensors(level2 / layout.MASKS)
    bad["output.weight"] = bad["output.weight"] * 0.5
    save_tensors(tmp_path / "bad.safetensors", bad)
    assert lth("train", "--output-dir", tmp_path / "b1", "--masks", tmp_path / "bad.safetensors",
               "--data-root", root, *SHORT) == 2
    assert "not binary" in capsys.readouterr().err
    wrong = {"hidden.9.weight": torch.ones(3)}
    save_tensors(tmp_path / "wrong.safetensors", wrong)
    assert lth("train", "--output-dir", tmp_path / "b2", "--masks", tmp_path / "wrong.safetensors",
               "--data-root", root, *SHORT) == 2
    assert "hidden.9.weight" in capsys.readouterr().err
    (tmp_path / "trunc.safetensors").write_bytes((level2 / layout.MASKS).read_bytes()[:100])
    assert lth("train", "--output-dir", tmp_path / "b3", "--masks", tmp_path / "trunc.safetensors",
               "--data-root", root, *SHORT) == 2
    assert "corrupted" in capsys.readouterr().err


def test_sweep_runs_each_line_once(lottery, tmp_path, capsys):
    _, root = lottery
    script = tmp_path / "argfile.sh"
    script.write_text(
        "#!/bin/sh\nfor lr in 0.001 0.002; do\n"
        f"  echo train --lr $lr --output-dir {tmp_path}/sweep/lr_$lr --data-root {root} {' '.join(SHORT)}\n"
        "done\n"
    )
    script.chmod(0o755)
    assert lth("sweep", script, "--workers", 2, "--threads", 1) == 0
    finals = [tmp_path / "sweep" / f"lr_{lr}" / layout.FINAL for lr in ("0.001", "0.002")]
    mtimes = [f.stat().st_mtime_ns for f in finals]
    assert lth("sweep", script, "--workers", 1) == 0
    assert [f.stat().st_mtime_ns for f in finals] == mtimes  # complete runs are skipped
    text = tmp_path / "lines.txt"
    text.write_text("# comment\nfly --to the moon\n")
    assert lth("sweep", text) == 2
    assert "must start with train, lottery or reinit" in capsys.readouterr().err


def test_user_errors_are_one_line_without_traceback(tmp_path, mnist_root):
    cases = [
        (["train", "--output-dir", tmp_path / "a", "--model", "resnet9000"], "unknown model"),
        (["lottery", "--output-dir", tmp_path / "b", "--preset", "nope"], "unknown preset"),
        (["lottery", "--output-dir", tmp_path / "c", "--fc-fraction", "1.5"], "[0, 1)"),
        (["reinit", "--experiment", tmp_path / "none"], "not a lottery experiment"),
        (["train", "--output-dir", tmp_path / "d", "--data-root", tmp_path / "empty", "--no-download"], "mnist"),
    ]
    for argv, message in cases:
        proc = subprocess.run([sys.executable, "-m", "lottery_ticket.cli", *map(str, argv)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_corrupted_dataset_is_refused(tmp_path, mnist_root, capsys):
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for f in (mnist_root / "mnist").glob("*.gz"):
        (root / "mnist" / f.name).write_bytes(f.read_bytes())
    victim = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-100])
    assert lth("train", "--output-dir", tmp_path / "r", "--data-root", root, "--no-download", *SHORT) == 2
    assert "t10k-labels-idx1-ubyte.gz" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_existing_non_experiment_directory_is_refused(tmp_path, mnist_root, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    assert lth("lottery", "--output-dir", tmp_path / "x", "--data-root", mnist_root, *SHORT) == 2
    assert "not a lottery_ticket experiment" in capsys.readouterr().err
    assert (tmp_path / "x" / "notes.txt").read_text() == "mine"


def test_parse_levels():
    assert parse_levels("0-3") == [0, 1, 2, 3]
    assert parse_levels("1,3,5-6") == [1, 3, 5, 6]


def test_models_and_presets_commands(capsys):
    assert lth("models") == 0
    out = capsys.readouterr().out
    assert "lenet_300_100" in out and "266,200" in out and "4,300,992" in out
    assert lth("presets") == 0
    assert "original-code" in capsys.readouterr().out
