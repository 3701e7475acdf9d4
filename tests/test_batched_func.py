"""batched_func: K conv / batch-norm networks trained at once (torch.func) equal K separate runs.

Not bitwise: vmap runs the K convolutions as one grouped convolution and the K matrix products as
one batched product, kernels that sum in another order than the one-network ones, so each step
differs by float rounding (about 1e-7 relative). Compared with SGD over a few steps, where such
differences stay of their own size (Adam's first steps divide by the gradients' own magnitude and
can turn a rounding-sized gradient into a full-size update), at a tolerance 40-200x above the
differences measured and far below any real change. The batched augmentation is a pure gather of
the same draws, so it is compared exactly.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from conftest import lth, random_masks, synthetic_splits

from lottery_ticket import trainer
from lottery_ticket.batched import train_batched
from lottery_ticket.data.augment import augment_batch, augment_batches
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.models import build_model

WEIGHT_ATOL = 1e-5
LOSS_ATOL = 1e-5


@pytest.fixture
def images():
    return synthetic_splits(n_train=240, n_val=60, n_test=60, shape=(3, 16, 16))


def hparams(**changes):
    hp = preset_hparams("paper", model="conv2")
    training = {"iterations": 6, "eval_every": 3, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, **changes}
    return replace(hp, training=replace(hp.training, **training), dataset=replace(hp.dataset, batch_size=20))


def assert_close_results(batched, separate):
    for b, s in zip(batched, separate, strict=True):
        for state_b, state_s in ((b.initial, s.initial), (b.final, s.final)):
            assert state_b.keys() == state_s.keys()
            for name in state_s:
                assert (state_b[name].double() - state_s[name].double()).abs().max().item() <= WEIGHT_ATOL, name
        assert [r[:2] for r in b.metrics] == [r[:2] for r in s.metrics]
        for (_, _, loss_b, acc_b), (_, _, loss_s, acc_s) in zip(b.metrics, s.metrics, strict=True):
            assert abs(loss_b - loss_s) <= LOSS_ATOL and acc_b == acc_s


def separate_runs(models, images, hp, order_seeds, masks):
    return [trainer.train(copy.deepcopy(m), images, hp, order_seed=o, masks=k)
            for m, o, k in zip(models, order_seeds, masks, strict=True)]


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_conv2_networks_equal_separate_runs(images, augment):
    # Augmented: 2 steps. A rounding-sized difference can flip a discrete decision (which input a
    # max-pool keeps, whether a ReLU fires), and from then on the networks differ by a gradient-sized
    # step: on an AVX-512 Xeon the dense network did so at step 3 (1.5e-8 -> 1.2e-5 -> 1.7e-4 at
    # step 6, the other two networks staying at 3e-8); the EPYC never did in 6 steps.
    hp = hparams(iterations=2, eval_every=1) if augment else hparams()
    hp = replace(hp, dataset=replace(hp.dataset, augment=augment))
    models = [build_model("conv2", seed=s, input_shape=(3, 16, 16)) for s in (1, 2, 3)]
    masks = [random_masks(models[0], d, seed=s) for s, d in ((10, 1.0), (11, 0.5), (12, 0.2))]
    separate = separate_runs(models, images, hp, [5, 6, 7], masks)
    batched = train_batched([copy.deepcopy(m) for m in models], images, hp, [5, 6, 7], masks)
    assert_close_results(batched, separate)
    for result, mask in zip(batched, masks, strict=True):  # pruned weights stay exactly 0
        for name, m in mask.items():
            assert torch.all(result.final[name][m == 0] == 0)


class TinyBN(nn.Module):
    """A conv, batch norm and a linear layer: running statistics to keep per network."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.output = nn.Linear(8 * 16 * 16, 10)

    def forward(self, x):
        return self.output(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_batch_norm_statistics_are_kept_per_network(images):
    hp = hparams()
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(TinyBN())
    masks = [None, random_masks(models[0], 0.5, seed=3)]
    separate = separate_runs(models, images, hp, [5, 6], masks)
    batched = train_batched([copy.deepcopy(m) for m in models], images, hp, [5, 6], masks)
    assert_close_results(batched, separate)
    assert batched[0].final["bn.num_batches_tracked"] == 6
    assert not torch.equal(batched[0].final["bn.running_mean"], batched[1].final["bn.running_mean"])


def test_batched_augmentation_equals_one_batch_at_a_time():
    x = torch.randn(3 * 5, 3, 8, 8)
    seeds = [11, 2**64 - 1, 0]
    expected = torch.cat([augment_batch(x[5 * k:5 * (k + 1)], seed=s) for k, s in enumerate(seeds)])
    assert torch.equal(augment_batches(x, seeds), expected)
    with pytest.raises(ValueError, match="equal batches"):
        augment_batches(x, [1, 2])


def test_batched_refuses_dropout_before_anything_is_written(tmp_path, capsys):
    exp = tmp_path / "exp"
    assert lth("lottery", "--batched", "--model", "conv2", "--dropout", "0.5", "--output-dir", exp, "--quiet") == 2
    assert "dropout" in capsys.readouterr().err
    assert not exp.exists()
