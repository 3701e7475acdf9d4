"""Processes: workers die with their parent, signals stop the whole tree resumably, sweeps run
every line, the parent shows progress. Real `lth` subprocesses, small models, generous liveness
timeouts, no timed assertions."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_run, lth

from lottery_ticket import checkpoint, layout

LIVENESS = 120  # seconds: only ever a bound on waiting for something that must happen
# Long enough that the experiment is still running when the tests stop it (they check).
LONG = ["--model", "fc_100", "--iterations", "4000", "--eval-every", "1000", "--checkpoint-seconds", "0.2",
        "--levels", "3", "--trials", "2", "--threads", "1"]


def lth_command(*argv) -> list[str]:
    """The installed `lth` command (the console script next to this Python), with `argv`."""
    script = Path(sys.executable).with_name("lth")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "lottery_ticket.cli"]
    return base + [str(a) for a in argv]


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)] = stat[1]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def wait_until(condition, what: str, timeout: float = LIVENESS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def started(exp: Path, trials=(0, 1)) -> bool:
    """Every trial's level 0 has written a checkpoint: its worker is training."""
    return all((layout.run_dir(exp, t, 0) / layout.CHECKPOINT / checkpoint.FILE).exists() for t in trials)


def all_complete(exp: Path, trials=(0, 1), levels=(0, 1, 2, 3)) -> bool:
    return all(layout.is_complete(layout.run_dir(exp, t, lv)) for t in trials for lv in levels)


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_root) -> Path:
    """The uninterrupted experiment, in this process on one worker."""
    exp = tmp_path_factory.mktemp("reference") / "exp"
    assert lth("lottery", *LONG, "--workers", "1", "--quiet", "--output-dir", exp, "--data-root", mnist_root) == 0
    return exp


# --------------------------------------------------------------------------- item 3: no orphans


@pytest.mark.parametrize("how", [signal.SIGKILL], ids=["SIGKILL"])  # (SIGTERM: see the signal tests below)
def test_workers_die_with_their_parent_and_the_command_reruns(tmp_path, mnist_root, how):
    exp = tmp_path / "exp"
    command = lth_command("lottery", *LONG, "--workers", "2", "--quiet", "--output-dir", exp, "--data-root", mnist_root)
    proc = start(command)
    try:
        wait_until(lambda: started(exp) or proc.poll() is not None, "both workers to train")
        children = descendants(proc.pid)
        assert proc.poll() is None and len(children) >= 2, "the experiment ended before the test could stop it"
        os.kill(proc.pid, how)
        proc.wait(timeout=LIVENESS)
        wait_until(lambda: not any(alive(pid) for pid in children), "the workers to die with their parent")
        if how == signal.SIGTERM:
            assert proc.returncode == 143
            assert "run the same command again to resume" in proc.stderr.read()
        assert not all_complete(exp)
    finally:
        proc.kill()
        proc.wait()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert all_complete(exp)


def test_a_killed_sweeps_workers_die_with_it(tmp_path, mnist_root):
    exps = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    argfile = tmp_path / "lines.txt"
    argfile.write_text("".join(f"lottery {' '.join(LONG)} --trials 1 --quiet --output-dir {e} --data-root {mnist_root}\n"
                               for e in exps))
    command = lth_command("sweep", argfile, "--workers", "2", "--quiet")
    proc = start(command)
    try:
        wait_until(lambda: sum(started(e, trials=(0,)) for e in exps) >= 2 or proc.poll() is not None,
                   "two sweep lines to train")
        children = descendants(proc.pid)
        assert proc.poll() is None and len(children) >= 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=LIVENESS)
        wait_until(lambda: not any(alive(pid) for pid in children), "the sweep's workers to die with it")
        # a queued line never starts once the sweep is gone
        assert sum((layout.run_dir(e, 0, 0) / layout.RUN_FILE).exists() for e in exps) == 2
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- item 4: prompt, resumable stop


@pytest.mark.parametrize(("how", "workers", "code"), [(signal.SIGINT, 2, 130), (signal.SIGTERM, 2, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_parent_alone_stops_promptly_and_resumes_bitwise(tmp_path, mnist_root, reference, how,
                                                                         workers, code):
    exp = tmp_path / "exp"
    command = lth_command("lottery", *LONG, "--workers", workers, "--quiet", "--output-dir", exp,
                          "--data-root", mnist_root)
    proc = start(command)
    try:
        trials = (0, 1) if workers == 2 else (0,)
        wait_until(lambda: started(exp, trials) or proc.poll() is not None, "training to start")
        assert proc.poll() is None, "the experiment ended before the test could stop it"
        children = descendants(proc.pid)
        os.kill(proc.pid, how)  # the parent only, not its process group
        proc.wait(timeout=LIVENESS)
        stderr = proc.stderr.read()
        assert proc.returncode == code, stderr
        assert "run the same command again to resume" in stderr
        assert not any(alive(pid) for pid in children)
        # stopped promptly: a run left with its checkpoint, the last level never begun
        for t in trials:
            assert not layout.run_dir(exp, t, 3).exists()
        assert any(exp.rglob(checkpoint.FILE))
        assert not any(exp.rglob(".lock"))
    finally:
        proc.kill()
        proc.wait()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    for t in (0, 1):
        for level in range(4):
            assert_same_run(layout.run_dir(reference, t, level), layout.run_dir(exp, t, level))


def stop_at_step(monkeypatch, step: int) -> None:
    """A stop request (as by SIGINT) that arrives before training step `step` (0-based)."""
    from lottery_ticket import procs

    calls = iter(range(10**9))
    monkeypatch.setattr(procs, "stop_requested", lambda: next(calls) >= step)
    monkeypatch.setattr(procs, "stop_signal", lambda: int(signal.SIGINT))


@pytest.mark.parametrize("step", [0, 1, 137], ids=["before-the-first-step", "first-step", "mid-window"])
def test_a_stopped_run_checkpoints_and_resumes_bitwise(splits, tmp_path, monkeypatch, step):
    """In one process (`lth train`, `--workers 1`): the loop stops at the step the request comes."""
    from dataclasses import replace

    from lottery_ticket import procs
    from lottery_ticket.hparams import Hparams, TrainingHparams
    from lottery_ticket.models import build_model
    from lottery_ticket.trainer import train

    hp = Hparams(training=TrainingHparams(iterations=250, eval_every=100, lr_milestones="150", warmup_iterations=20))
    hp = replace(hp, training=replace(hp.training, rewind_iteration=50))
    train(build_model("fc_100", seed=0), splits, hp, order_seed=1, output_dir=tmp_path / "full",
          run_info={"trial": 0})
    out = tmp_path / "stopped"
    with monkeypatch.context() as m:
        stop_at_step(m, step)
        with pytest.raises(procs.Stopped) as stopped:
            train(build_model("fc_100", seed=0), splits, hp, order_seed=1, output_dir=out, run_info={"trial": 0},
                  checkpoint_seconds=1e9)
    assert stopped.value.signum == signal.SIGINT
    assert not layout.is_complete(out) and (out / layout.CHECKPOINT / checkpoint.FILE).exists()
    assert not (out / ".lock").exists()
    resumed = train(build_model("fc_100", seed=0), splits, hp, order_seed=1, output_dir=out, run_info={"trial": 0})
    assert resumed.resumed_from == step
    assert_same_run(tmp_path / "full", out)


def test_a_stopped_batched_computation_checkpoints_and_resumes_bitwise(splits, tmp_path, monkeypatch):
    import torch

    from lottery_ticket import procs
    from lottery_ticket.batched import train_batched
    from lottery_ticket.hparams import Hparams, TrainingHparams
    from lottery_ticket.models import build_model

    hp = Hparams(training=TrainingHparams(iterations=200, eval_every=50))

    def fresh():
        return [build_model("fc_100", seed=s) for s in (1, 2)]

    expected = train_batched(fresh(), splits, hp, [11, 12])
    with monkeypatch.context() as m:
        stop_at_step(m, 77)
        with pytest.raises(procs.Stopped):
            train_batched(fresh(), splits, hp, [11, 12], checkpoint_dir=tmp_path, identity={"runs": ["a", "b"]},
                          checkpoint_seconds=1e9)
    got = train_batched(fresh(), splits, hp, [11, 12], checkpoint_dir=tmp_path, identity={"runs": ["a", "b"]})
    assert [r.resumed_from for r in got] == [77, 77]
    for a, b in zip(expected, got, strict=True):
        assert a.metrics == b.metrics and all(torch.equal(a.final[k], b.final[k]) for k in a.final)


# --------------------------------------------------------------------------- item 9: sweeps

TINY = "--model fc_100 --iterations 20 --eval-every 10 --quiet"


def test_a_failing_line_does_not_stop_a_one_worker_sweep(tmp_path, mnist_root, capsys):
    bad = f"train {TINY} --masks {tmp_path / 'missing.safetensors'} --output-dir {tmp_path / 'bad'} --data-root {mnist_root}"
    argfile = tmp_path / "lines.txt"
    argfile.write_text(f"train {TINY} --output-dir {tmp_path / 'a'} --data-root {mnist_root}\n{bad}\n"
                       f"train {TINY} --output-dir {tmp_path / 'b'} --data-root {mnist_root}\n")
    assert lth("sweep", argfile, "--workers", "1") == 2
    assert layout.is_complete(tmp_path / "a") and layout.is_complete(tmp_path / "b")
    err = capsys.readouterr().err
    assert f"failed: {bad}" in err and "1 of 3 sweep lines failed" in err


def test_dry_run_does_not_run_an_argfile_script(tmp_path, capsys):
    marker = tmp_path / "ran"
    script = tmp_path / "lines.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\necho 'train --output-dir {tmp_path / 'a'}'\n")
    script.chmod(0o755)
    assert lth("sweep", script, "--dry-run") == 0
    assert not marker.exists()
    assert "would run argfile script" in capsys.readouterr().out


def test_a_hanging_argfile_script_is_time_limited(tmp_path):
    script = tmp_path / "lines.sh"
    script.write_text("#!/bin/sh\nsleep 600\n")
    script.chmod(0o755)
    done = subprocess.run(lth_command("sweep", script, "--argfile-timeout", "1"), capture_output=True, text=True,
                          timeout=LIVENESS)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "did not finish within 1 s" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_text_argfile_with_the_exec_bit_is_read_as_text(tmp_path, capsys):
    argfile = tmp_path / "lines.txt"
    argfile.write_text(f"train --output-dir {tmp_path / 'a'}\n")
    argfile.chmod(0o755)  # as on network and Windows mounts
    assert lth("sweep", argfile, "--dry-run") == 0
    assert capsys.readouterr().out.strip() == f"train --output-dir {tmp_path / 'a'}"


def test_argfile_timeout_must_be_positive(tmp_path, capsys):
    argfile = tmp_path / "lines.txt"
    argfile.write_text("")
    assert lth("sweep", argfile, "--argfile-timeout", "nan") == 2
    assert capsys.readouterr().err.startswith("error: --argfile-timeout")


# --------------------------------------------------------------------------- item 11: not silent


def test_workers_show_what_starts_before_any_run_finishes(tmp_path, mnist_root):
    exp = tmp_path / "exp"
    done = subprocess.run(lth_command("lottery", "--model", "fc_100", "--iterations", "50", "--eval-every", "25",
                                      "--levels", "1", "--trials", "2", "--workers", "2", "--output-dir", exp,
                                      "--data-root", mnist_root), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    first_finished = next(i for i, line in enumerate(lines) if "early stop at" in line)
    assert lines[0].startswith("starting 4 runs on 2 worker processes")  # 2 trials x levels 0, 1
    assert any(line.startswith("start: ") and "trial_" in line for line in lines[:first_finished])


def test_progress_view_counts_runs_and_estimates_time_left():
    import queue

    from lottery_ticket.runner import ProgressView

    view = ProgressView(runs=4, jobs=2)
    events = queue.Queue()
    for event in [(1, "start", "a", (0, 100)), (1, "step", "a", 50), (2, "start", "b", (0, 100)),
                  (1, "step", "a", 100), (1, "done", "a", True)]:
        events.put(event)
    view.update(events, jobs_done=0)
    view.close()
    assert view.done == 1 and list(view.running) == ["b"] and view.trained == 100
    assert "1 running, 0/2 jobs done" in view.summary() and "ETA" in view.summary()


def test_quiet_silences_download_lines(monkeypatch):
    import lottery_ticket.data as data
    from lottery_ticket.hparams import PRESETS
    from lottery_ticket.runner import Context, load_splits

    seen = {}
    monkeypatch.setattr(data, "load_dataset", lambda *a, **kw: seen.update(kw))
    load_splits(PRESETS["paper"][0], Context(data_root="/nonexistent", quiet=True), None)
    assert seen["quiet"] is True


def test_version(capsys):
    from lottery_ticket import __version__

    with pytest.raises(SystemExit) as exit_:
        lth("--version")
    assert exit_.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_a_second_signal_stops_at_once():
    from lottery_ticket import procs

    with procs.stop_on_signals():
        assert not procs.stop_requested()
        procs.request_stop(signal.SIGTERM)  # the first one asks to stop at the next step
        assert procs.stop_requested() and procs.stop_signal() == signal.SIGTERM
        with pytest.raises(procs.Stopped) as stopped:
            procs.request_stop(signal.SIGINT)
        assert stopped.value.signum == signal.SIGTERM
    assert not procs.stop_requested()
