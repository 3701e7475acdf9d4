"""batched.train_batched: K networks trained at once equal K separate trainer.train runs.

On one thread (the `one_thread` fixture) the results are bitwise identical to K separate runs,
through the fast path and the autograd path alike: bmm of K matrices matches mm of each, and the
fused optimizer updates each network's own tensors (per-network views of the stacks), so it
rounds exactly as K separate optimizers do. Asserted exactly: weights, metric rows. (Any rounding
difference would not stay small: it can flip a ReLU whose pre-activation is within rounding
distance of 0, and the trajectories then separate; see test_fast_mlp.py.)
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from conftest import random_masks

from lottery_ticket import trainer
from lottery_ticket.batched import train_batched
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.models import build_model

WEIGHT_ATOL = 0.0
LOSS_ATOL = 0.0


def hparams(**training):
    hp = preset_hparams("paper")
    return replace(hp, training=replace(hp.training, **{"iterations": 300, "eval_every": 100, **training}))


def assert_same_results(batched, separate):
    for b, s in zip(batched, separate, strict=True):
        for state_b, state_s in ((b.initial, s.initial), (b.final, s.final)):
            assert state_b.keys() == state_s.keys()
            for name in state_s:
                assert (state_b[name] - state_s[name]).abs().max().item() <= WEIGHT_ATOL, name
        assert [r[:2] for r in b.metrics] == [r[:2] for r in s.metrics]
        for (_, _, loss_b, acc_b), (_, _, loss_s, acc_s) in zip(b.metrics, s.metrics, strict=True):
            assert abs(loss_b - loss_s) <= LOSS_ATOL and acc_b == acc_s
        assert b.resumed_from == s.resumed_from


@pytest.mark.parametrize(
    "training, fast, model_seeds",
    [
        (dict(optimizer="adam", lr=1.2e-3), True, (1, 2, 3)),
        (dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4), False, (4, 5, 6)),
    ],
    ids=["adam-vs-fast", "sgd-vs-autograd"],
)
def test_three_networks_equal_three_separate_runs(splits, training, fast, model_seeds):
    """Over a few hundred iterations; the fast path equals autograd (test_fast_mlp.py), so one
    optimizer is compared through each."""
    hp = hparams(iterations=200, **training)
    models = [build_model("lenet_300_100", seed=s) for s in model_seeds]
    masks = [random_masks(models[0], d, seed=s) for s, d in ((10, 1.0), (11, 0.5), (12, 0.2))]
    seeds = [7, 8, 9]
    separate = [
        trainer.train(copy.deepcopy(m), splits, hp, order_seed=s, masks=mk, fast=fast)
        for m, s, mk in zip(models, seeds, masks, strict=True)
    ]
    batched = train_batched([copy.deepcopy(m) for m in models], splits, hp, seeds, masks)
    assert_same_results(batched, separate)
    for result, mask in zip(batched, masks, strict=True):
        for name, m in mask.items():
            assert torch.all(result.final[name][m == 0] == 0), name
    # Different seeds and masks gave different networks (the test is not comparing clones).
    assert not torch.equal(batched[0].final["output.weight"], batched[1].final["output.weight"])


def test_schedule_rewind_and_uneven_last_window(splits):
    """Warmup + milestones, late rewinding, and a total that is not a multiple of eval_every."""
    hp = hparams(iterations=130, eval_every=50, warmup_iterations=20, lr_milestones="60,100", lr_gamma=0.5,
                 rewind_iteration=40)
    models = [build_model("fc_32_16", seed=s) for s in (4, 5)]
    seeds = [1, 2]
    separate = [trainer.train(copy.deepcopy(m), splits, hp, order_seed=s, fast=True)
                for m, s in zip(models, seeds, strict=True)]
    batched = train_batched([copy.deepcopy(m) for m in models], splits, hp, seeds)
    assert_same_results(batched, separate)
    for b, s in zip(batched, separate, strict=True):
        for name in s.rewind:
            assert (b.rewind[name] - s.rewind[name]).abs().max().item() <= WEIGHT_ATOL
    assert [r[0] for r in batched[0].metrics if r[1] == "test"] == [0, 50, 100, 130]


def test_models_are_left_trained_like_train_does(splits):
    hp = hparams(iterations=20, eval_every=10)
    models = [build_model("fc_16", seed=s) for s in (1, 2)]
    results = train_batched(models, splits, hp, [0, 1])
    for model, result in zip(models, results, strict=True):
        for name, value in model.state_dict().items():
            assert torch.equal(value, result.final[name])


def test_rejects_what_it_does_not_support(splits):
    hp = hparams(iterations=10)
    conv = build_model("conv2", seed=0, input_shape=(1, 28, 28), dropout=0.5)  # (conv nets: test_batched_func.py)
    with pytest.raises(LotteryError, match="dropout"):
        train_batched([conv], splits, hp, [0])
    with pytest.raises(LotteryError, match="same layer widths"):
        train_batched([build_model("fc_16", seed=0), build_model("fc_32", seed=0)], splits, hp, [0, 1])
    with pytest.raises(LotteryError, match="order seeds"):
        train_batched([build_model("fc_16", seed=0)], splits, hp, [0, 1])
    augmented = replace(hp, dataset=replace(hp.dataset, augment=True))
    with pytest.raises(LotteryError, match="augment"):
        train_batched([build_model("fc_16", seed=0)], splits, augmented, [0])


def test_start_iteration_continues_the_schedule_like_train(splits):
    """Late rewinding's later levels: train from `start_iteration` with the rest of the schedule."""
    hp = hparams(iterations=80, eval_every=25, warmup_iterations=40)
    models = [build_model("fc_16", seed=s) for s in (1, 2)]
    separate = [trainer.train(copy.deepcopy(m), splits, hp, order_seed=s, start_iteration=30, fast=False)
                for m, s in zip(models, (3, 4), strict=True)]
    batched = train_batched([copy.deepcopy(m) for m in models], splits, hp, [3, 4], start_iteration=30)
    assert_same_results(batched, separate)
    assert [r[0] for r in batched[0].metrics if r[1] == "test"] == [30, 50, 75, 80]


def test_divergence_raises_training_diverged(splits):
    hp = hparams(iterations=30, eval_every=10, optimizer="sgd", lr=1e6)
    with pytest.raises(trainer.TrainingDiverged, match="network"):
        train_batched([build_model("fc_16", seed=s) for s in (1, 2)], splits, hp, [0, 1])


def assert_identical(a, b):
    """Bitwise: the same computation, interrupted or not."""
    for ra, rb in zip(a, b, strict=True):
        for state_a, state_b in ((ra.initial, rb.initial), (ra.final, rb.final), (ra.rewind, rb.rewind)):
            assert state_a.keys() == state_b.keys()
            assert all(torch.equal(state_a[n], state_b[n]) for n in state_a)
        assert ra.metrics == rb.metrics


@pytest.mark.parametrize("stops", [(130,), (70, 250)], ids=["after-rewind", "before-and-after-rewind"])
def test_resume_from_a_checkpoint_is_bitwise_the_uninterrupted_run(splits, tmp_path, stops):
    hp = hparams(iterations=300, eval_every=50, rewind_iteration=100, lr_milestones="150", lr_gamma=0.1)
    seeds, order_seeds = (1, 2), [11, 12]
    masks = [random_masks(build_model("lenet_300_100", seed=s), 0.7, seed=s) for s in seeds]
    identity = {"runs": ["a", "b"]}

    def fresh():
        return [build_model("lenet_300_100", seed=s) for s in seeds]

    expected = train_batched(fresh(), splits, hp, order_seeds, masks)
    checkpoint = tmp_path / "checkpoint"
    for stop in stops:
        train_batched(fresh(), splits, hp, order_seeds, masks, checkpoint_dir=checkpoint, identity=identity,
                      stop_after=stop)
    # every evaluation point saves (0 s interval) from here on: resume from the last one
    got = train_batched(fresh(), splits, hp, order_seeds, masks, checkpoint_dir=checkpoint, identity=identity,
                        checkpoint_seconds=0.0)
    assert [r.resumed_from for r in got] == [stops[-1]] * 2  # it did continue from the checkpoint
    assert_identical(got, expected)


def test_a_checkpoint_of_other_runs_is_refused(splits, tmp_path):
    hp = hparams(iterations=100, eval_every=50)
    models = [build_model("lenet_300_100", seed=1)]
    train_batched(models, splits, hp, [1], checkpoint_dir=tmp_path, identity={"runs": ["a"]}, stop_after=50)
    with pytest.raises(LotteryError, match="belongs to other runs"):
        train_batched([build_model("lenet_300_100", seed=1)], splits, hp, [1], checkpoint_dir=tmp_path,
                      identity={"runs": ["b"]})
