"""The hand-written fully-connected step (fast_mlp) against the general autograd step.

The fast step runs the same kernels as autograd in the same formulation (addmm forward, the
cross-entropy backward functions, g^T h and g W products, the ReLU threshold_backward), so on one
thread it is measured BITWISE identical to `trainer.autograd_step`: gradients, losses, correct
counts, and weights after 300 training steps (Adam; SGD with momentum and weight decay). The
asserted tolerances (float32) keep a little headroom for other BLAS builds:

* one step's gradients: max |fast - autograd| <= 1e-6 * max |autograd grad| (measured 0 over
  80 random cases; an earlier closed-form (softmax - onehot) / batch gradient measured 2.6e-7);
* loss: within 1e-6 relative (measured 0); correct counts: identical;
* weights after 300 steps through `trainer.train(fast=False)` vs `trainer.train(fast=True)`:
  within 1e-6 absolute (measured 0); logged losses within 1e-7, accuracies identical.
  Exactness matters here: ANY rounding difference can flip a ReLU whose pre-activation is within
  rounding distance of 0, after which trajectories separate (with the closed-form gradient,
  about half of the seeds tried ended 1e-5..1e-2 apart after 300 steps);
* pruned weights: exactly 0, always.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import random_masks

from lottery_ticket import fast_mlp, trainer
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.masking import apply_masks, full_masks, gradient_mask_pairs, mask_gradients
from lottery_ticket.models import build_model
from lottery_ticket.models.fc import FullyConnected

GRAD_RTOL = 1e-6
WEIGHT_ATOL = 1e-6
LOSS_ATOL = 1e-7


def autograd_grads(model, masks, x, y):
    """Gradients exactly as trainer.autograd_step computes them (before the optimizer update)."""
    model.zero_grad(set_to_none=False)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    mask_gradients([(p.grad, m) for p, m in gradient_mask_pairs(model, masks)])
    return loss.detach(), (logits.argmax(1) == y).sum(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "in_features, hidden, batch",
    [(784, [300, 100], 60), (784, [300, 100], 7), (20, [16, 12, 8], 5), (20, [], 3)],
)
def test_gradients_loss_and_correct_match_autograd(in_features, hidden, batch):
    torch.manual_seed(0)
    model = FullyConnected(in_features, hidden, 10)
    masks = random_masks(model, 0.7, seed=1)
    apply_masks(model, masks)
    x = torch.randn(batch, 1, in_features)
    y = torch.randint(0, 10, (batch,))
    loss, correct, expected = autograd_grads(copy.deepcopy(model), masks, x, y)

    # SGD with lr 0 leaves the weights unchanged, so .grad holds the step's masked gradients.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    assert fast_mlp.supports(model, optimizer)
    fast_loss, fast_correct = fast_mlp.make_step(model, optimizer, masks)(x, y)
    assert fast_loss.shape == () and fast_correct.shape == () and fast_correct.dtype == torch.int64
    assert not fast_loss.requires_grad
    torch.testing.assert_close(fast_loss, loss, rtol=1e-6, atol=0)
    assert int(fast_correct) == int(correct)
    for name, p in model.named_parameters():
        scale = expected[name].abs().max().item()
        assert (p.grad - expected[name]).abs().max().item() <= GRAD_RTOL * max(scale, 1e-30), name
        if name in masks:
            assert torch.all(p.grad[masks[name] == 0] == 0), name


def test_gradients_over_many_batches_match_autograd():
    """The measured bound behind GRAD_RTOL, over several random batches of LeNet-300-100."""
    model = build_model("lenet_300_100", seed=3)
    masks = random_masks(model, 0.5, seed=4)
    apply_masks(model, masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = fast_mlp.make_step(model, optimizer, masks)
    g = torch.Generator().manual_seed(5)
    worst = 0.0
    for _ in range(5):
        x, y = torch.randn(60, 1, 28, 28, generator=g), torch.randint(0, 10, (60,), generator=g)
        _, _, expected = autograd_grads(copy.deepcopy(model), masks, x, y)
        step(x, y)
        for name, p in model.named_parameters():
            worst = max(worst, (p.grad - expected[name]).abs().max().item() / expected[name].abs().max().item())
    assert worst <= GRAD_RTOL


def training_hparams(**training):
    hp = preset_hparams("paper")
    return replace(hp, training=replace(hp.training, iterations=300, eval_every=100, **training))


@pytest.mark.parametrize(
    "training",
    [dict(optimizer="adam", lr=1.2e-3), dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4)],
    ids=["adam", "sgd-momentum-wd"],
)
def test_training_matches_autograd_path(splits, training):
    hp = training_hparams(**training)
    model = build_model("lenet_300_100", seed=1)
    masks = random_masks(model, 0.7, seed=2)
    slow = trainer.train(copy.deepcopy(model), splits, hp, order_seed=3, masks=masks, fast=False)
    fast = trainer.train(copy.deepcopy(model), splits, hp, order_seed=3, masks=masks, fast=True)
    for name, value in slow.final.items():
        assert (fast.final[name] - value).abs().max().item() <= WEIGHT_ATOL, name
        if name in masks:
            assert torch.all(fast.final[name][masks[name] == 0] == 0), name  # exactly 0
    assert [r[:2] for r in fast.metrics] == [r[:2] for r in slow.metrics]
    for (_, _, loss_a, acc_a), (_, _, loss_b, acc_b) in zip(slow.metrics, fast.metrics, strict=True):
        assert abs(loss_a - loss_b) <= LOSS_ATOL and acc_a == acc_b
    # The run learned something (the toy task is learnable), so the comparison is not vacuous.
    assert fast.metrics[-1][3] > 0.5


def test_trainer_uses_the_fast_step_for_fc_models_only():
    model = build_model("lenet_300_100", seed=0)
    optimizer = torch.optim.Adam(model.parameters(), foreach=True)
    step = trainer.make_step(model, optimizer, full_masks(model), fast=True)
    assert step.__module__ == "lottery_ticket.fast_mlp"
    assert trainer.make_step(model, optimizer, full_masks(model), fast=False).__module__ == "lottery_ticket.trainer"


class Subclass(FullyConnected):
    def forward(self, x):
        return super().forward(x) * 2


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def test_supports_is_false_outside_plain_fc_models():
    lenet = build_model("lenet_300_100", seed=0)
    adam = torch.optim.Adam(lenet.parameters())
    assert fast_mlp.supports(lenet, adam)
    assert fast_mlp.supports(lenet, torch.optim.SGD(lenet.parameters(), lr=0.1, momentum=0.9))
    conv = build_model("conv2", seed=0, input_shape=(3, 32, 32))
    assert not fast_mlp.supports(conv, torch.optim.Adam(conv.parameters()))
    custom = Custom()
    assert not fast_mlp.supports(custom, torch.optim.Adam(custom.parameters()))
    sub = Subclass(20, [8], 10)
    assert not fast_mlp.supports(sub, torch.optim.Adam(sub.parameters()))
    assert not fast_mlp.supports(lenet, torch.optim.RMSprop(lenet.parameters()))
    double = copy.deepcopy(lenet).double()
    assert not fast_mlp.supports(double, torch.optim.Adam(double.parameters()))
    hooked = copy.deepcopy(lenet)
    hooked.hidden[0].register_forward_hook(lambda module, args, out: out)
    assert not fast_mlp.supports(hooked, torch.optim.Adam(hooked.parameters()))
    # The general path stays available for all of them.
    step = trainer.make_step(conv, torch.optim.Adam(conv.parameters()), full_masks(conv), fast=True)
    assert step.__module__ == "lottery_ticket.trainer"


def test_pruned_weights_stay_exactly_zero_and_zero_grad_is_harmless():
    model = build_model("lenet_300_100", seed=0)
    masks = random_masks(model, 0.2, seed=1)
    apply_masks(model, masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3, foreach=True)
    step = fast_mlp.make_step(model, optimizer, masks)
    g = torch.Generator().manual_seed(0)
    for i in range(50):
        if i == 25:
            optimizer.zero_grad(set_to_none=True)  # grads are recreated, not written into None
        step(torch.randn(16, 784, generator=g), torch.randint(0, 10, (16,), generator=g))
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][mask == 0] == 0), name
        assert torch.any(params[name][mask == 1] != 0), name


def test_resume_with_fast_path_equals_uninterrupted_run(splits, tmp_path):
    """The optimizer's state dict is torch's own, so checkpoint/resume works unchanged."""
    hp = training_hparams(optimizer="adam", lr=1.2e-3)
    model = build_model("lenet_300_100", seed=1)
    masks = random_masks(model, 0.7, seed=2)
    whole = trainer.train(copy.deepcopy(model), splits, hp, order_seed=3, masks=masks, fast=True)
    out = tmp_path / "run"
    trainer.train(copy.deepcopy(model), splits, hp, order_seed=3, masks=masks, fast=True, output_dir=out,
                  stop_after=150)
    resumed = trainer.train(copy.deepcopy(model), splits, hp, order_seed=3, masks=masks, fast=True,
                            output_dir=out)
    for name, value in whole.final.items():
        assert torch.equal(resumed.final[name], value), name
    assert resumed.metrics == whole.metrics


def test_masks_of_all_ones_are_not_multiplied_into_gradients_and_change_nothing():
    """A dense run skips the gradient masking (x * 1 == x bitwise): the same weights as a step
    that multiplies every gradient by its mask of ones."""
    model = build_model("lenet_300_100", seed=0)
    masks = full_masks(model)
    assert gradient_mask_pairs(model, masks) == []
    masks["hidden.0.weight"][0, 0] = 0.0
    [(param, mask)] = gradient_mask_pairs(model, masks)
    assert param is model.hidden[0].weight and torch.equal(mask, masks["hidden.0.weight"])
    dense, ones = build_model("lenet_300_100", seed=0), build_model("lenet_300_100", seed=0)
    hp = preset_hparams("paper")
    full = full_masks(dense)
    step = trainer.make_step(dense, trainer.make_optimizer(dense, hp.training), full)
    ones_optimizer = torch.optim.Adam(ones.parameters(), lr=hp.training.lr, fused=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(60, 1, 28, 28, generator=g), torch.randint(0, 10, (60,), generator=g)
        step(x, y)
        ones_optimizer.zero_grad(set_to_none=False)
        F.cross_entropy(ones(x), y).backward()
        for name, p in ones.named_parameters():
            if name in full:
                p.grad.mul_(full[name])
        ones_optimizer.step()
    for p, q in zip(dense.parameters(), ones.parameters(), strict=True):
        assert torch.equal(p, q)
