"""Issue 12 items 1, 6, 7, 8: the presets follow the paper (and the original code) exactly."""

from __future__ import annotations

import math
from argparse import Namespace

import pytest
import torch

from lottery_ticket import hparams as H
from lottery_ticket import runner
from lottery_ticket.cli import build_parser
from lottery_ticket.data.registry import DATASETS
from lottery_ticket.errors import LotteryError
from lottery_ticket.masking import full_masks, prunable_names
from lottery_ticket.models import build_model
from lottery_ticket.trainer import learning_rate, total_iterations


def parse(*argv):
    return H.hparams_from_args(build_parser().parse_args(["lottery", "--output-dir", "x", *argv]))


# ------------------------------------------------------------------ 1. ResNet-18


def test_resnet18_preset_is_lr_003_with_20k_warmup():
    t = H.preset_hparams("resnet18").training
    assert (t.lr, t.warmup_iterations, t.iterations, t.lr_milestones) == (0.03, 20000, 30000, "20000,25000")
    assert (t.optimizer, t.momentum, t.weight_decay) == ("sgd", 0.9, 1e-4)


def test_resnet18_prunes_only_the_3x3_convolutions():
    hp = H.preset_hparams("resnet18")
    model = build_model("resnet18", seed=0, input_shape=(3, 32, 32))
    frozen = H.never_prune(hp.pruning)
    shortcuts = [n for n in prunable_names(model) if "shortcut" in n]
    assert sorted(frozen) == sorted(["fc.weight", *shortcuts]) and len(shortcuts) == 2
    params = dict(model.named_parameters())
    pruned = [n for n in prunable_names(model) if n not in frozen]
    assert all(params[n].shape[-2:] == (3, 3) for n in pruned)
    assert sum(params[n].numel() for n in pruned) == 267_696
    masks = runner.pruner(hp, model)(full_masks(model), model.state_dict())
    for name in frozen:
        assert bool(masks[name].all()), name
    kept = sum(int(masks[n].sum()) for n in pruned)
    assert 267_696 - kept == math.floor(0.2 * 267_696 + 0.5)


def test_lth_models_shows_the_papers_prunable_counts(capsys):
    from lottery_ticket.cli import main

    assert main(["models"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "267,696" in lines["resnet18"]
    assert "266,200" in lines["lenet_300_100"]


def test_an_experiment_recorded_with_the_old_resnet18_preset_is_refused(tmp_path):
    old = H.preset_hparams("resnet18")
    old = H.Hparams(old.dataset, old.model, H.replace(old.training, lr=0.1),
                    H.replace(old.pruning, never_prune="fc.weight"))
    runner.prepare_experiment(tmp_path, old, seed=0)
    with pytest.raises(LotteryError) as error:
        runner.prepare_experiment(tmp_path, H.preset_hparams("resnet18"), seed=0)
    assert "training.lr: 0.1 -> 0.03" in str(error.value)
    assert "pruning.never_prune: 'fc.weight' -> " in str(error.value)


# ------------------------------------------------------------------ 6. original code


def test_original_code_preset_trains_on_all_60k_images_with_truncated_glorot():
    hp = H.preset_hparams("original-code")
    assert hp.dataset.validation_size == 0 and DATASETS.get("mnist").train_size == 60000
    assert hp.model.init == "glorot_truncated_normal"
    assert (hp.training.optimizer, hp.training.lr, hp.training.iterations) == ("sgd", 0.1, 50000)
    assert H.iterations_per_epoch(hp) == 60000 // 64


def test_glorot_truncated_normal_matches_tensorflow():
    """tf.contrib.layers.xavier_initializer(uniform=False), as the original code's model_fc.py:
    stddev sqrt(1.3 * 2/(fan_in+fan_out)), cut at 2 stddevs, so the variance is ~2/(fan_in+fan_out)."""
    model = build_model("lenet_300_100", seed=3, init="glorot_truncated_normal")
    w = model.fc1.weight if hasattr(model, "fc1") else next(m.weight for m in model.modules() if isinstance(m, torch.nn.Linear))
    fan_out, fan_in = w.shape
    bound = 2 * math.sqrt(1.3 * 2 / (fan_in + fan_out))
    w = w.detach()
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.95 * bound  # truncated, not a narrower normal
    assert float(w.var()) == pytest.approx(2 / (fan_in + fan_out), rel=0.02)
    again = build_model("lenet_300_100", seed=3, init="glorot_truncated_normal")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    plain = build_model("lenet_300_100", seed=3)
    assert not torch.equal(plain.state_dict()[next(iter(plain.state_dict()))], model.state_dict()[next(iter(model.state_dict()))])


# ------------------------------------------------------------------ 7. VGG-19 schedule in epochs


def test_vgg19_schedule_is_160_epochs_with_drops_at_80_and_120():
    hp = H.preset_hparams("vgg19")
    t = hp.training
    per_epoch = H.iterations_per_epoch(hp)
    assert per_epoch == 45000 // 64 == 703
    assert total_iterations(t, 45000, 64) == 112_480
    assert H.milestones(t, per_epoch) == [56_240, 84_360]
    assert learning_rate(t, 56_239, per_epoch) == pytest.approx(0.1)
    assert learning_rate(t, 56_240, per_epoch) == pytest.approx(0.01)
    assert learning_rate(t, 84_359, per_epoch) == pytest.approx(0.01)
    assert learning_rate(t, 84_360, per_epoch) == pytest.approx(0.001)
    assert learning_rate(t, 0, per_epoch) == pytest.approx(0.1 / 10000)  # 10K warmup iterations


def test_epoch_milestones_parse_and_validate():
    t = H.TrainingHparams(lr_milestones="2ep,30")
    assert H.milestones(t, 10) == [20, 30]
    with pytest.raises(ValueError):
        H.milestones(t)  # epochs need the epoch length
    for bad in ("3ep,20", "xep", "0ep"):
        with pytest.raises(LotteryError, match="--lr-milestones"):
            H.milestones(H.TrainingHparams(lr_milestones=bad), 10)
    with pytest.raises(LotteryError, match="--lr-milestones"):
        parse("--lr-milestones", "80ep,50000")  # 80 epochs of 916 iterations = 73,280 > 50,000


def test_iterations_flag_alone_overrides_a_presets_epochs():
    assert parse("--preset", "vgg19").training.epochs == 160
    hp = parse("--preset", "vgg19", "--iterations", "5")
    assert (hp.training.iterations, hp.training.epochs) == (5, 0)
    hp = parse("--preset", "vgg19", "--iterations", "5", "--epochs", "2")
    assert (hp.training.iterations, hp.training.epochs) == (5, 2)


# ------------------------------------------------------------------ 8. dropout presets


@pytest.mark.parametrize("name, lr, iterations", [("conv2", 3e-4, 20000), ("conv4", 2e-4, 25000), ("conv6", 2e-4, 30000)])
def test_dropout_presets(name, lr, iterations):
    hp = H.preset_hparams(f"{name}-dropout")
    plain = H.preset_hparams(name)
    assert (hp.model.model, hp.model.dropout, hp.training.lr, hp.training.iterations) == (name, 0.5, lr, iterations)
    assert hp.pruning == plain.pruning and hp.dataset == plain.dataset
    H.validate(hp)
    model = runner.new_model(hp, Namespace(num_classes=10, input_shape=(3, 32, 32)), seed=0)
    assert model.dropout is not None and model.dropout.p == 0.5
    assert f"{name}-dropout" in PRESET_TEXT()


def PRESET_TEXT() -> str:
    return "\n".join(f"{name}: {text}" for name, (_, text) in H.PRESETS.items())


def test_every_preset_cites_its_source():
    for name, (_, text) in H.PRESETS.items():
        assert "Figure" in text or "Section" in text or "original" in text, name


# ------------------------------------------------------------------ 10. the demo (`make run`)


def test_make_run_demo_reaches_pm_21_percent_with_a_reinit_control_there():
    """The demo's ticket is at the paper's Pm ~21% and its reinit control is trained at that level
    (the measured wall time and result are in the README next to `make run`)."""
    import re
    import shlex
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    body = makefile.split("\nrun: setup\n", 1)[1].split("\n\n", 1)[0]
    variables = dict(re.findall(r"^(\w+) :?= (.*)$", makefile, flags=re.M))
    body = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), body)
    commands = [shlex.split(line.strip())[1:] for line in body.splitlines() if line.strip()]
    lottery = next(c for c in commands if c[0] == "lottery")
    reinit = next(c for c in commands if c[0] == "reinit")
    hp = H.hparams_from_args(build_parser().parse_args(lottery))
    levels = int(lottery[lottery.index("--levels") + 1])
    model = build_model(hp.model.model, seed=0)
    prune = runner.pruner(hp, model)
    masks = full_masks(model)
    for _ in range(levels):
        masks = prune(masks, model.state_dict())
    pm = 100 * sum(float(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 20.0 <= pm <= 22.5
    assert str(levels) in reinit[reinit.index("--levels") + 1].split(",") and "reinit" in reinit
    assert hp.training.iterations >= 2 * 4000  # the unpruned network early-stops near 3-4K
