"""Pruning at initialization: SNIP, GraSP, SynFlow and random scores against hand computations."""

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
from conftest import synthetic_splits

from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.masking import density, full_masks
from lottery_ticket.pruning import keep_highest
from lottery_ticket.strategies import PruningContext, prune_at_init
from lottery_ticket.strategies.grasp import grasp_scores
from lottery_ticket.strategies.snip import snip_scores
from lottery_ticket.strategies.synflow import synflow_schedule, synflow_scores


class TwoLayer(nn.Module):
    """z = W2 W1 x: no biases, no nonlinearity, so gradients are easy to write down."""

    def __init__(self, inputs=2, hidden=2, classes=2, bias=False):
        super().__init__()
        self.hidden = nn.Linear(inputs, hidden, bias=bias)
        self.output = nn.Linear(hidden, classes, bias=bias)

    def forward(self, x):
        return self.output(self.hidden(x.flatten(1)))


def two_layer(seed=0, **kw):
    torch.manual_seed(seed)
    return TwoLayer(**kw).double()


def test_snip_scores_are_abs_weight_times_hand_computed_gradient():
    model = two_layer()
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    w1, w2 = model.hidden.weight.detach(), model.output.weight.detach()
    h = x @ w1.T
    dz = (torch.softmax(h @ w2.T, 1) - nn.functional.one_hot(y, 2)) / len(y)  # d mean CE / d logits
    grad_w2 = dz.T @ h
    grad_w1 = (dz @ w2).T @ x
    scores = snip_scores(model, full_masks(model), x, y)
    assert torch.allclose(scores["output.weight"], (grad_w2 * w2).abs())
    assert torch.allclose(scores["hidden.weight"], (grad_w1 * w1).abs())


def test_snip_scores_the_masked_network():
    model = two_layer()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    masks = full_masks(model)
    masks["hidden.weight"][0, 0] = 0
    scores = snip_scores(model, masks, x, y)
    assert scores["hidden.weight"][0, 0] == 0  # w = 0 in the masked network
    assert model.hidden.weight[0, 0] != 0  # the caller's network is not changed


def test_grasp_hessian_gradient_product_matches_the_full_hessian():
    model = two_layer(seed=3)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    temperature = 2.0
    w1, w2 = model.hidden.weight.detach(), model.output.weight.detach()

    def loss(theta):  # the two halves' losses, as GraSP's code sums them
        a, b = theta[:4].view(2, 2), theta[4:].view(2, 2)
        out = [nn.functional.cross_entropy((x[s] @ a.T @ b.T) / temperature, y[s]) for s in (slice(0, 3), slice(3, 6))]
        return out[0] + out[1]

    theta = torch.cat([w1.flatten(), w2.flatten()])
    hessian = torch.autograd.functional.hessian(loss, theta)
    gradient = torch.autograd.functional.jacobian(loss, theta)
    expected = -theta * (hessian @ gradient)
    scores = grasp_scores(model, full_masks(model), x, y, temperature)
    assert torch.allclose(scores["hidden.weight"].flatten(), expected[:4])
    assert torch.allclose(scores["output.weight"].flatten(), expected[4:])


def test_synflow_conserves_flow_per_layer_in_float64():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False),
                          nn.ReLU(), nn.Linear(3, 2, bias=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = synflow_scores(model, full_masks(model), (5,))
    sums = [scores[name].sum() for name in ("1.weight", "3.weight", "5.weight")]
    assert all(s.dtype == torch.float64 for s in scores.values())
    assert torch.allclose(torch.stack(sums), sums[0].expand(3), rtol=1e-12)
    # R = 1^T |W3| |W2| |W1| 1, and each layer's scores sum to R (Tanaka et al. 2020, Theorem 1)
    w = [before[f"{i}.weight"].double().abs() for i in (1, 3, 5)]
    assert torch.allclose(sums[0], (w[2] @ w[1] @ w[0] @ torch.ones(5, dtype=torch.float64)).sum())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # signed weights kept


def test_synflow_schedule_is_exponential_and_ends_exactly():
    assert synflow_schedule(1000, 10, 4) == [316, 100, 32, 10]
    assert synflow_schedule(1000, 10, 1) == [10]
    assert len(synflow_schedule(266200, 13310, 100)) == 100


def hp(**pruning):
    h = preset_hparams("paper")
    return replace(h, pruning=replace(h.pruning, **pruning))


def context(model, masks=None, **kw):
    return PruningContext(masks=masks or full_masks(model), weights=model.state_dict(), hp=kw.pop("hp", hp()),
                          architecture=model, **kw)


def test_keep_highest_inversion_negates_signed_scores():
    masks = {"a": torch.ones(5)}
    scores = {"a": torch.tensor([-3.0, -1.0, 0.0, 2.0, 5.0])}
    assert keep_highest(masks, scores, 2)["a"].tolist() == [0, 0, 0, 1, 1]
    # the lowest scores, including the most negative (1/score would rank -1 below -3, and 0 as inf)
    assert keep_highest(masks, scores, 2, invert=True)["a"].tolist() == [1, 1, 0, 0, 0]
    assert keep_highest(masks, scores, 3, invert=True)["a"].tolist() == [1, 1, 1, 0, 0]


def test_keep_highest_keeps_masked_weights_masked():
    masks = {"a": torch.tensor([1.0, 0.0, 1.0, 1.0]), "b": torch.tensor([1.0, 1.0])}
    scores = {"a": torch.tensor([1.0, 99.0, 2.0, 3.0]), "b": torch.tensor([0.5, 4.0])}
    kept = keep_highest(masks, scores, 3)
    assert kept["a"].tolist() == [0, 0, 1, 1] and kept["b"].tolist() == [0, 1]  # 99 was masked: stays so
    with pytest.raises(LotteryError, match="only 5 remain"):
        keep_highest(masks, scores, 6)


def test_ties_pruned_in_position_order():
    masks = {"a": torch.ones(3), "b": torch.ones(3)}
    scores = {"a": torch.ones(3), "b": torch.ones(3)}
    kept = keep_highest(masks, scores, 4, allow_collapse=True)
    assert kept["a"].tolist() == [0, 0, 1] and kept["b"].tolist() == [1, 1, 1]


def test_layer_collapse_is_an_error_unless_allowed():
    masks = {"a": torch.ones(3), "b": torch.ones(3)}
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([1.0, 2.0, 3.0])}
    with pytest.raises(LotteryError, match="layer collapse.*'?a'?"):
        keep_highest(masks, scores, 3)
    assert keep_highest(masks, scores, 3, allow_collapse=True)["a"].sum() == 0


def test_nan_scores_are_refused():
    with pytest.raises(LotteryError, match="finite"):
        keep_highest({"a": torch.ones(2)}, {"a": torch.tensor([float("nan"), 1.0])}, 1)


@pytest.mark.parametrize("strategy", ["snip", "grasp", "synflow", "random"])
def test_strategies_prune_to_the_density_deterministically(strategy):
    splits = synthetic_splits(n_train=300, n_val=50, n_test=50)
    model = TwoLayer(inputs=784, hidden=20, classes=10, bias=True)
    h = hp(synflow_iterations=5, score_per_class=2)
    masks = prune_at_init(h, model, splits, strategy, 0.25, seed=7)
    assert set(masks) == {"hidden.weight", "output.weight"}  # never the biases
    assert sum(int(m.sum()) for m in masks.values()) == round(0.25 * (784 * 20 + 20 * 10))
    again = prune_at_init(h, model, splits, strategy, 0.25, seed=7)
    assert all(torch.equal(masks[k], again[k]) for k in masks)


def test_data_dependent_scores_use_training_data_only():
    splits = synthetic_splits(n_train=300, n_val=50, n_test=50)
    model = TwoLayer(inputs=784, hidden=20, classes=10)
    h = hp(score_per_class=2)
    masks = prune_at_init(h, model, splits, "snip", 0.1, seed=1)
    splits.validation_x.normal_()
    splits.test_x.normal_()
    assert all(torch.equal(masks[k], v) for k, v in prune_at_init(h, model, splits, "snip", 0.1, seed=1).items())
    ctx = context(model, hp=h, splits=splits, seed=1)
    x, y = ctx.score_examples()
    assert y.tolist() == sorted(y.tolist()) and torch.bincount(y).tolist() == [2] * 10  # 2 per class, by class
    assert all(any(torch.equal(row, t) for t in splits.train_x) for row in x[:3])
    assert not torch.equal(context(model, hp=h, splits=splits, seed=2).score_examples()[0], x)


def test_lottery_level_removes_the_global_fraction():
    model = TwoLayer(inputs=10, hidden=10, classes=10)
    masks = full_masks(model)
    masks["hidden.weight"][0] = 0  # 190 of 200 remain: the level keeps 152 of them
    ctx = context(model, masks, hp=hp(global_fraction=0.2, synflow_iterations=3),
                  splits=synthetic_splits(n_train=30, shape=(10,)))
    from lottery_ticket.strategies import STRATEGIES

    masks = STRATEGIES.get("synflow")(ctx)
    assert density(masks) == 152 / 200 and masks["hidden.weight"][0].sum() == 0
