"""Beyond LeNet: Conv-2/4/6, VGG-19 and ResNet-18 with masks and pruning, late rewinding end to end,
CIFAR-10 smoke runs, control runs with a conv net, and the CLI's device checks.

Kept fast on a loaded 2-core CPU: synthetic 3x32x32 images of a handful of examples for the
architecture checks, CIFAR-10 loaded once per module and cut down to small subsets (the CLI's data
loader is replaced by one returning the subset), a few iterations per run.
"""

import math
from dataclasses import replace

import pytest
import torch
from conftest import lth, real_data_root, synthetic_splits

from lottery_ticket import layout, runner
from lottery_ticket.cli import _check_device
from lottery_ticket.data import Splits, load_dataset
from lottery_ticket.data.order import TrainingOrder
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import DatasetHparams, Hparams, TrainingHparams, preset_hparams
from lottery_ticket.layout.files import read_metrics
from lottery_ticket.masking import full_masks, layer_kinds
from lottery_ticket.models import build_model
from lottery_ticket.pruning import prune_count
from lottery_ticket.store import load_tensors, read_json
from lottery_ticket.trainer import train

CIFAR_SHAPE = (3, 32, 32)
CONV_MODELS = ("conv2", "conv4", "conv6", "vgg19", "resnet18")
OPTIMIZERS = {
    # Large steps and weight decay: a pruned weight that received any update would be visibly nonzero.
    "sgd_momentum_wd": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adam_wd": dict(optimizer="adam", lr=1e-3, weight_decay=1e-2),
}


def rows_of(metrics, split):
    return {it: (loss, acc) for it, s, loss, acc in metrics if s == split}


# --------------------------------------------------------------------------- 1. masks and pruning


@pytest.fixture(scope="module")
def images():
    """8 training images of 3x32x32 (4 batches of 2), 2 for validation, 2 for test."""
    return synthetic_splits(n_train=8, n_val=2, n_test=2, shape=CIFAR_SHAPE, seed=0)


def half_masks(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """About half of every prunable tensor pruned, at seeded random positions."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.rand(m.shape, generator=generator) < 0.5).float()
            for name, m in full_masks(model).items()}


def build(name, seed=0):
    return build_model(name, seed=seed, input_shape=CIFAR_SHAPE)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("name", CONV_MODELS)
def test_pruned_conv_weights_stay_exactly_zero_through_training(images, name, optimizer):
    model = build(name, seed=1)
    masks = half_masks(model)
    kinds = layer_kinds(model)
    assert sum(kind == "conv" for kind in kinds.values()) >= 2
    iterations = 2 if name == "vgg19" else 3  # VGG-19 has 20M weights: two steps (momentum acts in the 2nd)
    hp = Hparams(dataset=DatasetHparams(batch_size=2),
                 training=TrainingHparams(iterations=iterations, eval_every=iterations, **OPTIMIZERS[optimizer]))
    result = train(model, images, hp, order_seed=0, masks=masks)
    for tensor, mask in masks.items():
        pruned = mask == 0
        assert pruned.any() and (~pruned).any()
        assert torch.all(result.initial[tensor][pruned] == 0), tensor
        assert torch.all(result.final[tensor][pruned] == 0), (tensor, kinds[tensor])
        # the kept weights did train (so the zeros above are not just an untouched network)
        assert not torch.equal(result.final[tensor][~pruned], result.initial[tensor][~pruned]), tensor


def test_layer_kinds_of_conv_models():
    conv2 = layer_kinds(build("conv2"))
    assert conv2 == {"convs.0.weight": "conv", "convs.1.weight": "conv", "hidden.0.weight": "fc",
                     "hidden.1.weight": "fc", "output.weight": "output"}
    for name, convs in (("conv4", 4), ("conv6", 6), ("vgg19", 16), ("resnet18", 21)):
        kinds = layer_kinds(build(name))
        assert sum(k == "conv" for k in kinds.values()) == convs, name
        output = "output.weight" if name.startswith("conv") else "fc.weight"
        assert [n for n, k in kinds.items() if k == "output"] == [output], name


def test_layerwise_pruning_conv2_uses_conv_fc_and_output_fractions():
    model = build("conv2", seed=3)
    hp = preset_hparams("paper", "conv2")
    p = hp.pruning
    assert (p.strategy, p.conv_fraction, p.fc_fraction, p.output_fraction) == ("layerwise", 0.1, 0.2, 0.1)
    weights = model.state_dict()
    masks = runner.pruner(hp, model)(full_masks(model), weights)
    expected = {  # remaining after one level: n - floor(f * n + 0.5)
        "convs.0.weight": 1728 - 173,  # 64x3x3x3, conv 10%
        "convs.1.weight": 36864 - 3686,  # 64x64x3x3, conv 10%
        "hidden.0.weight": 4194304 - 838861,  # 256x16384, fc 20%
        "hidden.1.weight": 65536 - 13107,  # 256x256, fc 20%
        "output.weight": 2560 - 256,  # 10x256, output 10%
    }
    assert {n: int(m.sum()) for n, m in masks.items()} == expected
    for n, m in masks.items():  # per layer: the smallest magnitudes went
        magnitude = weights[n].abs()
        assert magnitude[m == 0].max() <= magnitude[m == 1].min(), n


@pytest.mark.parametrize("name", ["conv4", "conv6"])
def test_layerwise_pruning_fractions_of_the_conv4_and_conv6_presets(name):
    model = build(name, seed=3)
    hp = preset_hparams("paper", name)
    rate = {"conv": hp.pruning.conv_fraction, "fc": hp.pruning.fc_fraction, "output": hp.pruning.output_fraction}
    assert rate == {"conv": 0.15 if name == "conv6" else 0.1, "fc": 0.2, "output": 0.1}
    before = full_masks(model)
    after = runner.pruner(hp, model)(before, model.state_dict())
    for n, kind in layer_kinds(model).items():
        size = before[n].numel()
        assert int(after[n].sum()) == size - math.floor(rate[kind] * size + 0.5), n


@pytest.mark.parametrize("name", CONV_MODELS)
def test_global_pruning_never_prunes_the_output_layer_and_prunes_the_exact_count(name):
    model = build(name, seed=2)
    hp = preset_hparams("paper", name)
    if name in ("vgg19", "resnet18"):  # the paper's presets: global 20%, never prune fc.weight
        frozen = hp.pruning.never_prune  # (and resnet18's two 1x1 shortcuts, see test_presets_fidelity)
        assert (hp.pruning.strategy, hp.pruning.global_fraction) == ("global", 0.2)
        assert frozen == "fc.weight" if name == "vgg19" else frozen.startswith("fc.weight,")
    else:
        frozen = "output.weight"
        hp = replace(hp, pruning=replace(hp.pruning, strategy="global", global_fraction=0.2, never_prune=frozen))
    weights = model.state_dict()
    prune = runner.pruner(hp, model)
    masks = full_masks(model)
    frozen = frozen.split(",")
    others = sorted(n for n in masks if n not in frozen)
    new = prune(masks, weights)
    for n in frozen:
        assert torch.equal(new[n], masks[n]) and bool(new[n].all())
    remaining = sum(masks[n].numel() for n in others)
    kept = sum(int(new[n].sum()) for n in others)
    assert remaining - kept == prune_count(0.2, remaining) == math.floor(0.2 * remaining + 0.5)
    # one threshold across layers: every pruned magnitude <= every kept magnitude
    pruned_max = max(float(weights[n].abs()[new[n] == 0].max()) for n in others if not new[n].all())
    kept_min = min(float(weights[n].abs()[new[n] == 1].min()) for n in others)
    assert pruned_max <= kept_min
    rates = [1 - float(new[n].mean()) for n in others]
    assert max(rates) - min(rates) > 0.05  # global, not per layer: the layers lose different shares


def test_global_never_prune_must_name_a_tensor_of_the_model():
    model = build("conv2")
    hp = preset_hparams("paper", "conv2")
    hp = replace(hp, pruning=replace(hp.pruning, strategy="global", never_prune="fc.weight"))
    with pytest.raises(LotteryError, match="fc.weight"):
        runner.pruner(hp, model)(full_masks(model), model.state_dict())


# --------------------------------------------------------------------------- 2. late rewinding (real MNIST)


@pytest.fixture(scope="module")
def rewinding(tmp_path_factory, mnist_root):
    """`lth lottery --model fc_100 --iterations 300 --eval-every 100 --rewind-iteration 100 --levels 1`."""
    root = mnist_root
    exp = tmp_path_factory.mktemp("rewind") / "fc_100"
    code = lth("lottery", "--model", "fc_100", "--iterations", 300, "--eval-every", 100,
               "--rewind-iteration", 100, "--levels", 1, "--output-dir", exp, "--data-root", root,
               "--quiet", "--workers", 1, "--threads", 1)
    assert code == 0
    return exp, root


def test_late_rewinding_level0_saves_the_iteration_100_weights(rewinding):
    exp, root = rewinding
    level0 = layout.run_dir(exp, 0, 0)
    assert layout.is_complete(level0)
    rewind = load_tensors(level0 / layout.REWIND)
    initial, final = load_tensors(level0 / layout.INITIAL), load_tensors(level0 / layout.FINAL)
    assert set(rewind) == set(initial)
    assert not torch.equal(rewind["hidden.0.weight"], initial["hidden.0.weight"])
    assert not torch.equal(rewind["hidden.0.weight"], final["hidden.0.weight"])

    # Train level 0 again, stopping at iteration 100: the same weights, bit for bit.
    record = read_json(exp / layout.EXPERIMENT_FILE)
    hp = Hparams.from_dict(record["hparams"])
    assert hp.training.rewind_iteration == 100 and hp.model.model == "fc_100"
    seeds = read_json(level0 / layout.RUN_FILE)["run"]["seeds"]  # this run's data order
    splits = runner.load_splits(hp, runner.Context(data_root=str(root)), seeds["labels"])
    again = train(runner.new_model(hp, splits, seeds["model"]), splits, hp, order_seed=seeds["order"],
                  stop_after=100)
    assert all(torch.equal(again.initial[k], initial[k]) for k in initial)
    assert all(torch.equal(again.final[k], rewind[k]) for k in rewind)
    assert all(torch.equal(again.rewind[k], rewind[k]) for k in rewind)


def test_late_rewinding_level1_starts_from_the_masked_rewind_weights_at_iteration_100(rewinding):
    exp, _ = rewinding
    rewind = load_tensors(layout.run_dir(exp, 0, 0) / layout.REWIND)
    level1 = layout.run_dir(exp, 0, 1)
    assert layout.is_complete(level1)
    masks, initial = load_tensors(level1 / layout.MASKS), load_tensors(level1 / layout.INITIAL)
    assert {n: int(m.sum()) for n, m in masks.items()} == {  # fc 20%, output 10%
        "hidden.0.weight": 78400 - 15680, "output.weight": 1000 - 100}
    for name, value in initial.items():
        expected = rewind[name] * masks[name] if name in masks else rewind[name]
        assert torch.equal(value, expected), name
    rows = read_metrics(level1 / layout.METRICS)
    assert min(it for it, *_ in rows) == 100
    assert sorted(rows_of(rows, "validation")) == sorted(rows_of(rows, "test")) == [100, 200, 300]
    assert sorted(rows_of(rows, "train_batch")) == [200, 300]
    assert sorted(rows_of(rows, "train")) == [300]
    final = load_tensors(level1 / layout.FINAL)
    assert all(torch.all(final[n][m == 0] == 0) for n, m in masks.items())


# --------------------------------------------------------------------------- 3. CIFAR-10


@pytest.fixture(scope="module")
def cifar():
    """The real CIFAR-10 (45,000 train / 5,000 validation / 10,000 test), loaded once (~2-3 s)."""
    root = real_data_root()
    if root is None or not (root / "cifar10" / "cifar-10-batches-py").is_dir():
        pytest.skip("real CIFAR-10 not found: set LTH_DATA")
    splits = load_dataset("cifar10", root, validation_size=5000, download=False, quiet=True)
    assert (len(splits.train_y), len(splits.validation_y), len(splits.test_y)) == (45000, 5000, 10000)
    return splits, root


def subset(splits: Splits, n_train: int, n_eval: int) -> Splits:
    """The first examples of each split (CIFAR-10's order is already mixed)."""
    return Splits(splits.name, splits.num_classes, splits.input_shape,
                  splits.train_x[:n_train], splits.train_y[:n_train],
                  splits.validation_x[:n_eval], splits.validation_y[:n_eval],
                  splits.test_x[:n_eval], splits.test_y[:n_eval])


def use_data(monkeypatch, small: Splits, seen: list | None = None) -> None:
    """Make the CLI train on `small` (evaluating a conv net on all 60,000 images takes minutes here)."""

    def load_splits(hp, ctx, labels_seed):
        assert hp.dataset.dataset == "cifar10" and hp.dataset.validation_size == 5000
        if seen is not None:
            seen.append(hp)
        return small

    monkeypatch.setattr(runner, "load_splits", load_splits)


def test_conv2_on_cifar10_learns_through_lth_train(cifar, tmp_path, monkeypatch):
    full, root = cifar
    seen: list = []
    use_data(monkeypatch, subset(full, 300, 200), seen)
    out = tmp_path / "conv2"
    # The paper's Conv-2 settings (Adam 2e-4, batch 60) for 12 iterations: about 2.30 -> 2.12, 9% -> 27%.
    code = lth("train", "--model", "conv2", "--preset", "paper", "--iterations", 12, "--eval-every", 12,
               "--validation-size", 5000, "--output-dir", out, "--data-root", root, "--quiet")
    assert code == 0
    (hp,) = seen
    assert (hp.model.model, hp.training.optimizer, hp.training.lr, hp.dataset.batch_size) == ("conv2", "adam", 2e-4, 60)
    rows = read_metrics(out / layout.METRICS)
    validation, test = rows_of(rows, "validation"), rows_of(rows, "test")
    assert sorted(validation) == sorted(test) == [0, 12]
    assert validation[12][0] < validation[0][0] - 0.1
    assert validation[12][1] > 0.15 and test[12][1] > 0.15  # chance is 0.10
    assert layout.is_complete(out)


@pytest.mark.parametrize("name, first_conv", [("conv2", "convs.0.weight"), ("resnet18", "conv.weight")])
def test_augment_on_cifar10(cifar, tmp_path, monkeypatch, name, first_conv):
    """`--augment` through `lth train`; resnet18's paper preset also brings SGD with momentum,
    weight decay, warmup and milestones (and augments by itself)."""
    full, root = cifar
    small = subset(full, 40, 10)
    use_data(monkeypatch, small)
    out = tmp_path / "augmented"
    code = lth("train", "--model", name, "--preset", "paper", "--augment", "--batch-size", 10,
               "--iterations", 2, "--eval-every", 2, "--output-dir", out, "--data-root", root, "--quiet")
    assert code == 0
    record = read_json(out / layout.RUN_FILE)
    hp = Hparams.from_dict(record["hparams"])
    assert hp.dataset.augment is True
    if name == "resnet18":
        assert (hp.training.optimizer, hp.training.momentum, hp.training.warmup_iterations) == ("sgd", 0.9, 20000)
    final = load_tensors(out / layout.FINAL)
    assert all(math.isfinite(loss) for _, _, loss, _ in read_metrics(out / layout.METRICS))
    # The same run without augmentation ends elsewhere: the flag reached the training loop. (The
    # runner's 63-bit order seeds used to overflow the augmentation seed: every --augment run failed.)
    seeds = record["run"]["seeds"]
    plain_hp = replace(hp, dataset=replace(hp.dataset, augment=False))
    plain = train(runner.new_model(plain_hp, small, seeds["model"]), small, plain_hp, order_seed=seeds["order"])
    assert torch.equal(plain.initial[first_conv], load_tensors(out / layout.INITIAL)[first_conv])
    assert not torch.equal(plain.final[first_conv], final[first_conv])


# --------------------------------------------------------------------------- 4. controls with a conv net


@pytest.fixture(scope="module")
def conv_controls(cifar, tmp_path_factory):
    """A tiny Conv-2 lottery experiment on a CIFAR-10 subset (levels 0-1), then `lth reinit` with
    the random and reuse_sign controls at level 1."""
    full, root = cifar
    exp = tmp_path_factory.mktemp("controls") / "conv2"
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_data(monkeypatch, subset(full, 20, 10))
        common = ["--data-root", root, "--quiet", "--workers", 1, "--threads", 1]
        assert lth("lottery", "--model", "conv2", "--batch-size", 10, "--iterations", 2, "--eval-every", 2,
                   "--levels", 1, "--output-dir", exp, *common) == 0
        for control in ("random", "reuse_sign"):
            assert lth("reinit", "--experiment", exp, "--control", control, "--levels", 1, *common) == 0
    return exp


def ticket_and_control(exp, control: str):
    """Level 1's ticket masks, the original initial weights, and the complete control run's dir."""
    ticket = load_tensors(layout.run_dir(exp, 0, 1) / layout.MASKS)
    original = load_tensors(layout.run_dir(exp, 0, 0) / layout.INITIAL)
    run = layout.run_dir(exp, 0, 1, control, 0)
    assert layout.is_complete(run)
    return ticket, original, run


def test_random_control_keeps_the_per_layer_counts_of_the_ticket(conv_controls):
    ticket, original, run = ticket_and_control(conv_controls, "random")
    assert read_json(run / layout.RUN_FILE)["run"]["control"] == "random"
    masks, initial, final = (load_tensors(run / f) for f in (layout.MASKS, layout.INITIAL, layout.FINAL))
    assert set(masks) == set(ticket)
    for name, mask in masks.items():
        assert int(mask.sum()) == int(ticket[name].sum()) < mask.numel(), name
        assert not torch.equal(mask, ticket[name]), name  # other positions
        assert torch.equal(initial[name], original[name] * mask), name  # original init, random mask
        assert torch.all(final[name][mask == 0] == 0), name
    for name in initial.keys() - masks.keys():
        assert torch.equal(initial[name], original[name]), name


def test_reuse_sign_control_keeps_the_original_signs(conv_controls):
    ticket, original, run = ticket_and_control(conv_controls, "reuse_sign")
    masks, initial = load_tensors(run / layout.MASKS), load_tensors(run / layout.INITIAL)
    assert set(masks) == set(ticket) and all(torch.equal(masks[n], ticket[n]) for n in ticket)
    for name, mask in masks.items():
        kept = mask == 1
        value, orig = initial[name][kept], original[name][kept]
        assert torch.all(initial[name][~kept] == 0), name
        assert torch.all(orig != 0) and torch.all(value != 0), name
        assert torch.equal(torch.sign(value), torch.sign(orig)), name  # every sign kept
        sample = value.abs()[:: max(1, value.numel() // 5000)]  # (hidden.0 has 4M weights)
        assert bool(torch.isin(sample, original[name].abs()).all()), name  # magnitudes reused
        assert not torch.equal(value, orig), name  # but resampled
    for name in initial.keys() - masks.keys():
        assert torch.equal(initial[name], original[name]), name


# --------------------------------------------------------------------------- 5. devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["train", "--output-dir"], ["lottery", "--output-dir"], ["reinit", "--experiment"]])
def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys, command):
    code = lth(*command, tmp_path / "exp", "--device", "cuda", "--quiet")
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "cuda" in err and "no CUDA GPU" in err
    assert not (tmp_path / "exp").exists()  # refused before anything was written


def test_bad_device_names_and_gpu_indices_are_user_errors(monkeypatch):
    with pytest.raises(LotteryError, match="unknown device"):
        _check_device("gpu")
    _check_device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _check_device("cuda")
    _check_device("cuda:1")
    with pytest.raises(LotteryError, match=r"cuda:2.*2 CUDA GPU"):
        _check_device("cuda:2")


def test_training_order_can_live_on_the_training_device():
    cpu = TrainingOrder(100, 10, seed=5)
    meta = TrainingOrder(100, 10, seed=5, device="meta")  # a device without data, standing in for a GPU
    for iteration in (0, 9, 10, 25):
        assert meta.batch(iteration).device.type == "meta"
        assert cpu.batch(iteration).device.type == "cpu"
    assert torch.equal(cpu.batch(3), TrainingOrder(100, 10, seed=5, device="cpu").batch(3))
