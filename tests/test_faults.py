"""Nothing lost: results that do not depend on the worker count, divergence, unwritable and full
disks, atomic writes, loading that never runs code, refused flags, and locks left by crashes.

Every CLI call here runs `lottery_ticket.cli.main` in this process (one line on stderr, exit 2 for
a user error; anything else would raise and fail the test with its traceback), except the real
full/read-only disk test, which runs in a private mount namespace so nothing outlives it.
"""

import ast
import errno
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run, lth

import lottery_ticket
from lottery_ticket import layout, store
from lottery_ticket.checkpoint import load_checkpoint
from lottery_ticket.errors import LotteryError
from lottery_ticket.layout.files import read_metrics
from lottery_ticket.lock import STALE_SECONDS, RunLock
from lottery_ticket.store import load_tensors, save_tensors, write_bytes_atomic
from lottery_ticket.trainer import threads

SRC = Path(lottery_ticket.__file__).resolve().parent
# fc_100 keeps every run small; the code paths are those of LeNet-300-100 (same fast MLP trainer).
EXP_FLAGS = ["--model", "fc_100", "--iterations", "200", "--eval-every", "100", "--quiet"]


def one_line_error(err: str, *needles: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root`: file bytes, None for directories."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, mnist_root):
    """The same 2-trial, 1-level lottery experiment run with one worker and with two workers."""
    base = tmp_path_factory.mktemp("faults")
    with threads(1):
        for workers in (1, 2):
            assert lth("lottery", "--trials", 2, "--levels", 1, *EXP_FLAGS, "--threads", 1, "--workers", workers,
                       "--output-dir", base / f"workers{workers}", "--data-root", mnist_root) == 0
    return base / "workers1", base / "workers2", mnist_root


def assert_same_runs(a: Path, b: Path, runs: list[tuple[int, int, str]]) -> None:
    for trial, level, control in runs:
        assert_same_run(*(layout.run_dir(e, trial, level, control, 0) for e in (a, b)))


# --------------------------------------------------------------------------- 1. worker counts


def test_lottery_results_do_not_depend_on_the_number_of_workers(experiments):
    one, two, _ = experiments
    assert_same_runs(one, two, [(t, lv, "main") for t in (0, 1) for lv in (0, 1)])
    # the trials really differ, so the comparison above is not between copies of one run
    first, second = (load_tensors(layout.run_dir(one, t, 0) / layout.INITIAL) for t in (0, 1))
    assert not torch.equal(first["output.weight"], second["output.weight"])
    assert not leftovers(one) and not leftovers(two)


def test_reinit_results_do_not_depend_on_the_number_of_workers(experiments, tmp_path):
    one, _, root = experiments
    copies = {w: tmp_path / f"reinit{w}" for w in (1, 2)}
    before = snapshot(one)
    for workers, exp in copies.items():
        shutil.copytree(one, exp)
        assert lth("reinit", "--experiment", exp, "--levels", "1", "--runs", 1, "--quiet", "--threads", 1,
                   "--workers", workers, "--data-root", root) == 0
    assert_same_runs(copies[1], copies[2], [(t, 1, "reinit") for t in (0, 1)])
    for exp in copies.values():  # the tickets the controls were made from are untouched
        after = snapshot(exp)
        assert {k: v for k, v in after.items() if "reinit_0" not in k} == before
        assert not leftovers(exp)


# --------------------------------------------------------------------------- 2. divergence


DIVERGE = ["train", "--model", "fc_100", "--optimizer", "sgd", "--iterations", 300, "--eval-every", 100, "--quiet"]


def diverged_iteration(err: str) -> int:
    one_line_error(err, "training loss became NaN or infinite at iteration ")
    return int(err.split("at iteration ")[1].split(";")[0])


def test_divergence_through_the_cli_keeps_the_files_and_repeats_identically(tmp_path, mnist_root, capsys):
    """Decision: a diverged run is not complete and not deleted. The same command again resumes
    from the last good checkpoint (or restarts) and, training being deterministic, diverges at the
    same iteration, leaving identical files; a command with other settings is refused."""
    # 1) no checkpoint yet: diverges within a few iterations of a huge learning rate
    out = tmp_path / "huge_lr"
    argv = [*DIVERGE, "--lr", "1e6", "--output-dir", out, "--data-root", mnist_root]
    assert lth(*argv) == 2
    err = capsys.readouterr().err
    bad = diverged_iteration(err)
    assert 1 <= bad < 100 and "no checkpoint was written" in err and str(out / layout.METRICS) in err
    assert [r[0] for r in read_metrics(out / layout.METRICS)] == [0, 0]  # validation and test at 0
    assert not layout.is_complete(out) and not (out / layout.FINAL).exists()
    assert not leftovers(out)
    kept = snapshot(out)
    assert lth(*argv) == 2
    assert capsys.readouterr().err == err
    again = snapshot(out)
    assert {k: v for k, v in again.items() if "tensorboard" not in k} == {
        k: v for k, v in kept.items() if "tensorboard" not in k}
    assert not layout.is_complete(out) and not leftovers(out)

    # 2) after a checkpoint: lr x 1e7 at iteration 150 diverges between two evaluations
    out = tmp_path / "late"
    argv = [*DIVERGE, "--lr", "0.1", "--lr-milestones", "150", "--lr-gamma", "1e7", "--checkpoint-seconds", "0.001",
            "--output-dir", out, "--data-root", mnist_root]
    assert lth(*argv) == 2
    err = capsys.readouterr().err
    bad = diverged_iteration(err)
    assert 150 < bad <= 300 and "last good checkpoint in" in err
    rows = read_metrics(out / layout.METRICS)
    assert rows[-1][0] >= 100 and all(r[0] < bad for r in rows)
    assert all(r[2] == r[2] for r in rows)  # no NaN was logged
    assert (out / layout.CHECKPOINT / "state.safetensors").is_file() and not layout.is_complete(out)
    kept = snapshot(out)
    assert lth(*argv) == 2  # resumes from the checkpoint and diverges again, identically
    assert capsys.readouterr().err == err
    again = snapshot(out)
    assert {k: v for k, v in again.items() if "tensorboard" not in k} == {
        k: v for k, v in kept.items() if "tensorboard" not in k}
    # other settings in the same directory are refused without touching anything
    assert lth(*[a for a in argv if a not in ("--lr-gamma", "1e7")]) == 2
    one_line_error(capsys.readouterr().err, "different settings", "training.lr_gamma")
    assert snapshot(out) == again and not leftovers(out)


# --------------------------------------------------------------------------- 3. unwritable, full disk


def test_output_directory_that_cannot_be_created_is_one_line(tmp_path, mnist_root, capsys):
    """Root ignores permission bits, so the obstacle is a regular file in the way."""
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    cases = [
        (["train", *EXP_FLAGS, "--output-dir", blocker / "sub"], "Not a directory"),
        (["train", *EXP_FLAGS, "--output-dir", blocker], "File exists"),
        (["lottery", *EXP_FLAGS, "--levels", 0, "--workers", 1, "--output-dir", blocker / "sub"], "Not a directory"),
        (["lottery", *EXP_FLAGS, "--levels", 0, "--workers", 1, "--output-dir", blocker], "not a lottery_ticket experiment"),
    ]
    for argv, message in cases:
        assert lth(*argv, "--data-root", mnist_root) == 2, argv
        one_line_error(capsys.readouterr().err, str(blocker), message)
        assert blocker.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_full_disk_keeps_complete_results_and_leaves_no_temp_files(experiments, tmp_path, monkeypatch, capsys):
    """ENOSPC from the kernel (/dev/full) for every atomic write in the new level."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    one, _, root = experiments
    exp = tmp_path / "exp"
    shutil.copytree(one, exp)
    target = layout.level_dir(exp, 0, 2)
    real_mkstemp = tempfile.mkstemp

    def full_mkstemp(*args, dir=None, **kwargs):
        fd, name = real_mkstemp(*args, dir=dir, **kwargs)
        if dir is not None and Path(dir).resolve().is_relative_to(target.resolve()):
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)  # the temp file exists, writes fail
        return fd, name

    monkeypatch.setattr(store.tempfile, "mkstemp", full_mkstemp)
    before = snapshot(one)
    assert lth("lottery", "--levels", 2, "--trials", 2, *EXP_FLAGS, "--workers", 1, "--threads", 1,
               "--output-dir", exp, "--data-root", root) == 2
    one_line_error(capsys.readouterr().err, "no space left on device", str(target))
    after = snapshot(exp)
    assert {k: v for k, v in after.items() if k in before} == before
    assert all(k.startswith(str(target.relative_to(exp))) for k in set(after) - set(before))
    assert not leftovers(exp)


INNER = r"""
import contextlib, io, json, os, shutil, sys, traceback
from pathlib import Path
from lottery_ticket.cli import main

source, full, ro, out, root = map(Path, sys.argv[1:6])
results = {}

def call(name, *argv):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    except BaseException:
        code = "exception"
        err.write(traceback.format_exc())
    results[name] = {"code": code, "stderr": err.getvalue()}

flags = json.loads(sys.argv[6])
shutil.copytree(source, full / "exp")
call("full", "lottery", "--levels", 2, "--trials", 2, *flags, "--output-dir", full / "exp", "--data-root", root)
def fill():
    fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass
    os.close(fd)

fill()
call("lock", "lottery", "--levels", 2, "--trials", 2, *flags, "--output-dir", full / "exp", "--data-root", root)
os.unlink(full / "filler")
call("read_only", "lottery", "--levels", 0, *flags, "--output-dir", ro / "exp", "--data-root", root)
shutil.copytree(full / "exp", out / "after")
fill()
call("report_full", "report", full / "exp")
os.unlink(full / "filler")
call("report_read_only", "report", Path(sys.argv[7]))  # the complete experiment, mounted read-only
results["temp_files"] = [str(p) for p in full.rglob("*.tmp")]
(out / "results.json").write_text(json.dumps(results))
"""


def test_real_full_and_read_only_filesystems(experiments, tmp_path):
    """A tmpfs a little larger than a complete experiment, a read-only one, and the experiment
    bound read-only (for `lth report`), in a private mount namespace (root with CAP_SYS_ADMIN
    only; skipped elsewhere)."""
    one, _, root = experiments
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount")
    full, ro, out, ro_exp = (tmp_path / n for n in ("full", "ro", "out", "ro_exp"))
    for d in (full, ro, out, ro_exp):
        d.mkdir()
    page = os.sysconf("SC_PAGE_SIZE")
    used = sum(-(-p.stat().st_size // page) * page for p in one.rglob("*") if p.is_file())
    size_k = (used + max(3 * page, 64 * 1024)) // 1024  # room for level 2's run.json and lock, not its 310 KiB masks
    (tmp_path / "inner.py").write_text(INNER)
    flags = json.dumps([*EXP_FLAGS, "--workers", "1", "--threads", "1"])
    script = (f"mount -t tmpfs -o size={size_k}k tmpfs {full} && mount -t tmpfs -o ro,size=16k tmpfs {ro} "
              f"&& mount --bind {one} {ro_exp} && mount -o remount,bind,ro {ro_exp} "
              f"|| exit 99; echo mounted > {out}/mounted; "
              f"exec {sys.executable} {tmp_path / 'inner.py'} {one} {full} {ro} {out} {root} '{flags}' {ro_exp}")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=300)
    if not (out / "mounted").exists():
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    level2 = layout.level_dir(full / "exp", 0, 2)
    assert results["full"]["code"] == 2
    one_line_error(results["full"]["stderr"], "no space left on device", str(level2))
    assert results["lock"]["code"] == 2
    one_line_error(results["lock"]["stderr"], "no space left on device", ".lock")
    assert results["read_only"]["code"] == 2
    one_line_error(results["read_only"]["stderr"], "Read-only file system")
    assert results["report_full"]["code"] == 2  # `lth report`: one line too, not a traceback
    one_line_error(results["report_full"]["stderr"], "no space left on device", str(full / "exp"))
    assert results["report_read_only"]["code"] == 2
    one_line_error(results["report_read_only"]["stderr"], "Read-only file system", str(ro_exp))
    assert results["temp_files"] == []
    before, after = snapshot(one), snapshot(out / "after")
    assert {k: v for k, v in after.items() if k in before} == before  # complete results untouched
    assert all(k.startswith(str(Path("trial_0", "level_2"))) for k in set(after) - set(before))
    assert not leftovers(out / "after")  # no temp file, no lock left by the failed lock write


# --------------------------------------------------------------------------- 4. atomic writes


class _HalfWriter:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_atomic_write_failing_midway_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "results.safetensors"
    old = {"w": torch.arange(1000, dtype=torch.float32)}
    save_tensors(path, old)
    old_bytes = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(store.os, "fdopen", lambda *a, **k: _HalfWriter(real_fdopen(*a, **k)))
    with pytest.raises(LotteryError, match=f"cannot write {path}: no space left on device"):
        save_tensors(path, {"w": torch.zeros(5000)})
    assert path.read_bytes() == old_bytes and os.listdir(tmp_path) == [path.name]
    monkeypatch.undo()

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_atomic(path, b"new")
    monkeypatch.undo()

    def replace_fails(src, dst):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(store.os, "replace", replace_fails)
    with pytest.raises(OSError):
        write_bytes_atomic(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes and os.listdir(tmp_path) == [path.name]
    assert torch.equal(load_tensors(path)["w"], old["w"])
    write_bytes_atomic(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == [path.name]


# --------------------------------------------------------------------------- 5. safe loading

UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
CIFAR = Path("data", "cifar.py")  # the restricted Unpickler, on purpose (tested in test_data_cifar.py)


def _const(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "not a constant"
    return "missing"


def unpickling_problems(source: str, rel: Path) -> list[str]:
    """Every way `source` could unpickle on a read path (the CIFAR reader may import pickle)."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        where = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            modules = names if isinstance(node, ast.Import) else [node.module or ""]
            if any(m.split(".")[0] in UNPICKLING_MODULES for m in modules) and rel != CIFAR:
                problems.append(f"{where}: imports {modules}")
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "numpy") and "load" in names:
                problems.append(f"{where}: imports {node.module}.load under another name")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, attr = ast.unparse(node.func.value), node.func.attr
            if attr == "load" and owner == "torch" and _const(node, "weights_only") is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
            if attr == "load" and owner in ("np", "numpy") and _const(node, "allow_pickle") is not False:
                problems.append(f"{where}: {owner}.load without allow_pickle=False")
            if attr in ("read_pickle", "from_pickle") or (owner == "pickle" and attr in ("load", "loads")):
                problems.append(f"{where}: {owner}.{attr}")
        elif isinstance(node, ast.keyword) and node.arg == "allow_pickle" and not (
                isinstance(node.value, ast.Constant) and node.value.value is False):
            problems.append(f"{where}: allow_pickle other than False")
    return problems


def test_no_read_path_can_unpickle():
    problems = []
    for file in sorted(SRC.rglob("*.py")):
        problems += unpickling_problems(file.read_text(), file.relative_to(SRC))
    assert not problems, problems
    # the CIFAR reader unpickles only through its restricted Unpickler
    cifar = (SRC / CIFAR).read_text()
    assert "pickle.load(" not in cifar and "pickle.loads(" not in cifar and "def find_class" in cifar
    # the scan itself finds what it is looking for
    bad = ("import pickle\nimport torch, numpy as np\nfrom torch import load\n"
           "torch.load(f)\ntorch.load(f, weights_only=False)\nnp.load(f)\nnp.load(f, allow_pickle=True)\n"
           "pd.read_pickle(f)\nnp.lib.format.read_array(f, allow_pickle=True)\n")
    flagged = {int(p.split(":")[1]) for p in unpickling_problems(bad, Path("x.py"))}
    assert flagged == {1, 3, 4, 5, 6, 7, 8, 9}  # every line but `import torch, numpy as np`
    ok = "import numpy as np\nimport torch\ntorch.load(f, weights_only=True)\nnp.load(f, allow_pickle=False)\n"
    assert unpickling_problems(ok, Path("x.py")) == []


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_files(tmp_path) -> dict[str, Path]:
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    blobs = {
        "empty": b"",
        "garbage": os.urandom(64),
        "huge_header_length": struct.pack("<Q", 2**62) + b"{}",
        "header_beyond_file": struct.pack("<Q", 10_000) + b"{}",
        "header_not_json": struct.pack("<Q", 8) + b"not json",
        "offsets_beyond_data": struct.pack("<Q", len(header)) + header + bytes(16),
        "pickle": pickle.dumps({"w": _Exploit(tmp_path / "pwned")}),
    }
    files = {name: tmp_path / f"{name}.safetensors" for name in blobs}
    for name, blob in blobs.items():
        files[name].write_bytes(blob)
    torch.save({"w": torch.ones(3)}, tmp_path / "torch_save.safetensors")  # a zip of pickles
    files["torch_save"] = tmp_path / "torch_save.safetensors"
    return files


def test_crafted_tensor_files_are_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for name, path in _crafted_files(tmp_path).items():
        with pytest.raises(LotteryError, match="corrupted or truncated tensor file"):
            load_tensors(path)
        checkpoint = tmp_path / f"checkpoint_{name}"
        checkpoint.mkdir()
        shutil.copy(path, checkpoint / "state.safetensors")
        with pytest.raises(LotteryError, match="corrupted checkpoint"):
            load_checkpoint(checkpoint, model, optimizer)
    assert not (tmp_path / "pwned").exists()


def test_pickle_renamed_to_safetensors_is_refused_by_the_cli(tmp_path, mnist_root, capsys):
    evil = tmp_path / "masks.safetensors"
    evil.write_bytes(pickle.dumps({"output.weight": _Exploit(tmp_path / "pwned")}))
    for flag in ("--masks", "--init-weights"):
        out = tmp_path / f"run{flag}"
        assert lth("train", *EXP_FLAGS, flag, evil, "--output-dir", out, "--data-root", mnist_root) == 2
        one_line_error(capsys.readouterr().err, "corrupted or truncated tensor file", str(evil))
        assert not out.exists()
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- 6. refused flags


def test_invalid_flags_are_one_line_and_write_nothing(experiments, tmp_path, capsys):
    one, _, root = experiments
    exp = tmp_path / "exp"
    shutil.copytree(one, exp)
    before = snapshot(exp)
    same = ["lottery", "--trials", 2, *EXP_FLAGS, "--workers", 1, "--data-root", root]
    run = layout.run_dir(exp, 0, 1)
    cases = [
        ([*same, "--levels", -1, "--output-dir", exp], "--levels"),
        ([*same, "--levels", 1, "--trials", 0, "--output-dir", exp], "--trials"),
        ([*same, "--levels", 1, "--checkpoint-seconds", 0, "--output-dir", exp], "--checkpoint-seconds"),
        ([*same, "--levels", 1, "--batch-size", 55_001, "--output-dir", exp], "--batch-size"),
        ([*same, "--levels", 1, "--validation-size", 60_000, "--output-dir", exp], "--validation-size"),
        ([*same, "--levels", 1, "--rewind-iteration", 500, "--output-dir", exp], "--rewind-iteration"),
        ([*same, "--levels", 1, "--rewind-iteration", 200, "--output-dir", exp], "--rewind-iteration"),
        (["reinit", "--experiment", exp, "--levels", 1, "--runs", 0, "--data-root", root], "--runs"),
        (["reinit", "--experiment", exp, "--levels", -1, "--data-root", root], "--levels"),
        (["reinit", "--experiment", exp, "--levels", 1, "--checkpoint-seconds", 0, "--data-root", root],
         "--checkpoint-seconds"),
        (["train", *EXP_FLAGS, "--batch-size", 55_001, "--output-dir", run, "--data-root", root], "--batch-size"),
        (["train", *EXP_FLAGS, "--validation-size", 60_000, "--output-dir", run, "--data-root", root],
         "--validation-size"),
        (["train", *EXP_FLAGS, "--rewind-iteration", 201, "--output-dir", run, "--data-root", root],
         "--rewind-iteration"),
        (["train", *EXP_FLAGS, "--checkpoint-seconds", 0, "--output-dir", run, "--data-root", root],
         "--checkpoint-seconds"),
    ]
    for argv, flag in cases:
        assert lth(*argv) == 2, argv
        one_line_error(capsys.readouterr().err, flag)
        # the same flags on a new directory create nothing there
        fresh = tmp_path / "fresh"
        new_argv = [fresh if a in (exp, run) else a for a in argv]
        if "reinit" not in argv:
            assert lth(*new_argv) == 2, new_argv
            one_line_error(capsys.readouterr().err, flag)
            assert not fresh.exists(), new_argv
    assert snapshot(exp) == before


# --------------------------------------------------------------------------- 7. locks left by crashes


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


HOST = socket.gethostname()


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00garbage", b"[1, 2]", b"{\"ho",
                                     json.dumps({"host": HOST, "pid": "abc"}).encode()])
def test_old_empty_or_unreadable_lock_file_is_stale(tmp_path, content):
    lock = tmp_path / ".lock"
    lock.write_bytes(content)
    _age(lock, 2 * STALE_SECONDS)
    with RunLock(tmp_path):
        assert json.loads(lock.read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
    assert not lock.exists()


def test_fresh_empty_lock_is_waited_for_and_a_live_holder_is_not_taken_over(tmp_path, monkeypatch):
    import threading

    from lottery_ticket import lock as lock_module

    monkeypatch.setattr(lock_module, "STALE_SECONDS", 0.5)
    lock = tmp_path / ".lock"
    live = json.dumps({"host": socket.gethostname(), "pid": os.getppid()}).encode()
    # another process between creating and writing it: wait, then name it once it has written
    lock.write_bytes(b"")
    writer = threading.Timer(0.2, lock.write_bytes, args=(live,))
    writer.start()
    with pytest.raises(LotteryError, match=f"pid {os.getppid()}"):
        RunLock(tmp_path).acquire()
    writer.join()
    assert lock.read_bytes() == live
    _age(lock, 10 * STALE_SECONDS)  # old, but its process is alive: still held
    with pytest.raises(LotteryError, match=f"pid {os.getppid()}"):
        RunLock(tmp_path).acquire()
    assert lock.read_bytes() == live
    # a writer killed before writing (the file stays empty): taken over once it is stale, not before
    lock.write_bytes(b"")
    started = time.monotonic()
    with RunLock(tmp_path):
        assert time.monotonic() - started >= 0.4
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_lock_write_failure_leaves_no_lock_file(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(LotteryError, match="no space left on device"):
        RunLock(tmp_path / "run").acquire()
    monkeypatch.undo()
    assert not (tmp_path / "run" / ".lock").exists()
    with RunLock(tmp_path / "run"):
        pass


def test_training_recovers_a_run_whose_lock_file_was_left_empty(tmp_path, splits):
    from lottery_ticket.hparams import Hparams, TrainingHparams
    from lottery_ticket.models import build_model
    from lottery_ticket.trainer import train

    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_bytes(b"")
    _age(out / ".lock", 2 * STALE_SECONDS)
    hp = Hparams(training=TrainingHparams(iterations=20, eval_every=10))
    train(build_model("fc_10", seed=0), splits, hp, order_seed=0, output_dir=out)
    assert layout.is_complete(out) and not leftovers(out)


def test_lock_outside_a_directory_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LotteryError, match="Not a directory"):
        RunLock(tmp_path / "f" / "run").acquire()


def test_taking_a_lock_removes_a_killed_writers_temp_files(tmp_path):
    """A writer SIGKILLed inside write_bytes_atomic leaves `.<name>.<random>.tmp`; the next holder
    of the directory's lock removes it (and nothing else: not a user's `.*.tmp` files, not the
    temporary files of our own names in folders below that are not the run's checkpoint/)."""
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "src" / "deep").mkdir(parents=True)
    leftovers_ = [run / ".metrics.csv.k3j2.tmp", run / "checkpoint" / ".state.safetensors.x9.tmp",
                  run / ".COMPLETE.ab_12xyz.tmp", run / ".final.safetensors.q1w2e3r4.tmp"]
    kept = [run / "metrics.csv", run / "notes.tmp", run / "checkpoint" / "state.safetensors",
            run / ".draft.tmp", run / ".notes.txt.abc.tmp", run / ".metrics.csv.tmp",
            run / "src" / "deep" / ".draft.tmp", run / "src" / ".metrics.csv.k3j2.tmp",
            run / "checkpoint" / ".metrics.csv.k3j2.tmp"]
    for f in leftovers_ + kept:
        f.write_bytes(b"x")
    with RunLock(run):
        assert not any(f.exists() for f in leftovers_)
        assert all(f.exists() for f in kept)
