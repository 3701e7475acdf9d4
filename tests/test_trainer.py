import json
import multiprocessing as mp
import os
import time
from dataclasses import replace

import pytest
import torch

from lottery_ticket import layout
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import DatasetHparams, Hparams, TrainingHparams
from lottery_ticket.layout.files import read_metrics
from lottery_ticket.lock import RunLock
from lottery_ticket.models import build_model
from lottery_ticket.store import load_tensors
from lottery_ticket.trainer import TrainingDiverged, evaluate, train

HP = Hparams(training=TrainingHparams(iterations=250, eval_every=100))


def lenet(seed=0):
    return build_model("lenet_300_100", seed=seed)


def test_evaluation_schedule_and_metric_rows(splits):
    result = train(lenet(), splits, HP, order_seed=0)
    rows = result.metrics
    by_split = {}
    for it, split, _, _ in rows:
        by_split.setdefault(split, []).append(it)
    assert by_split["validation"] == by_split["test"] == [0, 100, 200, 250]
    assert by_split["train_batch"] == [100, 200, 250]
    assert by_split["train"] == [250]


def test_run_files_and_logged_accuracy_is_that_of_the_saved_final_weights(splits, tmp_path):
    out = tmp_path / "run"
    result = train(lenet(), splits, HP, order_seed=0, output_dir=out, run_info={"trial": 0})
    for name in (layout.RUN_FILE, layout.METRICS, layout.MASKS, layout.INITIAL, layout.FINAL, layout.COMPLETE):
        assert (out / name).is_file(), name
    assert list((out / layout.TENSORBOARD).iterdir())
    assert not (out / layout.CHECKPOINT).exists()
    record = json.loads((out / layout.RUN_FILE).read_text())
    assert record["hparams"]["training"]["iterations"] == 250 and "torch" in record["versions"]
    model = lenet(9)
    model.load_state_dict(load_tensors(out / layout.FINAL))
    loss, acc = evaluate(model, splits.test_x, splits.test_y)
    logged = [r for r in read_metrics(out / layout.METRICS) if r[1] == "test"][-1]
    assert logged[3] == acc and logged[2] == pytest.approx(loss, rel=1e-12)
    assert read_metrics(out / layout.METRICS) == [tuple(r) for r in result.metrics]


def test_same_seeds_give_identical_runs(splits):
    a = train(lenet(), splits, HP, order_seed=3)
    b = train(lenet(), splits, HP, order_seed=3)
    c = train(lenet(), splits, HP, order_seed=4)
    assert all(torch.equal(a.final[k], b.final[k]) for k in a.final)
    assert a.metrics == b.metrics
    assert not torch.equal(a.final["output.weight"], c.final["output.weight"])


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_from_checkpoint_equals_uninterrupted_run_bit_for_bit(splits, tmp_path, optimizer):
    hp = replace(HP, training=replace(HP.training, optimizer=optimizer, momentum=0.9, lr=0.01,
                                      warmup_iterations=50, lr_milestones="150"))
    full = train(lenet(), splits, hp, order_seed=1, output_dir=tmp_path / "full")
    out = tmp_path / "resumed"
    partial = train(lenet(), splits, hp, order_seed=1, output_dir=out, stop_after=120, checkpoint_seconds=1e9)
    assert not layout.is_complete(out) and (out / layout.CHECKPOINT).exists()
    assert partial.metrics[-1][0] == 100
    resumed = train(lenet(7), splits, hp, order_seed=1, output_dir=out)  # model init ignored: state restored
    assert resumed.resumed_from == 120
    for k in full.final:
        assert torch.equal(full.final[k], resumed.final[k]), k
    assert full.metrics == resumed.metrics
    assert read_metrics(out / layout.METRICS) == read_metrics(tmp_path / "full" / layout.METRICS)


def test_complete_run_is_loaded_not_retrained_and_different_settings_refused(splits, tmp_path):
    out = tmp_path / "run"
    first = train(lenet(), splits, HP, order_seed=0, output_dir=out, run_info={"trial": 0})
    mtime = (out / layout.FINAL).stat().st_mtime_ns
    again = train(lenet(5), splits, HP, order_seed=0, output_dir=out, run_info={"trial": 0})
    assert (out / layout.FINAL).stat().st_mtime_ns == mtime
    assert all(torch.equal(first.final[k], again.final[k]) for k in first.final)
    other = replace(HP, training=replace(HP.training, lr=0.5))
    with pytest.raises(LotteryError, match="training.lr: 0.0012 -> 0.5"):
        train(lenet(), splits, other, order_seed=0, output_dir=out, run_info={"trial": 0})
    assert (out / layout.FINAL).stat().st_mtime_ns == mtime


def test_nan_loss_stops_the_run_and_keeps_its_files(splits, tmp_path):
    hp = replace(HP, training=replace(HP.training, optimizer="sgd", lr=1e6))
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"NaN or infinite at iteration \d+"):
        train(lenet(), splits, hp, order_seed=0, output_dir=out)
    assert not layout.is_complete(out)
    rows = read_metrics(out / layout.METRICS)
    assert rows[0][0] == 0  # the evaluation at iteration 0 survives
    assert (out / layout.INITIAL).is_file()


def test_late_rewinding_saves_the_weights_at_the_rewind_iteration(splits, tmp_path):
    hp = replace(HP, training=replace(HP.training, rewind_iteration=40))
    out = tmp_path / "run"
    result = train(lenet(), splits, hp, order_seed=0, output_dir=out)
    stopped = train(lenet(), splits, hp, order_seed=0, stop_after=40)
    assert all(torch.equal(result.rewind[k], stopped.final[k]) for k in result.rewind)
    assert all(torch.equal(result.rewind[k], v) for k, v in load_tensors(out / layout.REWIND).items())
    # training from the rewind point continues the schedule: same as the uninterrupted run
    cont = lenet()
    cont.load_state_dict(result.rewind)
    restarted = train(cont, splits, hp, order_seed=0, start_iteration=40)
    assert restarted.metrics[0][0] == 40


def test_epochs_instead_of_iterations(splits):
    hp = replace(HP, training=replace(HP.training, epochs=2, eval_every=1000))
    rows = train(lenet(), splits, hp, order_seed=0).metrics
    assert rows[-1][0] == 2 * (len(splits.train_y) // 60)


def _hold_lock(directory, ready, release):
    lock = RunLock(directory)
    lock.acquire()
    ready.set()
    release.wait(30)
    lock.release()


def test_lock_refuses_a_second_process_and_recovers_a_stale_lock(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(LotteryError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        release.set()
        holder.join(30)
    # a lock left by a dead process is taken over
    dead = ctx.Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    (tmp_path / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_corrupted_checkpoint_is_a_clear_error(splits, tmp_path):
    out = tmp_path / "run"
    train(lenet(), splits, HP, order_seed=0, output_dir=out, stop_after=150, checkpoint_seconds=1e9)
    state = out / layout.CHECKPOINT / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(LotteryError, match="corrupted checkpoint"):
        train(lenet(), splits, HP, order_seed=0, output_dir=out)


def test_a_checkpoint_of_an_older_version_is_a_clear_error(splits, tmp_path):
    """The loop's checkpoint layout changed (one loop for 1 or K networks): an interrupted run of
    the old layout is refused with a one-line hint, not a KeyError."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = tmp_path / "run"
    train(lenet(), splits, HP, order_seed=0, output_dir=out, stop_after=150, checkpoint_seconds=1e9)
    state = out / layout.CHECKPOINT / "state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["extra"] = {"metrics": meta["extra"]["rows"][0]}  # what the old single-run loop saved
    save_file(tensors, str(state), metadata={"meta": json.dumps(meta)})
    with pytest.raises(LotteryError, match="older version; delete it"):
        train(lenet(), splits, HP, order_seed=0, output_dir=out)


def test_augmented_training_is_deterministic():
    from conftest import synthetic_splits

    s = synthetic_splits(shape=(3, 8, 8))
    hp = Hparams(dataset=DatasetHparams(augment=True), training=TrainingHparams(iterations=30, eval_every=10))
    a = train(build_model("fc_20", seed=0, input_shape=(3, 8, 8)), s, hp, order_seed=0)
    b = train(build_model("fc_20", seed=0, input_shape=(3, 8, 8)), s, hp, order_seed=0)
    assert a.metrics == b.metrics


def test_background_evaluation_gives_the_same_rows_and_weights(splits, tmp_path):
    sync = train(lenet(), splits, HP, order_seed=2)
    background = train(lenet(), splits, HP, order_seed=2, background_eval=True)
    assert background.metrics == sync.metrics
    assert all(torch.equal(sync.final[k], background.final[k]) for k in sync.final)
    out = tmp_path / "run"  # interrupted and resumed with background evaluation
    train(lenet(), splits, HP, order_seed=2, output_dir=out, stop_after=230, checkpoint_seconds=1e9,
          background_eval=True)
    resumed = train(lenet(), splits, HP, order_seed=2, output_dir=out, background_eval=True)
    assert resumed.metrics == sync.metrics
    assert read_metrics(out / layout.METRICS) == sync.metrics


def test_background_evaluation_reports_divergence(splits):
    hp = replace(HP, training=replace(HP.training, optimizer="sgd", lr=0.01, lr_milestones="150", lr_gamma=1e30))
    with pytest.raises(TrainingDiverged, match="NaN or infinite"):
        train(lenet(), splits, hp, order_seed=0, background_eval=True)
