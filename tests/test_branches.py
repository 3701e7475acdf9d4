"""Branches (`lth branch`): the registry, the controls as branches, `lth reinit` as their shortcut,
the random_pruning rename, branch flags, and the renamed `--presets` flag."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import assert_same_run, lth

from lottery_ticket import layout
from lottery_ticket.branches import (
    BRANCHES,
    Branch,
    branch_for_kind,
    control_names,
    register_branch,
)
from lottery_ticket.cli import build_parser, sweep_lines
from lottery_ticket.hparams import PRESETS, preset_hparams, presets
from lottery_ticket.models import registered
from lottery_ticket.models import registry as model_registry

RUN = ["--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def lottery(tmp_path_factory, mnist_root):
    """A finished two-level lottery (levels 0 and 1), a few iterations per run."""
    exp = tmp_path_factory.mktemp("branches") / "lot"
    assert lth("lottery", "--iterations", 20, "--eval-every", 10, "--levels", 1, "--output-dir", exp,
               "--data-root", mnist_root, "--workers", 1, *RUN) == 0
    return exp, mnist_root


@pytest.fixture
def restore_branches():
    BRANCHES.names()  # (load the built-ins first: restoring a half-loaded registry would lose some for good)
    saved = dict(BRANCHES._entries)
    yield
    BRANCHES._entries = saved


def copy(exp, tmp_path, name):
    out = tmp_path / name
    shutil.copytree(exp, out)
    return out


def test_the_controls_are_registered_branches():
    assert control_names() == ["reinit", "reuse", "reuse_sign", "random_pruning"]
    assert [branch_for_kind(k).name for k in ("reinit", "reuse", "reuse_sign", "random")] == control_names()
    assert branch_for_kind("random").kind == "random"  # random_pruning's runs stay random_<r> on disk


def test_branch_help_lists_every_branch_with_its_description(capsys, restore_branches):
    @register_branch("probe_help")
    class ProbeHelp(Branch):
        description = "a test branch's one line"

    with pytest.raises(SystemExit) as exit_:
        lth("branch", "--help")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in BRANCHES.names():
        assert name in out
        assert BRANCHES.get(name).description.split()[0] in out
    assert "a test branch's one line" in out


def test_help_does_not_import_torch():
    """`lth --help` stays fast: the branches (and torch) load only for `lth branch`."""
    code = ("import sys\nfrom lottery_ticket.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_branch_names_must_be_identifiers_and_describe_themselves():
    for bad in ("main", "train", "Probe", "probe-2", ""):
        with pytest.raises(ValueError):
            register_branch(bad)
    with pytest.raises(ValueError, match="one-line description"):
        register_branch("undescribed")(type("Undescribed", (Branch,), {}))


def test_a_branch_gets_its_flags_and_writes_into_the_layout(lottery, tmp_path, restore_branches, capsys):
    exp = copy(lottery[0], tmp_path, "exp")
    seen = []

    @register_branch("probe")
    class Probe(Branch):
        description = "writes its options into its run directories"

        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--probe-scale", type=float, default=1.0, help="a number")

        def run(self, job, ctx):
            seen.append(job)
            out = layout.run_dir(job.experiment, job.trial, job.level, self.kind, job.run_index)
            out.mkdir(parents=True)
            (out / "probe.json").write_text(json.dumps({"scale": job.option("probe_scale")}))

    assert lth("branch", "probe", "--experiment", exp, "--levels", "0-1", "--runs", 2, "--probe-scale", 3,
               "--workers", 1, *RUN) == 0
    assert sorted((j.trial, j.level, j.run_index) for j in seen) == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    for level in (0, 1):
        for r in (0, 1):
            record = json.loads((exp / "trial_0" / f"level_{level}" / f"probe_{r}" / "probe.json").read_text())
            assert record == {"scale": 3.0}
    capsys.readouterr()
    assert lth("branch", "probe", "--experiment", exp, "--levels", 1, "--batched", *RUN) == 2
    assert capsys.readouterr().err == "error: --batched is not supported by branch probe\n"
    assert len(seen) == 4


def test_branch_random_pruning_in_workers_equals_reinit_control_random(lottery, tmp_path):
    """`lth branch random_pruning` in spawned workers and `lth reinit --control random` (the old
    name) in this process make the same runs, bitwise, as random_<r>; each resumes the other's."""
    exp, root = lottery
    a, b = copy(exp, tmp_path, "a"), copy(exp, tmp_path, "b")
    assert lth("branch", "random_pruning", "--experiment", a, "--levels", "0-1", "--data-root", root,
               "--workers", 2, *RUN) == 0
    assert lth("reinit", "--control", "random", "--experiment", b, "--levels", "0-1", "--data-root", root,
               "--workers", 1, *RUN) == 0
    for level in (0, 1):
        assert_same_run(layout.run_dir(a, 0, level, "random", 0), layout.run_dir(b, 0, level, "random", 0))
        assert not layout.run_dir(a, 0, level, "random_pruning", 0).exists()
    final = layout.run_dir(b, 0, 1, "random", 0) / layout.FINAL
    mtime = final.stat().st_mtime_ns
    assert lth("reinit", "--control", "random_pruning", "--experiment", b, "--levels", 1, "--data-root", root,
               "--workers", 1, *RUN) == 0
    assert final.stat().st_mtime_ns == mtime  # complete: not trained again


def test_reinit_shortcut_runs_the_same_branch_runs_batched(lottery, tmp_path):
    exp, root = lottery
    a, b = copy(exp, tmp_path, "a"), copy(exp, tmp_path, "b")
    assert lth("branch", "reuse_sign", "--experiment", a, "--levels", 1, "--runs", 2, "--data-root", root,
               "--batched", *RUN) == 0
    assert lth("reinit", "--control", "reuse_sign", "--experiment", b, "--levels", 1, "--runs", 2,
               "--data-root", root, "--batched", *RUN) == 0
    for r in (0, 1):
        assert_same_run(layout.run_dir(a, 0, 1, "reuse_sign", r), layout.run_dir(b, 0, 1, "reuse_sign", r))


def test_unknown_control_and_branch_are_one_line_errors(lottery, capsys):
    exp, _ = lottery
    assert lth("reinit", "--control", "shuffle", "--experiment", exp, "--levels", 1, *RUN) == 2
    assert capsys.readouterr().err == (
        "error: unknown control 'shuffle'; choose from reinit, reuse, reuse_sign, random_pruning\n")
    with pytest.raises(SystemExit) as exit_:
        lth("branch", "no_such_branch", "--experiment", exp)
    assert exit_.value.code == 2
    assert "invalid choice: 'no_such_branch'" in capsys.readouterr().err


def test_presets_flag_was_renamed_init_weights(tmp_path, capsys):
    out = tmp_path / "run"
    assert lth("train", "--presets", tmp_path / "initial.safetensors", "--output-dir", out, *RUN) == 2
    assert capsys.readouterr().err == ("error: --presets was renamed --init-weights (a file of initial weights); "
                                       "--preset NAME picks a hyperparameter preset\n")
    assert not out.exists()
    text = build_parser().format_help() + build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--init-weights" in text and "--presets" not in text


def test_sweep_lines_may_run_branches(tmp_path):
    argfile = tmp_path / "lines.txt"
    argfile.write_text("branch random_pruning --experiment exp --levels 1\nreinit --control random --experiment exp\n")
    assert len(sweep_lines(argfile)) == 2


# --------------------------------------------------------------------------- models and their presets


def test_every_model_names_a_registered_preset():
    for entry in registered():
        assert entry.default_preset in presets(), entry.examples


def test_a_model_file_registers_its_preset(monkeypatch):
    """A model and its preset, added by one file (here: the same calls, in the test)."""
    import torch.nn as nn

    from lottery_ticket.hparams import Hparams, ModelHparams, register_preset

    monkeypatch.setattr(model_registry, "_REGISTRY", list(model_registry._REGISTRY))
    monkeypatch.setattr("lottery_ticket.hparams.PRESETS", dict(PRESETS))
    model_registry.register(model_registry.ModelEntry(
        pattern="probe_net", build=lambda name, num_classes, input_shape, **o: nn.Linear(784, num_classes),
        examples=("probe_net",), default_preset="probe-preset", dataset="mnist", description="a test model"))
    hp = Hparams(model=ModelHparams(model="probe_net", init="kaiming_normal"))
    register_preset("probe-preset", hp, "a test preset")
    assert preset_hparams("paper", model="probe_net") == hp
    assert presets()["probe-preset"] == (hp, "a test preset")
    with pytest.raises(ValueError, match="already registered"):
        register_preset("probe-preset", preset_hparams("paper"), "another")
