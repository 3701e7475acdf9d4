import pytest
import torch
import torch.nn as nn
from conftest import random_masks

from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import Hparams, TrainingHparams
from lottery_ticket.masking import (
    apply_presets,
    check_masks,
    density,
    full_masks,
    intersection,
    layer_kinds,
    load_masks,
    prunable_names,
    union,
)
from lottery_ticket.models import build_model
from lottery_ticket.store import save_tensors
from lottery_ticket.trainer import train


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)
        self.extra = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


def test_prunable_rule_picks_linear_and_conv_weights_only():
    model = Custom()
    assert prunable_names(model) == ["conv.weight", "head.weight"]
    assert layer_kinds(model) == {"conv.weight": "conv", "head.weight": "output"}
    lenet = build_model("lenet_300_100", seed=0)
    assert layer_kinds(lenet) == {"hidden.0.weight": "fc", "hidden.1.weight": "fc", "output.weight": "output"}


def test_check_masks_rejects_wrong_names_shapes_and_values():
    model = build_model("lenet_300_100", seed=0)
    good = full_masks(model)
    check_masks(good, model)
    with pytest.raises(LotteryError, match="unknown or unprunable"):
        check_masks({**good, "hidden.0.bias": torch.ones(300)}, model)
    with pytest.raises(LotteryError, match="shape"):
        check_masks({**good, "output.weight": torch.ones(10, 99)}, model)
    bad = dict(good)
    bad["output.weight"] = good["output.weight"] * 0.5
    with pytest.raises(LotteryError, match="not binary"):
        check_masks(bad, model)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(
    "optimizer",
    [dict(optimizer="adam", lr=1e-2, weight_decay=1e-3), dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3)],
)
def test_pruned_weights_stay_exactly_zero_through_training(splits, optimizer, fast):
    model = build_model("lenet_300_100", seed=1)
    masks = random_masks(model, 0.5, seed=0)
    hp = Hparams(training=TrainingHparams(iterations=50, eval_every=25, **optimizer))

    result = train(model, splits, hp, order_seed=0, masks=masks, fast=fast)
    for name, mask in masks.items():
        assert torch.all(result.final[name][mask == 0] == 0)
        assert torch.all(result.initial[name][mask == 0] == 0)
        assert torch.any(result.final[name][mask == 1] != result.initial[name][mask == 1])


def test_optimizer_state_of_pruned_weights_stays_zero(splits):
    from lottery_ticket.masking import apply_masks
    from lottery_ticket.trainer import autograd_step, make_optimizer

    model = build_model("lenet_300_100", seed=2)
    masks = random_masks(model, 0.5, seed=1)
    apply_masks(model, masks)
    for t in (TrainingHparams(optimizer="adam", weight_decay=0.1), TrainingHparams(optimizer="sgd", momentum=0.9, weight_decay=0.1)):
        opt = make_optimizer(model, t)
        step = autograd_step(model, opt, masks)
        for i in range(5):
            step(splits.train_x[i * 60:(i + 1) * 60], splits.train_y[i * 60:(i + 1) * 60])
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            state = opt.state[params[name]]
            for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                if key in state:
                    assert torch.all(state[key][mask == 0] == 0), key


def test_union_and_intersection():
    a = {"w": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    b = {"w": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    assert union(a, b)["w"].tolist() == [1, 1, 1, 0]
    assert intersection(a, b)["w"].tolist() == [1, 0, 0, 0]
    with pytest.raises(LotteryError):
        union(a, {"v": torch.ones(4)})


def test_load_masks_from_dict_path_and_list(tmp_path):
    a = {"w": torch.tensor([1.0, 0.0, 0.0])}
    b = {"w": torch.tensor([0.0, 0.0, 1.0])}
    save_tensors(tmp_path / "a.safetensors", a)
    save_tensors(tmp_path / "b.safetensors", b)
    assert torch.equal(load_masks(a)["w"], a["w"])
    assert torch.equal(load_masks(tmp_path / "a.safetensors")["w"], a["w"])
    assert load_masks([tmp_path / "a.safetensors", b])["w"].tolist() == [1, 0, 1]
    assert density(load_masks(a)) == pytest.approx(1 / 3)


def test_presets_set_values_and_reject_unknown_tensors():
    model = build_model("lenet_300_100", seed=0)
    other = build_model("lenet_300_100", seed=5)
    apply_presets(model, other.state_dict())
    assert torch.equal(model.hidden[0].weight, other.hidden[0].weight)
    with pytest.raises(LotteryError, match="unknown tensor"):
        apply_presets(model, {"nope": torch.zeros(1)})
    with pytest.raises(LotteryError, match="shape"):
        apply_presets(model, {"output.bias": torch.zeros(3)})
