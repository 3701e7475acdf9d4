"""The on-disk layout has one owner (`lottery_ticket.layout`); jobs are typed; one seed helper."""

import dataclasses
import hashlib
import pickle
import re
from pathlib import Path

import pytest

import lottery_ticket
from lottery_ticket import layout, pruning, runner, seeds
from lottery_ticket.analysis import read_metrics as read_metrics_table
from lottery_ticket.analysis.table import CONTROL_ORDER, find_runs
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import check_rewind, preset_hparams
from lottery_ticket.layout.files import metrics_csv, read_metrics

SRC = Path(lottery_ticket.__file__).parent
# a layout name as a string literal or in a path pattern: trial_/level_ directories, run names
LAYOUT_LITERAL = re.compile(r"trial_[0-9<{]|[\"'](trial_|level_)|level_[0-9<{]|[\"']main[\"']"
                            r"|(reinit|reuse_sign|reuse|random)_([0-9]|\{|<)")


def test_layout_literals_live_in_one_module():
    owner = SRC / "layout" / "__init__.py"
    assert LAYOUT_LITERAL.search(owner.read_text())  # (the pattern finds them where they are)
    hits = [f"{path.relative_to(SRC)}:{n}: {line.strip()}"
            for path in sorted(SRC.rglob("*.py")) if path != owner
            for n, line in enumerate(path.read_text().splitlines(), 1) if LAYOUT_LITERAL.search(line)]
    assert hits == []


def test_one_list_of_controls():
    """The control branches (what `lth reinit --control` and `lth branch` run) write exactly the run
    kinds the layout parses and the report orders: the two lists cannot drift apart."""
    from lottery_ticket.branches import control_names, get_branch

    assert tuple(get_branch(name).kind for name in control_names()) == layout.CONTROLS
    assert CONTROL_ORDER == (layout.TICKET, *layout.CONTROLS)


@pytest.mark.parametrize("control", layout.CONTROLS)
def test_run_names_round_trip(control):
    for r in (0, 3, 12):
        name = layout.run_name(control, r)
        assert layout.parse_run_name(name) == (control, r) == layout.run_kind(name)
        assert layout.run_dir("e", 1, 2, control, r) == layout.level_dir("e", 1, 2) / name
    assert layout.run_name() == layout.TICKET and layout.parse_run_name(layout.TICKET) == (layout.TICKET, 0)


def test_walks_ignore_what_is_not_the_layout(tmp_path):
    for run in (layout.run_dir(tmp_path, 2, 0), layout.run_dir(tmp_path, 2, 1, "reuse_sign", 1),
                layout.run_dir(tmp_path, 0, 0, "random", 0), layout.run_dir(tmp_path, 0, 0)):
        run.mkdir(parents=True)
    for junk in ("plots", "trial_x", "trial_1.bak", "level_3"):
        (tmp_path / junk).mkdir()
    (layout.trial_dir(tmp_path, 2) / "level_notes").mkdir()
    (layout.level_dir(tmp_path, 0, 0) / ".hidden").mkdir()
    assert layout.trials_present(tmp_path) == [0, 2]
    assert layout.levels_present(tmp_path, 2) == [0, 1] and layout.levels_present(tmp_path, 7) == []
    found = [(r.trial, r.level, r.control, r.run_index) for r in find_runs(tmp_path)]
    assert found == [(0, 0, layout.TICKET, 0), (0, 0, "random", 0), (2, 0, layout.TICKET, 0),
                     (2, 1, "reuse_sign", 1)]


def test_jobs_are_frozen_and_pickle_with_typed_hyperparameters():
    hp = preset_hparams("paper")
    lottery = runner.LotteryJob("exp", hp, 7, 1, 3)
    control = runner.ControlJob("exp", "reinit", 1, 2, 0)
    for job in (lottery, control):
        assert pickle.loads(pickle.dumps(job)) == job
        with pytest.raises(dataclasses.FrozenInstanceError):
            job.trial = 5
    assert pickle.loads(pickle.dumps(lottery)).hp == hp
    assert runner.Context is runner.RunOptions


def test_one_seed_helper_keeps_the_old_seeds():
    def old(key: str) -> int:
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**63 - 1)

    assert seeds.derive_seed("order", 0, 1, 2, "reinit", 0) == old(repr(("order", 0, 1, 2, "reinit", 0)))
    assert seeds.tensor_seed(5, "fc.weight") == old("5:fc.weight")
    assert runner.derive_seed is seeds.derive_seed and not hasattr(pruning, "_name_seed")


def test_rewinding_checked_by_one_function():
    t = preset_hparams("paper").training
    late = dataclasses.replace(t, rewind_iteration=100, iterations=100)
    check_rewind(late, 100)  # one level: rewinding to the last iteration is allowed
    with pytest.raises(LotteryError, match="must be less than --iterations 100"):
        check_rewind(late, 100, levels=1)
    with pytest.raises(LotteryError, match="beyond the 50 training iterations"):
        check_rewind(late, 50)


def test_one_metrics_reader(tmp_path):
    rows = [(0, "validation", 2.25, 0.125), (0, "test", 2.5, 0.1), (100, "validation", 0.5, 0.875)]
    path = tmp_path / layout.METRICS
    path.write_text(metrics_csv(rows))
    assert read_metrics(path) == rows
    table = read_metrics_table(path)
    assert list(table.itertuples(index=False, name=None)) == rows


def test_comma_lists_are_parsed_once():
    from lottery_ticket import hparams

    t = dataclasses.replace(preset_hparams("paper").training, lr_milestones="7, 80ep,120ep")
    hparams._milestone_entries.cache_clear()
    assert [hparams.milestones(t, per_epoch=10) for _ in range(3)] == [[7, 800, 1200]] * 3
    info = hparams._milestone_entries.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    p = dataclasses.replace(preset_hparams("paper").pruning, never_prune=" a.weight,,b.weight ")
    assert hparams.never_prune(p) == ["a.weight", "b.weight"] == hparams.never_prune(p)
