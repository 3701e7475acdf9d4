"""`lth lottery --batched` and `lth reinit --batched` against the per-run path, on the real MNIST:
on one thread the same files, bit for bit (weights, masks, metrics), as training each run alone.
"""

import shutil

import pytest
import torch
from conftest import assert_same_run, lth

from lottery_ticket import layout
from lottery_ticket.store import load_tensors
from lottery_ticket.trainer import threads

FLAGS = ["--levels", "1", "--trials", "2", "--iterations", "300", "--eval-every", "100", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def experiments(tmp_path_factory, mnist_root):
    base = tmp_path_factory.mktemp("batched")
    with threads(1):
        assert lth("lottery", *FLAGS, "--workers", 1, "--output-dir", base / "separate", "--data-root", mnist_root) == 0
        assert lth("lottery", *FLAGS, "--batched", "--output-dir", base / "batched", "--data-root", mnist_root) == 0
    return base / "separate", base / "batched", mnist_root


def test_batched_lottery_writes_what_the_per_trial_path_writes(experiments):
    separate, batched, _ = experiments
    for trial in (0, 1):
        for level in (0, 1):
            assert_same_run(layout.run_dir(separate, trial, level), layout.run_dir(batched, trial, level))
    assert (load_tensors(layout.run_dir(batched, 0, 1) / layout.MASKS)["hidden.0.weight"].mean() < 1)  # pruned
    assert not (batched / layout.BATCHED_CHECKPOINTS).exists()


def test_batched_controls_write_what_separate_runs_write(experiments, tmp_path):
    separate, _, root = experiments
    copies = {mode: tmp_path / mode for mode in ("separate", "batched")}
    for mode, exp in copies.items():
        shutil.copytree(separate, exp)
        extra = ["--batched"] if mode == "batched" else ["--workers", 1]
        assert lth("reinit", "--experiment", exp, "--control", "reinit", "--levels", "0-1", "--runs", 2,
                   "--quiet", "--threads", 1, "--data-root", root, *extra) == 0
    for trial in (0, 1):
        for level in (0, 1):
            for run in (0, 1):
                assert_same_run(*(layout.run_dir(e, trial, level, "reinit", run) for e in copies.values()))
    # the two runs of one level are different runs (fresh seeds), not copies
    r0, r1 = (load_tensors(layout.run_dir(copies["batched"], 0, 1, "reinit", r) / layout.INITIAL) for r in (0, 1))
    assert not torch.equal(r0["output.weight"], r1["output.weight"])
    assert not (copies["batched"] / layout.BATCHED_CHECKPOINTS).exists()
