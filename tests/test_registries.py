"""Registries: pruning strategies, datasets and evaluation callbacks added by name, without editing
the loops; the built-ins are registered and give the same results as before."""

import csv
import io
from dataclasses import replace

import pytest
import torch
from conftest import lth, synthetic_splits

from lottery_ticket import callbacks, layout, runner
from lottery_ticket.data import load_dataset
from lottery_ticket.data.registry import DATASETS, register_dataset
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import PRESETS, Hparams, validate
from lottery_ticket.masking import full_masks
from lottery_ticket.models import build_model
from lottery_ticket.pruning import prune_global, prune_layerwise
from lottery_ticket.strategies import STRATEGIES, PruningContext, register_strategy
from lottery_ticket.trainer import train


def small_hp(**training) -> Hparams:
    hp = PRESETS["paper"][0]
    t = dict(iterations=40, eval_every=20)
    t.update(training)
    return replace(hp, training=replace(hp.training, **t), dataset=replace(hp.dataset, batch_size=20))


# --------------------------------------------------------------------------- pruning strategies


def test_builtin_strategies_are_registered_and_equal_the_pruning_functions():
    assert STRATEGIES.names()[:2] == ["layerwise", "global"]
    model = build_model("lenet_300_100", seed=1)
    weights, masks = model.state_dict(), full_masks(model)
    hp = PRESETS["paper"][0]
    layer = runner.pruner(hp, model)(masks, weights)
    fractions = {"hidden.0.weight": 0.2, "hidden.1.weight": 0.2, "output.weight": 0.1}
    expected = prune_layerwise(masks, weights, fractions)
    assert all(torch.equal(layer[k], expected[k]) for k in expected)
    hp = replace(hp, pruning=replace(hp.pruning, strategy="global", never_prune="output.weight"))
    glob = runner.pruner(hp, model)(masks, weights)
    expected = prune_global(masks, weights, 0.2, ["output.weight"])
    assert all(torch.equal(glob[k], expected[k]) for k in expected)


def test_unknown_strategy_names_the_registered_ones():
    hp = PRESETS["paper"][0]
    with pytest.raises(LotteryError, match="unknown strategy 'nope': --strategy must be one of layerwise, global"):
        validate(replace(hp, pruning=replace(hp.pruning, strategy="nope")))


def test_strategy_help_lists_the_registry(capsys):
    with pytest.raises(SystemExit):
        lth("lottery", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert "choices: layerwise, global" in out
    assert "choices: cifar10, fashion_mnist, mnist" in out
    assert "activations" in out


def test_a_data_dependent_strategy_gets_model_masks_hparams_and_data(mnist_root, tmp_path):
    """A SNIP-like strategy (|w * dL/dw| on training batches) plugs into `lth lottery` by name."""
    seen = []

    @register_strategy("test_saliency")
    def saliency(ctx: PruningContext):
        model = ctx.model
        assert all(torch.equal(model.state_dict()[k], ctx.weights[k]) for k in ctx.weights)
        model.zero_grad()
        for x, y in ctx.train_batches(2):
            torch.nn.functional.cross_entropy(model(x), y).backward()
        seen.append((ctx.hp.pruning.strategy, {k: int(m.sum()) for k, m in ctx.masks.items()}))
        out = {}
        for name, mask in ctx.masks.items():
            score = (model.get_parameter(name).grad * model.get_parameter(name)).abs() * mask
            keep = int(mask.sum()) // 2
            new = torch.zeros(mask.numel())
            new[score.flatten().argsort(descending=True)[:keep]] = 1.0
            out[name] = new.view_as(mask)
        return out

    try:
        exp = tmp_path / "exp"
        assert lth("lottery", "--strategy", "test_saliency", "--levels", 1, "--iterations", 20, "--eval-every", 10,
                   "--validation-size", 1000, "--quiet", "--workers", 1, "--no-download",
                   "--data-root", mnist_root, "--output-dir", exp) == 0
    finally:
        STRATEGIES._entries.pop("test_saliency")
    assert seen == [("test_saliency", {"hidden.0.weight": 235200, "hidden.1.weight": 30000, "output.weight": 1000})]
    from lottery_ticket.store import load_tensors

    masks = load_tensors(layout.run_dir(exp, 0, 1) / layout.MASKS)
    assert int(masks["hidden.1.weight"].sum()) == 15000


# --------------------------------------------------------------------------- datasets


def test_a_registered_dataset_loads_by_name_and_is_a_cli_choice(tmp_path):
    @register_dataset("test_tiny", train_size=100, input_shape=(1, 28, 28), num_classes=3)
    def read_tiny(root, *, download, mirrors, quiet):
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (120, 1, 4, 4), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 3, (120,), generator=g)
        return images[:100], labels[:100], images[100:], labels[100:]

    try:
        assert "test_tiny" in DATASETS
        splits = load_dataset("test_tiny", tmp_path, validation_size=10)
        assert (splits.num_classes, splits.input_shape, len(splits.train_y), len(splits.test_y)) == (3, (1, 4, 4), 90, 20)
        hp = PRESETS["paper"][0]
        validate(replace(hp, dataset=replace(hp.dataset, dataset="test_tiny", validation_size=10, batch_size=10)))
        with pytest.raises(LotteryError, match="less than the 100 test_tiny training images"):
            validate(replace(hp, dataset=replace(hp.dataset, dataset="test_tiny")))
    finally:
        DATASETS._entries.pop("test_tiny")
    with pytest.raises(LotteryError, match="unknown dataset 'test_tiny'; choose from cifar10, fashion_mnist, mnist"):
        load_dataset("test_tiny", tmp_path)


# --------------------------------------------------------------------------- evaluation callbacks


def _count_callback(model, iteration, splits):
    assert not model.training and torch.is_inference_mode_enabled()
    return [{"n": len(splits.validation_y), "w": float(model.output.weight.sum())}]


@pytest.mark.parametrize("fast", [True, False])
def test_callbacks_run_at_each_evaluation_and_leave_the_results_alone(tmp_path, fast):
    splits = synthetic_splits()
    hp = small_hp(iterations=50)

    def run(out, cbs):
        model = build_model("lenet_300_100", seed=0)
        return train(model, splits, hp, order_seed=1, output_dir=out, fast=fast, callbacks=cbs)

    plain = run(tmp_path / "plain", None)
    measured = run(tmp_path / "measured", {"count": _count_callback})
    assert plain.metrics == measured.metrics
    assert all(torch.equal(plain.final[k], measured.final[k]) for k in plain.final)
    assert (tmp_path / "plain" / layout.METRICS).read_bytes() == (tmp_path / "measured" / layout.METRICS).read_bytes()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "measured" / "count.csv").read_text())))
    assert [int(r["iteration"]) for r in rows] == [0, 20, 40, 50]
    assert {int(r["n"]) for r in rows} == {300}
    assert float(rows[-1]["w"]) == float(measured.final["output.weight"].sum())
    assert not (tmp_path / "plain" / "count.csv").exists()
    assert measured.callback_rows["count"][0] == {"iteration": 0, "n": 300, "w": float(rows[0]["w"])}


def test_callback_rows_of_a_resumed_run_equal_an_uninterrupted_run(tmp_path):
    splits = synthetic_splits()
    hp = small_hp(iterations=60)
    cbs = {"count": _count_callback}

    def model():
        return build_model("lenet_300_100", seed=0)

    train(model(), splits, hp, order_seed=1, output_dir=tmp_path / "a", callbacks=cbs)
    train(model(), splits, hp, order_seed=1, output_dir=tmp_path / "b", callbacks=cbs, stop_after=40,
          checkpoint_seconds=0.0)
    assert not layout.is_complete(tmp_path / "b")
    train(model(), splits, hp, order_seed=1, output_dir=tmp_path / "b", callbacks=cbs)
    assert (tmp_path / "a" / "count.csv").read_bytes() == (tmp_path / "b" / "count.csv").read_bytes()


def test_batched_training_runs_the_callbacks_per_network(tmp_path):
    from lottery_ticket.batched import train_batched

    splits = synthetic_splits()
    hp = small_hp()
    cbs = {"count": _count_callback}
    separate = [train(build_model("lenet_300_100", seed=s), splits, hp, order_seed=s, callbacks=cbs) for s in (1, 2)]
    batched = train_batched([build_model("lenet_300_100", seed=s) for s in (1, 2)], splits, hp, [1, 2], callbacks=cbs)
    assert [r.callback_rows for r in batched] == [r.callback_rows for r in separate]


def test_activations_callback_measures_every_relu():
    model = build_model("lenet_300_100", seed=0)
    splits = synthetic_splits()
    with torch.inference_mode():
        rows = callbacks.resolve(["activations"])["activations"](model, 0, splits)
        hidden = torch.relu(model.hidden[0](splits.validation_x.flatten(1)))
    assert [(r["layer"], r["units"]) for r in rows] == [("relu0", 300), ("relu1", 100)]
    assert rows[0]["zero_fraction"] == float((hidden == 0).double().mean())
    assert rows[0]["mean_activation"] == pytest.approx(float(hidden.double().mean()), rel=1e-12)


def test_cli_callback_writes_its_file_and_rejects_unknown_names(mnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--iterations", 20, "--eval-every", 10, "--validation-size", 1000, "--quiet", "--no-download",
              "--data-root", mnist_root, "--output-dir", out]
    assert lth("train", "--callback", "nope", *common) == 2
    assert "unknown evaluation callback 'nope'; choose from activations" in capsys.readouterr().err
    assert not out.exists()
    assert lth("train", "--callback", "activations", *common) == 0
    rows = list(csv.DictReader(io.StringIO((out / "activations.csv").read_text())))
    assert [(r["iteration"], r["layer"]) for r in rows][:3] == [("0", "relu0"), ("0", "relu1"), ("10", "relu0")]
    assert len(rows) == 6


def test_callback_names_are_checked():
    with pytest.raises(ValueError):
        callbacks.register_callback("metrics")
