"""A lottery with its controls in one command (`lth lottery --controls`): the job graph, the
critical-path order, results bitwise equal to `lth lottery` then `lth reinit`, resuming after
SIGKILL, and the flags' errors."""

import math

import pytest
from conftest import assert_same_run, lth
from test_resume import kill_and_resume

from lottery_ticket import layout
from lottery_ticket.branches import BranchJob
from lottery_ticket.hparams import Hparams
from lottery_ticket.runner import LevelJob, lottery_jobs
from lottery_ticket.schedule import Schedule, critical_path_ranks


def run_steps(after, workers: int) -> list[list[int]]:
    schedule, steps = Schedule(after), []
    while schedule:
        step = []
        while len(step) < workers and (j := schedule.next()) is not None:
            step.append(j)
        assert step, "the schedule stalled"
        for j in step:
            schedule.finished(j)
        steps.append(step)
    return steps


def test_ranks_are_the_longest_chain_from_each_job():
    # 0 -> 1 -> 2, and 3 waits for 0
    assert critical_path_ranks([(), (0,), (1,), (0,)]) == [3, 2, 1, 1]
    with pytest.raises(ValueError, match="cycle"):
        critical_path_ranks([(1,), (0,)])
    with pytest.raises(ValueError, match="not another job"):
        critical_path_ranks([(5,)])


def test_without_dependencies_jobs_start_in_list_order():
    schedule = Schedule([()] * 4)
    assert [schedule.next() for _ in range(5)] == [0, 1, 2, 3, None]


def test_the_lottery_graph_has_levels_in_chains_and_controls_after_their_level():
    jobs, after = lottery_jobs("exp", Hparams(), 0, trials=2, levels=2, controls=("reinit", "random_pruning"),
                               control_levels=(0, 2), control_runs=2)
    assert len(jobs) == 2 * 3 + 2 * 2 * 2 * 2
    for job, needs in zip(jobs, after, strict=True):
        if isinstance(job, LevelJob):
            assert [jobs[i] for i in needs] == ([LevelJob("exp", Hparams(), 0, job.trial, job.level - 1)]
                                                if job.level else [])
        else:
            assert isinstance(job, BranchJob) and job.level in (0, 2) and job.run_index in (0, 1)
            assert [jobs[i] for i in needs] == [LevelJob("exp", Hparams(), 0, job.trial, job.level)]


def test_the_paper_protocol_keeps_both_workers_busy():
    """3 trials x 16 levels, one reinit run at levels 0, 7 and 15, on 2 workers, every run one time
    unit: the one command takes ceil(57 / 2) = 29 steps; `lth lottery` (a trial per worker: 16 + 16)
    then `lth reinit` (ceil(9 / 2) = 5) takes 37."""
    _, after = lottery_jobs("exp", Hparams(), 0, trials=3, levels=15, controls=("reinit",),
                            control_levels=(0, 7, 15))
    steps = run_steps(after, workers=2)
    assert len(steps) == math.ceil(57 / 2) == 29
    assert all(len(step) == 2 for step in steps[:-1])
    # the levels alone also fill both workers: 24 steps for 48 level runs
    _, levels_only = lottery_jobs("exp", Hparams(), 0, trials=3, levels=15)
    assert len(run_steps(levels_only, workers=2)) == 24


def test_controls_fill_workers_the_levels_leave_idle():
    """One trial on 2 workers: one worker follows the chain of levels, the other runs each level's
    control as soon as the level is done."""
    jobs, after = lottery_jobs("exp", Hparams(), 0, trials=1, levels=3, controls=("reinit",), control_levels=(0, 1, 2))
    steps = run_steps(after, workers=2)
    names = [sorted((type(jobs[j]).__name__, jobs[j].level) for j in step) for step in steps]
    assert names == [[("LevelJob", 0)], [("BranchJob", 0), ("LevelJob", 1)], [("BranchJob", 1), ("LevelJob", 2)],
                     [("BranchJob", 2), ("LevelJob", 3)]]


HP = ["--model", "fc_100", "--iterations", "30", "--eval-every", "15", "--rewind-iteration", "10"]
RUN = ["--quiet", "--threads", "1"]
# the lottery of every test below: 2 trials, levels 0-1; reinit at level 1 (2 runs), random_pruning at 0
CONTROL_RUNS = [("reinit", 1, 0), ("reinit", 1, 1), ("random", 0, 0)]


def same_experiment(a, b, control_runs=CONTROL_RUNS) -> None:
    for t in (0, 1):
        for level in (0, 1):
            assert_same_run(layout.run_dir(a, t, level), layout.run_dir(b, t, level))
        for kind, level, r in control_runs:
            assert_same_run(layout.run_dir(a, t, level, kind, r), layout.run_dir(b, t, level, kind, r))


@pytest.fixture(scope="module")
def separate(tmp_path_factory, mnist_root):
    """`lth lottery` then `lth reinit` for each control, on one worker."""
    exp = tmp_path_factory.mktemp("separate") / "exp"
    common = [*RUN, "--data-root", mnist_root, "--workers", 1]
    assert lth("lottery", "--trials", 2, "--levels", 1, *HP, "--output-dir", exp, *common) == 0
    assert lth("reinit", "--control", "reinit", "--levels", "1", "--runs", 2, "--experiment", exp, *common) == 0
    assert lth("reinit", "--control", "random_pruning", "--levels", "0", "--experiment", exp, *common) == 0
    return exp


def test_one_command_equals_lottery_then_reinit(separate, tmp_path, mnist_root):
    """Bitwise: the ticket runs and every control run, here on 2 workers in the critical-path order
    (and `random`, random_pruning's run kind, accepted as its name). A second command adds runs to
    the experiment (complete runs are kept)."""
    exp = tmp_path / "one"
    common = ["--trials", 2, "--levels", 1, *HP, "--output-dir", exp, *RUN, "--data-root", mnist_root]
    assert lth("lottery", *common, "--controls", "random", "--control-levels", "0", "--workers", 2) == 0
    assert lth("lottery", *common, "--controls", "reinit", "--control-levels", "1", "--control-runs", 2,
               "--workers", 1) == 0
    same_experiment(separate, exp)
    assert not layout.run_dir(exp, 0, 0, "reinit", 0).exists()


def test_one_command_killed_with_sigkill_resumes_bitwise(separate, tmp_path, mnist_root):
    """Killed once the first control run has started (mid-run or between runs), and run again."""
    exp = tmp_path / "killed"
    args = ["lottery", "--trials", 2, "--levels", 1, *HP, *RUN, "--workers", 1, "--checkpoint-seconds", "0.05",
            "--controls", "reinit", "--control-levels", "1", "--control-runs", 2]

    def control_started():
        return any((layout.run_dir(exp, t, 1, "reinit", r) / layout.RUN_FILE).exists() for t in (0, 1) for r in (0, 1))

    assert kill_and_resume([str(a) for a in args], exp, mnist_root, [control_started]) == 1
    same_experiment(separate, exp, CONTROL_RUNS[:2])


@pytest.mark.parametrize(("flags", "message"), [
    (["--controls", "nonsense"], "unknown control 'nonsense'"),
    (["--control-levels", "0"], "need --controls"),
    (["--controls", "reinit", "--control-levels", "3"], "names level 3"),
    (["--controls", "reinit", "--batched"], "cannot be combined with --batched"),
    (["--controls", "reinit", "--control-runs", "0"], "--control-runs must be"),
])
def test_control_flag_errors_write_nothing(tmp_path, capsys, flags, message):
    exp = tmp_path / "exp"
    assert lth("lottery", "--levels", 2, *flags, "--output-dir", exp, *HP, *RUN) == 2
    assert message in capsys.readouterr().err
    assert not exp.exists()
