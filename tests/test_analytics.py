"""Definitions of the analytics pinned on hand-computed cases: t intervals and the paired comparison,
Jaccard overlap, FLOP counts, the sparse export's round trip, activation statistics; and their
commands (`lth export`, `lth activations`, the report's sections) on a tiny real experiment."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn as nn
from conftest import lth

from lottery_ticket import layout
from lottery_ticket.activations import capture, layer_names
from lottery_ticket.analysis.activations import firing_rates, layer_summary
from lottery_ticket.analysis.efficiency import flops, network_costs, positions_per_example
from lottery_ticket.analysis.masks import jaccard, overlap_table, random_jaccard, remaining_percent
from lottery_ticket.analysis.stats import (
    paired_comparison,
    sign_test,
    spread,
    t_interval,
    t_quantile,
)
from lottery_ticket.export import encoding, load_sparse, save_sparse, sparse_bytes
from lottery_ticket.masking import apply_masks, full_masks
from lottery_ticket.models import build_model, registered

# ------------------------------------------------------------------------------ statistics


def test_t_quantiles_match_the_tables():
    # Student t 0.975 quantiles from any printed table (df 1, 2, 4, 10, 30)
    for df, table in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=5e-5)
    assert t_quantile(0.025, 4) == -t_quantile(0.975, 4)


def test_t_interval_of_known_numbers():
    # 1, 2, 3: mean 2, s = 1, half width t(0.975, 2) / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    low, high = t_interval([1, 2, 3])
    assert low == pytest.approx(2 - 2.484138, abs=1e-6) and high == pytest.approx(2 + 2.484138, abs=1e-6)
    assert all(math.isnan(v) for v in t_interval([1, 2]))  # no interval below 3 values
    s = spread([3.0, float("nan"), 1.0, 2.0])
    assert (s.n, s.mean, s.std, s.min, s.max) == (3, 2.0, 1.0, 1.0, 3.0)
    assert spread([5.0]).n == 1 and math.isnan(spread([5.0]).std) and spread([]).n == 0


def test_paired_comparison_pairs_by_trial():
    ticket = {0: 1000, 1: 1200, 2: 900, 3: 800}
    control = {0: [1500, 1700], 1: [1100], 2: [1400], 4: [5000]}  # trial 3 has no control, 4 no ticket
    p = paired_comparison(ticket, control)
    # differences: 1600 - 1000 = 600, 1100 - 1200 = -100, 1400 - 900 = 500
    assert (p.n, p.min_difference, p.max_difference) == (3, -100, 600)
    assert p.mean_difference == pytest.approx(1000 / 3)
    assert (p.control_later, p.control_earlier, p.ties) == (2, 1, 0)
    s = math.sqrt(((600 - 1000 / 3) ** 2 + (-100 - 1000 / 3) ** 2 + (500 - 1000 / 3) ** 2) / 2)
    assert p.ci_high == pytest.approx(1000 / 3 + 4.302653 * s / math.sqrt(3), rel=1e-6)
    assert sign_test(3, 0) == 0.25 and sign_test(5, 0) == 0.0625 and sign_test(2, 1) == 1.0


# ------------------------------------------------------------------------------ masks


def test_jaccard_of_known_masks():
    a = {"w": torch.tensor([1.0, 1, 0, 0]), "v": torch.tensor([[1.0, 0]])}
    b = {"w": torch.tensor([1.0, 0, 1, 0]), "v": torch.tensor([[1.0, 1]])}
    assert jaccard(a, b) == 2 / 5  # both keep w0 and v0; either keeps w0, w1, w2, v0, v1
    assert jaccard(a, a) == 1.0
    assert jaccard({"w": torch.zeros(3)}, {"w": torch.zeros(3)}) == 1.0
    assert random_jaccard(0.5, 0.5) == pytest.approx(0.25 / 0.75)
    assert remaining_percent(a) == {"pm_v": 50.0, "pm_w": 50.0, "pm": 50.0}


def test_overlap_table_between_trials_and_levels():
    full = {"w": torch.ones(8)}
    masks = {(0, 0): full, (1, 0): full,
             (0, 1): {"w": torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])},
             (1, 1): {"w": torch.tensor([1.0, 1, 0, 0, 1, 1, 0, 0])}}
    table = overlap_table(masks).set_index("level")
    assert table.loc[1, "between_trials_mean"] == 2 / 6 and table.loc[1, "pairs"] == 1
    assert table.loc[1, "consecutive_mean"] == 0.5 and table.loc[1, "trials"] == 2
    assert table.loc[1, "random_baseline"] == pytest.approx(0.25 / 0.75)
    assert math.isnan(table.loc[0, "consecutive_mean"])


# ------------------------------------------------------------------------------ FLOPs


class Tiny(nn.Module):
    """conv 1->2 (3x3, padding 1) on 4x4, 2x2 max pool, Linear 8 -> 3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def test_flops_of_a_tiny_net_by_hand():
    model = Tiny()
    assert positions_per_example(model, (1, 4, 4)) == {"conv.weight": 16, "fc.weight": 1}
    # dense: conv 18 weights x 16 positions = 288 MACs, fc 24 MACs: 2 * 312 = 624 FLOPs
    masks = full_masks(model)
    masks["conv.weight"].view(-1)[:9] = 0  # 9 conv weights left: 144 MACs
    masks["fc.weight"].view(-1)[:12] = 0  # 12 fc weights left: 12 MACs
    assert flops(model, masks, positions_per_example(model, (1, 4, 4))) == (624, 2 * (144 + 12))
    costs = network_costs(model, masks, positions_per_example(model, (1, 4, 4)))
    assert costs["remaining_weights"] == 21 and costs["parameters"] == 21 + 2 + 3  # biases count


def test_lenet_counts():
    model = build_model("lenet_300_100", seed=0)
    dense, _ = flops(model, full_masks(model), positions_per_example(model, (1, 28, 28)))
    assert dense == 2 * (784 * 300 + 300 * 100 + 100 * 10)


# ------------------------------------------------------------------------------ export


def test_export_encoding_rule():
    assert encoding(64, 64) == "all"
    assert encoding(64, 2) == "bitmap" and encoding(64, 1) == "indices"  # 8 bytes vs 8 / 4 bytes
    assert encoding(3200, 99) == "indices" and encoding(3200, 100) == "bitmap"  # 400 bytes: 1/32 density


def _small_inputs(name):
    entry = next(e for e in registered() for n in e.examples if n == name)
    return (1, 28, 28) if entry.dataset == "mnist" else (3, 32, 32)


@pytest.mark.parametrize("name", [n for e in registered() for n in e.examples])
def test_export_round_trip_is_bitwise_on_every_model(name, tmp_path):
    shape = _small_inputs(name)
    model = build_model(name, seed=1, input_shape=shape)
    generator = torch.Generator().manual_seed(0)
    masks = {}
    for i, (key, mask) in enumerate(full_masks(model).items()):  # densities 40%, 1% (indices), 100% (all)
        density = (0.4, 0.01, 1.0)[i % 3]
        masks[key] = (torch.rand(mask.shape, generator=generator) < density).float()
    apply_masks(model, masks)
    model.eval()
    with torch.no_grad():  # batch-norm running statistics that are not at their defaults
        for key, value in model.state_dict().items():
            if "running" in key:
                value.add_(torch.rand(value.shape, generator=generator))
    state = model.state_dict()
    size = save_sparse(tmp_path / "net.safetensors", state, masks)
    assert size == (tmp_path / "net.safetensors").stat().st_size == len(sparse_bytes(state, masks))
    loaded, loaded_masks = load_sparse(tmp_path / "net.safetensors")
    assert list(loaded) == list(state)
    for key, value in state.items():
        expected = torch.where(masks[key] == 0, torch.zeros_like(value), value) if key in masks else value
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        assert torch.equal(loaded[key].view(-1).view(torch.uint8), expected.contiguous().view(-1).view(torch.uint8)), key
    assert set(loaded_masks) == set(masks) and all(torch.equal(loaded_masks[k], masks[k]) for k in masks)
    x = torch.randn(2, *shape, generator=generator)
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(loaded)
        assert torch.equal(model(x), before)
    assert size < sum(v.numel() * v.element_size() for v in state.values())


# ------------------------------------------------------------------------------ activations


def test_activation_statistics_on_a_constructed_input():
    # 4 examples x 3 units: unit 0 fires on 2 examples, unit 1 never (dead), unit 2 on all
    a = torch.tensor([[1.0, 0, 2], [0, 0, 1], [3, 0, 1], [0, 0, 4]])
    assert firing_rates(a).tolist() == [0.5, 0.0, 1.0]
    s = layer_summary(a)
    assert s["units"] == 3 and s["dead_fraction"] == 1 / 3 and s["zero_fraction"] == 6 / 12
    assert s["mean"] == 12 / 12 and s["firing_rate_mean"] == 0.5
    # a channel of a convolution is one unit: it fires on a fraction of (example, position) pairs
    conv = torch.zeros(2, 2, 2, 2)
    conv[0, 0, 0, 0] = 1.0
    assert firing_rates(conv).tolist() == [1 / 8, 0.0]


def test_capture_reads_relus_and_modules_without_gradients():
    model = build_model("lenet_300_100", seed=0)
    model.train()
    x = torch.randn(5, 1, 28, 28)
    assert layer_names(model, (1, 28, 28))[:3] == ["relu0", "relu1", "hidden"]
    acts = capture(model, x, ["relu1", "hidden.0"], batch=2)
    with torch.no_grad():  # (in the same batches: a product's rounding may depend on its size)
        pre = [model.hidden[0](part.flatten(1)) for part in x.split(2)]
        assert torch.equal(acts["hidden.0"], torch.cat(pre))
        assert torch.equal(acts["relu1"], torch.cat([torch.relu(model.hidden[1](torch.relu(p))) for p in pre]))
    assert model.training and not acts["relu1"].requires_grad
    assert not model.hidden[0]._forward_hooks  # hooks removed
    from lottery_ticket.errors import LotteryError

    with pytest.raises(LotteryError, match="unknown layer"):
        capture(model, x, ["nope"])


# ------------------------------------------------------------------------------ commands


TICKET_ES = (100, 200, 300)  # per trial; the reinit control's: 500, 400, 300
ITERATIONS = (0, 100, 200, 300, 400, 500)


def write_run(root, hp, trial, level, control, masks, es):
    """A complete run written by hand: real LeNet weights (masked), masks, metrics whose validation
    loss is lowest at iteration `es`."""
    import json

    from safetensors.torch import save_file

    run = layout.run_dir(root, trial, level, control, 0)
    run.mkdir(parents=True)
    model = build_model("lenet_300_100", seed=10 * trial + level)
    apply_masks(model, masks)
    save_file(model.state_dict(), str(run / layout.INITIAL))
    save_file({k: v * 2 for k, v in model.state_dict().items()}, str(run / layout.FINAL))
    save_file(masks, str(run / layout.MASKS))
    (run / layout.RUN_FILE).write_text(json.dumps({"hparams": hp.to_dict(), "run": {
        "trial": trial, "level": level, "control": control, "run_index": 0, "seeds": {}}}))
    lines = ["iteration,split,loss,accuracy"]
    for it in ITERATIONS:
        lines += [f"{it},validation,{0.1 if it == es else 1.0},0.9", f"{it},test,1.0,0.9"]
    (run / layout.METRICS).write_text("\n".join(lines) + "\n")
    (run / layout.COMPLETE).write_text("{}")


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """3 trials x 2 levels of LeNet-300-100 tickets (level 1 keeps a random half of each layer)
    and a reinit control at level 1, written by hand (no training)."""
    from lottery_ticket.hparams import preset_hparams
    from lottery_ticket.layout.files import write_experiment

    root = tmp_path_factory.mktemp("analytics") / "exp"
    hp = preset_hparams("paper")
    write_experiment(root, hp, 0)
    for trial in range(3):
        full = full_masks(build_model("lenet_300_100", seed=0))
        generator = torch.Generator().manual_seed(trial)
        half = {k: (torch.rand(v.shape, generator=generator) < 0.5).float() for k, v in full.items()}
        write_run(root, hp, trial, 0, layout.TICKET, full, 400)
        write_run(root, hp, trial, 1, layout.TICKET, half, TICKET_ES[trial])
        write_run(root, hp, trial, 1, "reinit", half, 500 - 100 * trial)
    return root


def test_lth_export_writes_the_sparse_file(tiny_experiment, tmp_path, capsys):
    out = tmp_path / "ticket.safetensors"
    assert lth("export", "--experiment", tiny_experiment, "--level", 1, "--output", out) == 0
    printed = capsys.readouterr().out
    assert f"{out.stat().st_size:,} bytes" in printed and "at Pm " in printed
    state, masks = load_sparse(out)
    run = layout.run_dir(tiny_experiment, 0, 1)
    from safetensors.torch import load_file

    final, saved_masks = load_file(str(run / layout.FINAL)), load_file(str(run / layout.MASKS))
    assert all(torch.equal(state[k], final[k]) for k in final)
    assert all(torch.equal(masks[k], saved_masks[k]) for k in saved_masks)
    assert lth("export", "--experiment", tiny_experiment, "--level", 1, "--weights", "rewind", "--output",
               tmp_path / "r.safetensors") == 2
    assert "no rewind.safetensors" in capsys.readouterr().err and not (tmp_path / "r.safetensors").exists()


def test_lth_activations_writes_tensors_statistics_and_plot(tiny_experiment, mnist_root, tmp_path):
    out = tmp_path / "acts"
    assert lth("activations", "--experiment", tiny_experiment, "--trials", "0-1", "--levels", "0-1",
               "--examples", 50, "--layers", "relu0,hidden.1", "--output-dir", out, "--data-root", mnist_root, "--no-download",
               "--quiet") == 0
    table = pd.read_csv(out / layout.ACTIVATIONS_CSV)
    assert len(table) == 2 * 2 * 2 and set(table["layer"]) == {"relu0", "hidden.1"}
    from safetensors.torch import load_file

    saved = load_file(str(layout.activations_file(out, 1, 1, layout.TICKET, "final", "validation")))
    assert saved["relu0"].shape == (50, 300) and saved["hidden.1"].shape == (50, 100)
    assert torch.equal(saved["examples"], torch.arange(50))
    row = table[(table.trial == 1) & (table.level == 1) & (table.layer == "relu0")].iloc[0]
    assert row["dead_fraction"] == pytest.approx(float((firing_rates(saved["relu0"]) == 0).double().mean()))
    assert (out / (layout.ACTIVATIONS + ".png")).is_file()


def test_report_has_the_analytics_sections(tiny_experiment):
    from lottery_ticket.analysis.report import write_report

    paths = write_report(tiny_experiment)
    text = paths["markdown"].read_text()
    for title in ("95% confidence intervals", "paired by trial", "Weights remaining per layer", "Mask overlap",
                  "Efficiency"):
        assert title in text
    paired = pd.read_csv(paths["paired_csv"])
    row = paired[(paired.level == 1) & (paired.control == "reinit")].iloc[0]
    # control - ticket per trial: 500 - 100, 400 - 200, 300 - 300
    assert (row["n"], row["mean_difference"], row["min_difference"], row["max_difference"]) == (3, 200, 0, 400)
    assert (row["control_later"], row["control_earlier"], row["ties"], row["sign_test_p"]) == (2, 0, 1, 0.5)
    overlap = pd.read_csv(paths["overlap_csv"]).set_index("level")
    assert overlap.loc[1, "pairs"] == 3 and 0.2 < overlap.loc[1, "between_trials_mean"] < 0.45
    efficiency = pd.read_csv(paths["efficiency_csv"]).set_index("level")
    assert efficiency.loc[0, "dense_flops"] == 2 * 266200
    exported = save_sparse(paths["html"].parent / "x.safetensors", *load_sparse_from_run(tiny_experiment))
    assert efficiency.loc[1, "export_bytes_min"] <= exported <= efficiency.loc[1, "export_bytes_max"]
    agg = pd.read_csv(paths["aggregate_csv"])
    assert {"early_stop_iteration_ci_low", "early_stop_iteration_ci_high"} <= set(agg.columns)


def load_sparse_from_run(experiment):
    from safetensors.torch import load_file

    run = layout.run_dir(experiment, 0, 1)
    return load_file(str(run / layout.FINAL)), load_file(str(run / layout.MASKS))
