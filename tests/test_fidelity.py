"""Issue 12, items 2-5: reuse controls sample the surviving weights, --permute-labels relabels the
classes (--random-labels shuffles), controls under late rewinding start at the rewind iteration,
every run draws its own data order -- and older experiment records are read as what they ran."""

from dataclasses import replace

import pytest
import torch
from conftest import assert_same_run, lth

from lottery_ticket import layout, runner
from lottery_ticket.branches.controls import control_init
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import Hparams, preset_hparams
from lottery_ticket.layout.files import check_same_run, read_metrics, run_record
from lottery_ticket.store import load_tensors, read_json, write_json
from lottery_ticket.trainer import threads, train

# --------------------------------------------------------------------------- 2. reuse / reuse_sign


@pytest.mark.parametrize("control", ["reuse", "reuse_sign"])
def test_reuse_samples_each_tensor_from_its_surviving_starting_weights(control):
    g = torch.Generator().manual_seed(0)
    start = torch.randn(40, 50, generator=g)
    mask = (torch.rand(40, 50, generator=g) < 0.3).float()
    # pruned positions hold values far from every survivor: a draw from them would show
    original = {"w": torch.where(mask == 1, start, 100.0 + start.abs()), "empty": torch.ones(3),
                "b": torch.arange(40.0)}
    masks = {"w": mask, "empty": torch.zeros(3)}
    weights, run_masks = control_init(control, original, {}, masks, seed=3)
    survivors = set(original["w"][mask == 1].abs().tolist())
    drawn = set(weights["w"].abs().flatten().tolist())
    assert drawn <= survivors and len(drawn) > 100
    assert torch.equal(weights["b"], original["b"]) and run_masks is masks
    assert torch.equal(weights["empty"], torch.zeros(3))  # a fully pruned tensor: nothing to draw
    if control == "reuse_sign":
        assert torch.equal(weights["w"].sign()[mask == 1], start.sign()[mask == 1])


# --------------------------------------------------------------------------- 3. labels


def test_permute_labels_relabels_classes_in_every_split_and_random_labels_shuffles(mnist_root):
    ctx = runner.Context(data_root=str(mnist_root), download=False, quiet=True)
    hp = preset_hparams("paper")
    plain = runner.load_splits(hp, ctx, 5)
    permuted = runner.load_splits(replace(hp, dataset=replace(hp.dataset, permute_labels=True)), ctx, 5)
    # one bijection of class ids, the same for training, validation and test labels
    mapping = {}
    for part in ("train", "validation", "test"):
        assert torch.equal(getattr(plain, f"{part}_x"), getattr(permuted, f"{part}_x"))
        for old, new in zip(getattr(plain, f"{part}_y").tolist(), getattr(permuted, f"{part}_y").tolist(), strict=True):
            assert mapping.setdefault(old, new) == new
    assert sorted(mapping) == sorted(mapping.values()) == list(range(10))
    assert any(old != new for old, new in mapping.items())
    shuffled = runner.load_splits(replace(hp, dataset=replace(hp.dataset, random_labels=True)), ctx, 5)
    assert torch.equal(shuffled.test_y, plain.test_y)  # test labels stay true
    agree = (shuffled.train_y == plain.train_y).double().mean().item()
    assert agree < 0.2  # about 1/10: labels no longer follow the images


def test_permute_and_random_labels_are_exclusive_and_documented(capsys):
    from lottery_ticket.cli import build_parser

    assert lth("lottery", "--permute-labels", "--random-labels", "--output-dir", "/nonexistent/x") == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lottery", "--help"])
    out = capsys.readouterr().out
    assert "--permute-labels" in out and "--random-labels" in out and "--same-order-per-trial" in out


# --------------------------------------------------------------------------- old records


def old_hparams(hp: Hparams) -> dict:
    """`hp` as an experiment.json/run.json written before these fields existed."""
    d = hp.to_dict()
    del d["dataset"]["random_labels"], d["training"]["same_order_per_trial"]
    return d


def test_old_records_are_read_as_what_they_ran():
    hp = preset_hparams("paper")
    old = Hparams.from_dict(old_hparams(replace(hp, dataset=replace(hp.dataset, permute_labels=True))))
    assert old.dataset.random_labels and not old.dataset.permute_labels  # it shuffled labels then
    assert old.training.same_order_per_trial  # and used one order per trial
    assert Hparams.from_dict(hp.to_dict()) == hp


def test_an_old_experiment_is_refused_with_the_diff_and_resumes_with_its_old_flags(tmp_path):
    hp = preset_hparams("paper")
    write_json(tmp_path / layout.EXPERIMENT_FILE, {"kind": "lottery", "hparams": old_hparams(hp), "seed": 0})
    with pytest.raises(LotteryError, match=r"training\.same_order_per_trial: True -> False"):
        runner.prepare_experiment(tmp_path, hp, 0)
    old_way = replace(hp, training=replace(hp.training, same_order_per_trial=True))
    runner.prepare_experiment(tmp_path, old_way, 0)  # the same experiment: resumes
    run = tmp_path / "run"
    run.mkdir()
    info = {"trial": 0, "level": 0, "control": "main", "run_index": 0}
    write_json(run / layout.RUN_FILE, {"hparams": old_hparams(hp), "run": info})
    check_same_run(run, run_record(old_way, info))
    with pytest.raises(LotteryError, match="same_order_per_trial"):
        check_same_run(run, run_record(hp, info))


# --------------------------------------------------------------------------- 4 and 5 on real MNIST

FLAGS = ["--model", "fc_100", "--iterations", 300, "--eval-every", 100, "--rewind-iteration", 100,
         "--levels", 1, "--quiet", "--workers", 1, "--threads", 1]


@pytest.fixture(scope="module")
def rewound(tmp_path_factory, mnist_root):
    """A late-rewinding experiment (k = 100) with random, reinit and reuse controls at level 1."""
    exp = tmp_path_factory.mktemp("fidelity") / "fc_100"
    with threads(1):
        assert lth("lottery", *FLAGS, "--output-dir", exp, "--data-root", mnist_root) == 0
        for control in ("random", "reinit", "reuse"):
            assert lth("reinit", "--experiment", exp, "--control", control, "--levels", 1, "--runs", 1,
                       "--data-root", mnist_root, "--quiet", "--workers", 1, "--threads", 1) == 0
    return exp, mnist_root


@pytest.mark.parametrize("control", ["random", "reinit", "reuse"])
def test_controls_under_late_rewinding_start_at_the_rewind_iteration(rewound, control):
    exp, root = rewound
    run = layout.run_dir(exp, 0, 1, control, 0)
    record = read_json(run / layout.RUN_FILE)
    assert record["hparams"]["training"]["rewind_iteration"] == 100
    rows = read_metrics(run / layout.METRICS)
    assert sorted(it for it, split, *_ in rows if split == "validation") == [100, 200, 300]
    initial, masks = load_tensors(run / layout.INITIAL), load_tensors(run / layout.MASKS)
    level0 = layout.run_dir(exp, 0, 0)
    rewind, start = load_tensors(level0 / layout.REWIND), load_tensors(level0 / layout.INITIAL)
    ticket_masks = load_tensors(layout.run_dir(exp, 0, 1) / layout.MASKS)
    name = "hidden.0.weight"
    kept = masks[name] == 1
    if control == "random":  # the rewound weights with a random mask
        assert not torch.equal(masks[name], ticket_masks[name])
        assert torch.equal(initial[name][kept], rewind[name][kept])
        assert torch.equal(initial["hidden.0.bias"], rewind["hidden.0.bias"])
    elif control == "reuse":  # drawn from the ticket's surviving rewound weights
        assert torch.equal(masks[name], ticket_masks[name])
        assert set(initial[name][kept].tolist()) <= set(rewind[name][ticket_masks[name] == 1].tolist())
    else:  # fresh
        assert not torch.equal(initial[name][kept], rewind[name][kept])
        assert not torch.equal(initial[name][kept], start[name][kept])

    # the run is training from iteration 100 on (its lr schedule and data-order position) from these weights
    hp = Hparams.from_dict(record["hparams"])
    seeds = record["run"]["seeds"]
    splits = runner.load_splits(hp, runner.Context(data_root=str(root)), seeds["labels"])
    with threads(1):
        again = train(runner.new_model(hp, splits, 0, presets=initial), splits, hp, order_seed=seeds["order"],
                      masks=masks, start_iteration=100)
    final = load_tensors(run / layout.FINAL)
    assert all(torch.equal(again.final[k], final[k]) for k in final)


def test_batched_controls_under_late_rewinding_write_what_separate_runs_write(rewound, tmp_path):
    exp, root = rewound
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(exp, copy, ignore=shutil.ignore_patterns("reinit*", "random*", "reuse*"))
    with threads(1):
        assert lth("reinit", "--experiment", copy, "--control", "random", "--levels", 1, "--runs", 1, "--batched",
                   "--data-root", root, "--quiet", "--threads", 1) == 0
    assert_same_run(layout.run_dir(exp, 0, 1, "random", 0), layout.run_dir(copy, 0, 1, "random", 0))


def test_every_run_draws_its_own_recorded_data_order(rewound):
    exp, _ = rewound
    seed = read_json(exp / layout.EXPERIMENT_FILE)["seed"]
    runs = {(0, "main"): layout.run_dir(exp, 0, 0), (1, "main"): layout.run_dir(exp, 0, 1)}
    runs.update({(1, c): layout.run_dir(exp, 0, 1, c, 0) for c in ("random", "reinit", "reuse")})
    orders = {}
    for (level, control), run in runs.items():
        orders[level, control] = read_json(run / layout.RUN_FILE)["run"]["seeds"]["order"]
        assert orders[level, control] == runner.derive_seed("order", seed, 0, level, control, 0)
    assert len(set(orders.values())) == len(orders)


def test_same_order_per_trial_keeps_one_order_for_every_run(tmp_path, mnist_root):
    exp = tmp_path / "same"
    with threads(1):
        assert lth("lottery", *FLAGS, "--same-order-per-trial", "--iterations", 200, "--output-dir", exp,
                   "--data-root", mnist_root) == 0
        assert lth("reinit", "--experiment", exp, "--control", "reinit", "--levels", 1, "--runs", 1,
                   "--data-root", mnist_root, "--quiet", "--workers", 1, "--threads", 1) == 0
    record = read_json(exp / layout.EXPERIMENT_FILE)
    assert record["hparams"]["training"]["same_order_per_trial"] is True
    trial_order = runner.trial_seeds(record["seed"], 0)["order"]
    for run in (layout.run_dir(exp, 0, 0), layout.run_dir(exp, 0, 1), layout.run_dir(exp, 0, 1, "reinit", 0)):
        assert read_json(run / layout.RUN_FILE)["run"]["seeds"]["order"] == trial_order


def test_run_order_seeds_differ_by_trial_level_control_and_run():
    hp = preset_hparams("paper")
    keys = [(t, lv, c, r) for t in (0, 1) for lv in (0, 3) for c in ("main", "reinit") for r in (0, 1)]
    seeds = {k: runner.run_seeds(hp, 7, *k)["order"] for k in keys}
    assert len(set(seeds.values())) == len(keys)
    assert runner.run_seeds(hp, 7, 1, 3, "reinit", 1) == runner.run_seeds(hp, 7, 1, 3, "reinit", 1)
