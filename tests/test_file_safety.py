"""Never touch what is not ours, never use a damaged result (issue 17, items 1, 2, 5, 10).

* `lth train` refuses an output directory holding files that are not a run's (unless --force), and
  the stale-temp-file cleanup removes only our own atomic-write leftovers, only in the run's folder;
* `lth report` refuses a directory that is not an experiment, and writes its files atomically with
  the usual mode;
* a complete run records the SHA-256 of its result files in COMPLETE: a truncated or flipped file
  is reported by name (one line, exit 2) by `lth lottery`, `lth reinit` and `lth report`, which
  write nothing; runs completed before digests existed are read as before.
"""

import contextlib
import io
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import lth
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery_ticket import layout
from lottery_ticket.trainer import threads

EXP_FLAGS = ["--model", "fc_100", "--iterations", "200", "--eval-every", "100", "--quiet"]
LOTTERY = ["lottery", "--trials", 2, "--levels", 1, *EXP_FLAGS, "--workers", 1, "--threads", 1]
REPORT_FILES = ("report.html", "report.md", "results.csv", "aggregate.csv")


def one_line_error(err: str, *needles: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def lth_err(*argv) -> tuple[int, str]:
    """lth(*argv) and what it printed on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = lth(*argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, mnist_root):
    """A complete 2-trial, 1-level lottery experiment, and a report of it (made before any damage)."""
    base = tmp_path_factory.mktemp("file_safety")
    exp = base / "exp"
    with threads(1):
        assert lth(*LOTTERY, "--output-dir", exp, "--data-root", mnist_root) == 0
        reference = base / "reference"
        shutil.copytree(exp, reference)
        assert lth("report", reference) == 0
    return exp, reference, mnist_root


# --------------------------------------------------------------------------- item 1: lth train


def test_train_refuses_a_directory_of_other_files_and_never_deletes_them(tmp_path, mnist_root, capsys, monkeypatch):
    """The issue's reproduction: `.draft.tmp` deep in a project folder was deleted by the
    stale-temp cleanup of `lth train --output-dir proj`."""
    monkeypatch.chdir(tmp_path)
    deep = Path("proj", "src", "deep")
    deep.mkdir(parents=True)
    (deep / ".draft.tmp").write_text("important\n")
    before = snapshot(tmp_path)
    assert lth("train", "--iterations", 100, "--quiet", "--output-dir", "proj", "--data-root", mnist_root) == 2
    one_line_error(capsys.readouterr().err, "proj", "'src'", "--force")
    assert snapshot(tmp_path) == before

    # --force trains there; the user's files stay, whatever their names
    (Path("proj") / ".notes.tmp").write_text("mine\n")  # a dot-temp name, but not one of our files
    (Path("proj") / ".metrics.csv.ab12cd34.tmp").write_text("killed writer\n")  # one of ours: cleaned
    assert lth("train", *EXP_FLAGS, "--output-dir", "proj", "--force", "--data-root", mnist_root) == 0
    assert layout.is_complete("proj")
    assert (deep / ".draft.tmp").read_text() == "important\n"
    assert (Path("proj") / ".notes.tmp").read_text() == "mine\n"
    assert not (Path("proj") / ".metrics.csv.ab12cd34.tmp").exists()


def test_train_accepts_its_own_run_directory_and_explains_force_in_help(tmp_path, mnist_root, capsys):
    from lottery_ticket.cli import build_parser

    out = tmp_path / "run"
    assert lth("train", *EXP_FLAGS, "--output-dir", out, "--data-root", mnist_root) == 0
    (out / ".final.safetensors.x1y2z3w4.tmp").write_bytes(b"half")  # a killed writer's leftover
    (out / layout.LOCK).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert layout.foreign_entries(out) == []
    (out / layout.LOCK).unlink()
    assert lth("train", *EXP_FLAGS, "--output-dir", out, "--data-root", mnist_root) == 0  # complete: loaded
    empty = tmp_path / "empty"
    empty.mkdir()
    assert layout.foreign_entries(empty) == []
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "--force" in help_text and "not this run's" in help_text


# --------------------------------------------------------------------------- item 2: lth report


def test_report_refuses_a_directory_that_is_not_an_experiment(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in REPORT_FILES:
        (mine / name).write_text(f"my own {name}\n")
    (mine / "plots").mkdir()
    cases = [
        (None, "no experiment.json"),
        ('{"some": "other tool"}', "not a lottery_ticket experiment record"),
        ("[1, 2]", "not a lottery_ticket experiment record"),
        ("not json", "corrupted JSON file"),
    ]
    for content, message in cases:
        if content is not None:
            (mine / "experiment.json").write_text(content)
        before = snapshot(mine)
        assert lth("report", mine) == 2
        one_line_error(capsys.readouterr().err, str(mine), message)
        assert snapshot(mine) == before


# --------------------------------------------------------------------------- item 5: checksums


def _copy(experiment, tmp_path) -> Path:
    exp = tmp_path / "exp"
    shutil.copytree(experiment[0], exp)
    return exp


def test_complete_runs_record_the_digest_of_every_result_file(experiment):
    import hashlib

    exp = experiment[0]
    for trial in (0, 1):
        for level in (0, 1):
            run = layout.run_dir(exp, trial, level)
            digests = json.loads((run / layout.COMPLETE).read_text())["sha256"]
            present = [n for n in layout.RESULT_FILES if (run / n).exists()]
            assert sorted(digests) == sorted(present) and layout.FINAL in digests and layout.METRICS in digests
            for name, digest in digests.items():
                assert hashlib.sha256((run / name).read_bytes()).hexdigest() == digest


def test_truncated_metrics_in_a_complete_run_is_an_error_in_report_not_wrong_numbers(experiment, tmp_path, capsys):
    exp = _copy(experiment, tmp_path)
    damaged = layout.run_dir(exp, 1, 0) / layout.METRICS
    text = damaged.read_text()
    damaged.write_text(text[: text.index("\n100,") + 1])  # the rows from iteration 100 on are gone
    before = snapshot(exp)
    assert lth("report", exp) == 2
    one_line_error(capsys.readouterr().err, str(damaged), "damaged", "delete")
    assert snapshot(exp) == before  # no report, no plots


def test_truncated_masks_in_a_complete_run_is_an_error_in_report(experiment, tmp_path, capsys):
    exp = _copy(experiment, tmp_path)
    damaged = layout.run_dir(exp, 0, 1) / layout.MASKS
    damaged.write_bytes(damaged.read_bytes()[:1000])
    before = snapshot(exp)
    assert lth("report", exp) == 2
    one_line_error(capsys.readouterr().err, str(damaged), "damaged")
    assert snapshot(exp) == before


def test_random_bytes_in_final_weights_are_not_pruned_from(experiment, tmp_path, capsys):
    """A flipped byte in the data section still loads as a network; the next level would prune
    from it. `lth lottery` (a further level) and `lth reinit` refuse instead, writing nothing."""
    from safetensors.torch import load_file

    exp = _copy(experiment, tmp_path)
    root = experiment[2]
    damaged = layout.run_dir(exp, 0, 1) / layout.FINAL
    data = bytearray(damaged.read_bytes())
    data[len(data) - 100 : len(data) - 92] = os.urandom(8)
    damaged.write_bytes(bytes(data))
    load_file(str(damaged))  # still a well-formed file: only the digest tells
    before = snapshot(exp)
    argv = [a if a != 1 else 2 for a in LOTTERY[:5]] + LOTTERY[5:]  # --levels 2
    assert argv[3:5] == ["--levels", 2]
    assert lth(*argv, "--output-dir", exp, "--data-root", root) == 2
    one_line_error(capsys.readouterr().err, str(damaged), "damaged")
    assert snapshot(exp) == before and not layout.level_dir(exp, 0, 2).exists()

    initial = layout.run_dir(exp, 0, 0) / layout.INITIAL  # controls start from level 0's weights
    data = bytearray(initial.read_bytes())
    data[-50] ^= 0xFF
    initial.write_bytes(bytes(data))
    before = snapshot(exp)
    assert lth("reinit", "--experiment", exp, "--control", "reuse", "--levels", 1, "--quiet", "--workers", 1,
               "--threads", 1, "--data-root", root) == 2
    one_line_error(capsys.readouterr().err, str(initial), "damaged")
    assert snapshot(exp) == before


def test_runs_completed_before_digests_are_read_as_before(experiment, tmp_path, capsys):
    """An experiment from before digests (COMPLETE without "sha256") resumes and reports as it
    did; nothing is checked, nothing is refused."""
    exp = _copy(experiment, tmp_path)
    for complete in exp.rglob(layout.COMPLETE):
        record = json.loads(complete.read_text())
        del record["sha256"]
        complete.write_text(json.dumps(record))
    before = snapshot(exp)
    assert lth(*LOTTERY, "--output-dir", exp, "--data-root", experiment[2]) == 0
    assert snapshot(exp) == before
    assert lth("report", exp) == 0
    assert (exp / "results.csv").read_bytes() == (experiment[1] / "results.csv").read_bytes()


def _damage(path: Path, truncate: bool, where: float, xor: int) -> None:
    data = bytearray(path.read_bytes())
    index = min(int(where * len(data)), len(data) - 1)
    if truncate:
        del data[index:]
    else:
        data[index] ^= xor
    path.write_bytes(bytes(data))


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(trial=st.integers(0, 1), level=st.integers(0, 1), name=st.sampled_from(layout.RESULT_FILES[:5]),
       truncate=st.booleans(), where=st.floats(0, 1), xor=st.integers(1, 255))
def test_damaged_result_files_are_never_used_silently(experiment, trial, level, name, truncate, where, xor):
    """Property: after truncating or flipping a byte of any result file of a finished experiment,
    the same `lth lottery` command and `lth report` either stop with one line naming the file,
    writing nothing, or (report, for a file it does not read) give exactly the undamaged results."""
    original, reference, root = experiment
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "exp"
        shutil.copytree(original, exp)
        damaged = layout.run_dir(exp, trial, level) / name
        _damage(damaged, truncate, where, xor)
        before = snapshot(exp)

        code, err = lth_err(*LOTTERY, "--output-dir", exp, "--data-root", root)
        assert code == 2, err
        one_line_error(err, str(damaged), "damaged")
        assert snapshot(exp) == before

        code, err = lth_err("report", exp)
        # what the report reads (initial weights: the analytics' surviving-initial-weights figure)
        if name in (layout.RUN_FILE, layout.METRICS, layout.MASKS) or (name == layout.INITIAL and level == 0):
            assert code == 2, err
            one_line_error(err, str(damaged), "damaged")
            assert snapshot(exp) == before
        else:
            assert code == 0, err
            for report_file in ("results.csv", "aggregate.csv"):
                assert (exp / report_file).read_bytes() == (reference / report_file).read_bytes()


# --------------------------------------------------------------------------- item 10: report files


def test_report_files_are_readable_like_every_other_file(experiment, tmp_path):
    exp = _copy(experiment, tmp_path)
    old = os.umask(0o022)
    try:
        assert lth("report", exp) == 0
    finally:
        os.umask(old)
    written = [exp / n for n in REPORT_FILES] + sorted((exp / "plots").iterdir())
    assert any(p.suffix == ".png" for p in written) and any(p.suffix == ".svg" for p in written)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    run_file_mode = oct(stat.S_IMODE((layout.run_dir(exp, 0, 0) / layout.FINAL).stat().st_mode))
    assert run_file_mode == "0o644"
    assert set(modes.values()) == {"0o644"}, modes


def test_a_report_killed_while_saving_a_figure_leaves_no_truncated_figure(experiment, tmp_path, monkeypatch):
    """A kill in the middle of writing a PNG: the figure of the previous report stays whole."""
    from matplotlib.figure import Figure

    exp = _copy(experiment, tmp_path)
    assert lth("report", exp) == 0
    before = snapshot(exp)
    real_savefig = Figure.savefig

    def killed_halfway(self, target, **kwargs):
        buffer = io.BytesIO()
        real_savefig(self, buffer, **{"format": Path(str(target)).suffix[1:] or "png", **kwargs})
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(target, (str, os.PathLike)):
            Path(target).write_bytes(half)
        else:
            target.write(half)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        from lottery_ticket.analysis import write_report

        write_report(exp)
    monkeypatch.undo()
    assert snapshot(exp) == before
    assert not [p for p in exp.rglob("*.tmp")]
