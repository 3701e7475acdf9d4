"""fast_optim.make_update: bitwise optimizer.step() for fused Adam/AdamW/SGD, fallbacks elsewhere."""

import copy

import pytest
import torch
import torch.nn as nn

from lottery_ticket.fast_optim import make_update, supports
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.models import build_model
from lottery_ticket.trainer import make_optimizer

OPTIMIZERS = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "adam_wd": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3, betas=(0.8, 0.95), eps=1e-6, fused=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2, fused=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, fused=True),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=5e-4, fused=True),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, fused=True),
    "sgd_dampening": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.5, dampening=0.3, fused=True),
}


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(13, 11), nn.ReLU(), nn.Linear(11, 5))


def set_grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def assert_same(a_model, a_opt, b_model, b_opt) -> None:
    for pa, pb in zip(a_model.parameters(), b_model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    sa, sb = a_opt.state_dict(), b_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for key, state in sa["state"].items():
        assert state.keys() == sb["state"][key].keys()
        for name, value in state.items():
            assert torch.equal(value, sb["state"][key][name]), (key, name)


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_update_is_bitwise_optimizer_step(kind):
    reference, fast = small_net(), small_net()
    reference_opt, fast_opt = OPTIMIZERS[kind](reference.parameters()), OPTIMIZERS[kind](fast.parameters())
    assert supports(fast_opt)
    update = make_update(fast_opt)
    for step in range(30):
        if step == 12:  # a schedule changes the learning rate between steps
            for opt in (reference_opt, fast_opt):
                opt.param_groups[0]["lr"] *= 0.3
        set_grads(reference, step)
        set_grads(fast, step)
        reference_opt.step()
        update()
        assert_same(reference, reference_opt, fast, fast_opt)


@pytest.mark.parametrize("kind", ["adam_wd", "sgd_momentum"])
def test_update_skips_the_python_step_after_the_first(kind, monkeypatch):
    model = small_net()
    optimizer = OPTIMIZERS[kind](model.parameters())
    calls = []
    original = optimizer.step
    monkeypatch.setattr(optimizer, "step", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    update = make_update(optimizer)
    for step in range(5):
        set_grads(model, step)
        update()
    assert len(calls) == 1  # only the first, which creates the state


def test_update_continues_bitwise_after_load_state_dict():
    """Resume: the state tensors are replaced by load_state_dict; updates must use the new ones."""
    reference, fast = small_net(), small_net()
    reference_opt = OPTIMIZERS["adam_wd"](reference.parameters())
    fast_opt = OPTIMIZERS["adam_wd"](fast.parameters())
    update = make_update(fast_opt)
    for step in range(6):
        set_grads(reference, step)
        reference_opt.step()
    fast.load_state_dict(reference.state_dict())
    fast_opt.load_state_dict(copy.deepcopy(reference_opt.state_dict()))
    for step in range(6, 15):
        set_grads(reference, step)
        set_grads(fast, step)
        reference_opt.step()
        update()
        assert_same(reference, reference_opt, fast, fast_opt)


def test_update_with_two_groups_and_a_parameter_without_gradient():
    def build(model):
        first, second = model[0], model[2]
        return torch.optim.Adam([{"params": first.parameters()}, {"params": second.parameters(), "lr": 3e-3}],
                                lr=1e-2, fused=True)

    reference, fast = small_net(), small_net()
    reference_opt, fast_opt = build(reference), build(fast)
    update = make_update(fast_opt)
    for step in range(10):
        set_grads(reference, step)
        set_grads(fast, step)
        if step >= 4:  # this bias stops receiving gradients: both must leave it and its state alone
            reference[2].bias.grad = None
            fast[2].bias.grad = None
        reference_opt.step()
        update()
        assert_same(reference, reference_opt, fast, fast_opt)


@pytest.mark.parametrize("build", [
    lambda ps: torch.optim.Adam(ps, lr=1e-2),  # not fused
    lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True, amsgrad=True),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True, maximize=True),
    lambda ps: torch.optim.Adam(ps, lr=torch.tensor(1e-2), fused=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: torch.optim.RMSprop(ps, lr=0.1),
])
def test_other_optimizers_use_their_own_step(build):
    optimizer = build(small_net().parameters())
    assert not supports(optimizer)
    assert make_update(optimizer) == optimizer.step


def test_step_hooks_still_run():
    reference, fast = small_net(), small_net()
    reference_opt, fast_opt = OPTIMIZERS["adam"](reference.parameters()), OPTIMIZERS["adam"](fast.parameters())
    update = make_update(fast_opt)
    seen = []
    fast_opt.register_step_post_hook(lambda opt, args, kwargs: seen.append(1))
    for step in range(4):
        set_grads(reference, step)
        set_grads(fast, step)
        reference_opt.step()
        update()
        assert_same(reference, reference_opt, fast, fast_opt)
    assert len(seen) == 4


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_trainers_optimizers_take_the_direct_path(optimizer):
    hp = preset_hparams("paper")
    training = hp.training if optimizer == "adam" else preset_hparams("vgg19").training
    assert supports(make_optimizer(build_model("lenet_300_100", seed=0), training))
