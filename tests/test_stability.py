"""The measuring branches of issue 14: instability (Frankle et al. 2020) and retraining after
pruning (Renda et al. 2020): their definitions on hand-computed cases, the replay they start
from, their files, the report, and resuming after SIGKILL."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run, lth, synthetic_splits

from lottery_ticket import layout
from lottery_ticket.branches.instability import (
    alphas,
    error_barrier,
    interpolate,
    recompute_batch_norm,
)
from lottery_ticket.branches.retraining import retraining_schedule
from lottery_ticket.branches.ticket import ticket_training
from lottery_ticket.checkpoint import load_checkpoint
from lottery_ticket.data.datasets import MIRRORS, read_idx_dataset
from lottery_ticket.data.registry import DATASETS, register_dataset
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.loop import learning_rate
from lottery_ticket.masking import mask_optimizer_state
from lottery_ticket.models import build_model
from lottery_ticket.runner import RunOptions
from lottery_ticket.store import load_tensors, read_json
from lottery_ticket.trainer import make_optimizer, train

RUN = ["--quiet", "--threads", "1", "--workers", "1"]
T = 100  # the lottery's iterations
SMALL = "mnist_stability"  # 2,000 MNIST training and 1,000 test images: quick full-split evaluations
# `lth` in a subprocess that knows the small dataset (registered by importing this module)
CLI = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_stability; "
       "from lottery_ticket.cli import main; sys.exit(main(sys.argv[1:]))")

if SMALL not in DATASETS.names():
    @register_dataset(SMALL, input_shape=(1, 28, 28), train_size=2000, num_classes=10, mirrors=MIRRORS["mnist"])
    def read_small(root, *, download, mirrors, quiet):
        train_x, train_y, test_x, test_y = read_idx_dataset("mnist", root, download=download, mirrors=mirrors,
                                                            quiet=quiet)
        return train_x[:2000], train_y[:2000], test_x[:1000], test_y[:1000]


@pytest.fixture(scope="module")
def lottery(tmp_path_factory, mnist_root):
    exp = tmp_path_factory.mktemp("stability") / "lot"
    assert lth("lottery", "--dataset", SMALL, "--iterations", T, "--eval-every", 10, "--levels", 1,
               "--validation-size", 500, "--output-dir", exp, "--data-root", mnist_root, *RUN) == 0
    return exp, mnist_root


# --------------------------------------------------------------------------- definitions, by hand


def test_error_barrier_of_known_curves():
    assert error_barrier([10.0, 14.0, 12.0, 11.0]) == pytest.approx(14.0 - 10.5)  # a bump in the middle
    assert error_barrier([10.0, 9.0, 8.0, 12.0]) == pytest.approx(12.0 - 11.0)  # no bump: half the ends' gap
    assert error_barrier([5.0, 5.0, 5.0]) == 0.0  # linearly connected, same error: 0
    assert alphas(5) == [0.0, 0.25, 0.5, 0.75, 1.0] and len(alphas(30)) == 30


def test_interpolation_is_the_straight_line_and_keeps_pruned_weights_zero():
    a = {"w": torch.tensor([1.0, 0.0, 3.0]), "count": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 0.0, -1.0]), "count": torch.tensor(9)}
    mid = interpolate(a, b, 0.25)
    assert torch.equal(mid["w"], torch.tensor([1.5, 0.0, 2.0])) and int(mid["count"]) == 7
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])


def test_batch_norm_statistics_are_recomputed_on_the_training_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    model[1].running_mean.fill_(100.0)  # e.g. the average of two networks' statistics: wrong
    x = torch.randn(40, 3)
    recompute_batch_norm(model, x, batch=10)
    with torch.no_grad():
        h = model[0](x)
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-6)
    assert torch.allclose(model[1].running_var, torch.stack([c.var(0) for c in h.split(10)]).mean(0), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


def test_schedule_positions_of_the_three_retraining_methods():
    """SGD 0.1 over T=10 iterations, dropping 10x at 6 and 8; retraining t=4 iterations."""
    hp = preset_hparams("paper")
    hp = hp.__class__(**{**hp.__dict__, "training": hp.training.__class__(
        **{**hp.training.__dict__, "optimizer": "sgd", "lr": 0.1, "iterations": 10, "lr_milestones": "6,8"})})

    def rates(method):
        run_hp, start = retraining_schedule(method, hp, 10, 4, per_epoch=1000)
        return start, run_hp.training.iterations, [learning_rate(run_hp.training, i) for i in range(start, run_hp.training.iterations)]

    lr_start, lr_end, lr_rates = rates("lr_rewinding")
    assert (lr_start, lr_end) == (6, 10) and lr_rates == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert rates("weight_rewinding")[:2] == (6, 10) and rates("weight_rewinding")[2] == pytest.approx(lr_rates)
    ft_start, ft_end, ft_rates = rates("finetune")
    assert (ft_start, ft_end) == (10, 14) and ft_rates == pytest.approx([0.001] * 4)  # the final rate, constant


def test_restored_optimizer_state_continues_training_exactly(tmp_path):
    """Weights and optimizer state of iteration 20, trained on to 30 with the same order: the
    uninterrupted run bitwise (a fresh optimizer is not); a narrower mask zeroes its state."""
    splits = synthetic_splits(n_train=600)
    hp = preset_hparams("paper")
    hp = hp.__class__(**{**hp.__dict__, "training": hp.training.__class__(
        **{**hp.training.__dict__, "iterations": 30, "eval_every": 10})})
    straight = train(build_model("lenet_300_100", seed=1), splits, hp, order_seed=5)
    train(build_model("lenet_300_100", seed=1), splits, hp, order_seed=5, output_dir=tmp_path / "r", stop_after=20)
    model = build_model("lenet_300_100", seed=1)
    optimizer = make_optimizer(model, hp.training)
    assert load_checkpoint(tmp_path / "r" / layout.CHECKPOINT, model, optimizer)[0] == 20
    state = optimizer.state_dict()
    assert int(state["state"][0]["step"]) == 20  # Adam's step count: the position it was saved at

    def resume(optimizer_state):
        start = build_model("lenet_300_100", seed=2)
        start.load_state_dict(model.state_dict())
        return train(start, splits, hp, order_seed=5, start_iteration=20, optimizer_state=optimizer_state).final

    assert all(torch.equal(straight.final[k], v) for k, v in resume(state).items())
    assert not all(torch.equal(straight.final[k], v) for k, v in resume(None).items())

    masks = {"hidden.0.weight": torch.zeros_like(model.hidden[0].weight)}
    mask_optimizer_state(optimizer, model, masks)
    assert not optimizer.state[model.hidden[0].weight]["exp_avg"].any()
    assert optimizer.state[model.hidden[1].weight]["exp_avg"].any()  # (unmasked tensors untouched)


# --------------------------------------------------------------------------- the branches


def test_replaying_the_ticket_gives_its_final_weights_bitwise(lottery):
    exp, root = lottery
    ticket = ticket_training(exp, 0, 1, RunOptions(data_root=str(root), quiet=True))
    replayed = train(ticket.model(ticket.initial), ticket.splits, ticket.hp, order_seed=ticket.seeds["order"],
                     masks=ticket.masks, start_iteration=ticket.start)
    assert all(torch.equal(ticket.final[k], v) for k, v in replayed.final.items())


def test_instability_branch_files_and_report(lottery, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(lottery[0], exp)
    assert lth("branch", "instability", "--experiment", exp, "--levels", "1", "--rewind-iterations", "0,20",
               "--pairs", 2, "--alphas", 3, "--data-root", lottery[1], *RUN) == 0
    out = layout.run_dir(exp, 0, 1, "instability", 0)
    assert layout.is_complete(out)
    ticket_masks = load_tensors(layout.run_dir(exp, 0, 1) / layout.MASKS)
    for k in (0, 20):
        for pair in (0, 1):
            where = layout.pair_dir(out, k, pair)
            record = read_json(where / layout.INSTABILITY_RESULT)
            errors = record["curve"]["test"]["error"]
            assert record["barrier"] == error_barrier(errors) and record["stable"] == (record["barrier"] < 2)
            assert record["alphas"] == [0.0, 0.5, 1.0] and not record["batch_norm_recomputed"]
            for copy in ("a", "b"):
                final = load_tensors(where / record["endpoints"][copy])
                masks = load_tensors(where / record["masks"])
                assert all(torch.equal(masks[n], ticket_masks[n]) for n in masks)
                assert not any(final[n][masks[n] == 0].any() for n in masks)  # pruned weights are 0
            assert read_json(layout.copy_dir(where, "a") / layout.RUN_FILE)["run"]["rewind_iteration"] == k
    # the two copies of a pair train on different data orders; two pairs differ too
    seeds = {read_json(layout.copy_dir(layout.pair_dir(out, 0, p), c) / layout.RUN_FILE)["run"]["seeds"]["order"]
             for p in (0, 1) for c in ("a", "b")}
    assert len(seeds) == 4
    table = (out / layout.INSTABILITY_TABLE).read_text().splitlines()
    assert table[0].split(",")[:8] == ["trial", "level", "pm", "k", "pair", "split", "barrier", "stable"]
    assert len(table) == 1 + 2 * 2 * 2  # k x pairs x splits
    assert lth("report", exp) == 0
    report = (exp / layout.REPORT_MD).read_text()
    assert "Instability (linear mode connectivity)" in report and "stable (< 2%)" in report
    assert (exp / layout.PLOTS / "instability.png").is_file()
    assert (exp / layout.PLOTS / "instability_interpolation.png").is_file()


def test_retraining_branch_methods_and_weight_rewinding_state(lottery, tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(lottery[0], exp)
    t = 30
    assert lth("branch", "retraining", "--experiment", exp, "--levels", "0", "--retrain-iterations", t,
               "--pruning-steps", 2, "--data-root", lottery[1], *RUN) == 0
    out = layout.run_dir(exp, 0, 0, "retraining", 0)
    # weight rewinding restores the weights and the optimizer state of iteration T - t
    replayed = layout.replay_dir(out, T - t) / layout.CHECKPOINT
    model = build_model("lenet_300_100", seed=0)
    hp = preset_hparams("paper")
    optimizer = make_optimizer(model, hp.training)
    assert load_checkpoint(replayed, model, optimizer)[0] == T - t
    assert int(optimizer.state_dict()["state"][0]["step"]) == T - t
    cycle = layout.retrain_dir(out, "weight_rewinding", t, 1)
    start, masks = load_tensors(cycle / layout.INITIAL), load_tensors(cycle / layout.MASKS)
    assert all(torch.equal(start[n], model.state_dict()[n] * masks.get(n, 1)) for n in start)
    assert read_json(cycle / layout.RUN_FILE)["run"]["method"] == "weight_rewinding"
    # fine-tuning and LR rewinding start from the final weights (pruned)
    final = load_tensors(layout.run_dir(exp, 0, 0) / layout.FINAL)
    for method in ("finetune", "lr_rewinding"):
        first = layout.retrain_dir(out, method, t, 1)
        start, masks = load_tensors(first / layout.INITIAL), load_tensors(first / layout.MASKS)
        assert all(torch.equal(start[n], final[n] * masks.get(n, 1)) for n in start)
    rows = (out / layout.RETRAINING_TABLE).read_text().splitlines()
    assert len(rows) == 1 + 3 * 2  # methods x cycles
    pms = [float(r.split(",")[-4]) for r in rows[1:3]]
    assert pms[0] > pms[1]  # cycle 2 prunes further
    assert lth("report", exp) == 0
    assert "Retraining after pruning" in (exp / layout.REPORT_MD).read_text()


def test_instability_refuses_what_it_cannot_do(lottery, capsys):
    exp, root = lottery
    for flags, message in ((["--rewind-iterations", T], "below the"), (["--runs", 2], "--pairs"),
                           (["--alphas", 2], "--alphas")):
        assert lth("branch", "instability", "--experiment", exp, "--levels", 0, *flags, "--data-root", root,
                   *RUN) == 2
        assert message in capsys.readouterr().err
    assert not (layout.run_dir(exp, 0, 0, "instability", 0)).exists()


# --------------------------------------------------------------------------- SIGKILL, then resume


def _kill_when(command: list[str], ready) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize("branch,flags,watch", [
    ("instability", ["--rewind-iterations", "20", "--alphas", "3"], lambda out: layout.pair_dir(out, 20, 0) / "b"),
    ("retraining", ["--methods", "weight_rewinding", "--retrain-iterations", "70"],
     lambda out: layout.retrain_dir(out, "weight_rewinding", 70, 1)),
])
def test_sigkilled_branch_resumes_to_the_uninterrupted_results(lottery, tmp_path, branch, flags, watch):
    exp, root = lottery
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(exp, reference)
    shutil.copytree(exp, killed)
    args = ["branch", branch, "--levels", "1", *flags, "--data-root", str(root), "--checkpoint-seconds", "0.01", *RUN]
    assert lth(*args, "--experiment", reference) == 0
    out = layout.run_dir(killed, 0, 1, branch, 0)
    command = [sys.executable, "-c", CLI, *args, "--experiment", str(killed)]
    _kill_when(command, lambda: (watch(out) / layout.CHECKPOINT / "state.safetensors").exists())
    assert not layout.is_complete(watch(out))
    assert subprocess.run(command, capture_output=True, timeout=600).returncode == 0
    done = layout.run_dir(reference, 0, 1, branch, 0)
    if branch == "instability":
        for copy in ("a", "b"):
            assert_same_run(layout.copy_dir(layout.pair_dir(done, 20, 0), copy),
                            layout.copy_dir(layout.pair_dir(out, 20, 0), copy))
        pair = layout.pair_dir(done, 20, 0).relative_to(done)
        names = [layout.INSTABILITY_TABLE, pair / layout.INSTABILITY_RESULT, pair / layout.INSTABILITY_CURVE]
    else:
        assert_same_run(watch(done), watch(out))
        names = [layout.RETRAINING_TABLE]
    for name in names:
        assert (done / name).read_bytes() == (out / name).read_bytes(), name
    assert json.loads((done / layout.RUN_FILE).read_text())["run"] == json.loads((out / layout.RUN_FILE).read_text())["run"]
