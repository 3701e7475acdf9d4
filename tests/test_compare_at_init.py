"""`lth train --prune-at-init` and `lth compare-at-init` end to end on a tiny network (fc_16)."""

import json

import pandas as pd
import pytest
from conftest import lth

from lottery_ticket import layout
from lottery_ticket.compare_at_init import imp_densities, nearest_level
from lottery_ticket.hparams import preset_hparams
from lottery_ticket.layout.files import read_run_tensors
from lottery_ticket.masking import density
from lottery_ticket.models import build_model

TINY = ["--model", "fc_16", "--iterations", 10, "--eval-every", 5, "--validation-size", 1000, "--quiet",
        "--threads", 1]


def test_train_prune_at_init_writes_its_masks_and_records_them(tmp_path, mnist_root, capsys):
    out = tmp_path / "run"
    assert lth("train", "--prune-at-init", "random", "--density", 0.1, "--output-dir", out, "--data-root",
               mnist_root, *TINY) == 0
    assert density(read_run_tensors(out, layout.MASKS)) == pytest.approx(0.1, abs=1e-4)
    record = json.loads((out / layout.RUN_FILE).read_text())["run"]["prune_at_init"]
    assert record["strategy"] == "random" and record["density"] == 0.1
    assert lth("train", "--prune-at-init", "random", "--density", 0.2, "--output-dir", out, "--data-root",
               mnist_root, *TINY) == 2
    assert "different settings" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--density", 0.1], "give both"),
    (["--prune-at-init", "snip"], "needs --density"),
    (["--prune-at-init", "snip", "--density", 0], "needs --density in (0, 1]"),
    (["--prune-at-init", "nope", "--density", 0.1], "unknown pruning strategy 'nope'"),
])
def test_train_prune_at_init_flag_errors_write_nothing(tmp_path, flags, message, capsys):
    out = tmp_path / "run"
    assert lth("train", *flags, "--output-dir", out, *TINY) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_imp_densities_follow_the_layerwise_rates():
    model = build_model("lenet_300_100", seed=0)
    densities = imp_densities(preset_hparams("paper"), model)
    # Frankle & Carbin's LeNet: 20% of the hidden layers and 10% of the output layer per level
    assert densities[1] == pytest.approx((0.8 * 235200 + 0.8 * 30000 + 0.9 * 1000) / 266200)
    assert [nearest_level(densities, d) for d in (0.1, 0.05, 0.02)] == [10, 13, 18]


def test_compare_at_init_writes_one_table_and_resumes(tmp_path, mnist_root, capsys):
    out = tmp_path / "cmp"
    args = ["compare-at-init", "--output-dir", out, "--densities", "0.5,0.2", "--methods", "snip,random",
            "--checks", "shuffle,invert", "--synflow-iterations", 2, "--data-root", mnist_root, "--workers", 1, *TINY]
    assert lth(*args) == 0
    table = pd.read_csv(out / layout.COMPARE_CSV)
    assert list(table["method"].unique()) == ["imp", "snip", "snip_shuffle", "snip_invert", "random",
                                              "random_shuffle", "random_invert"]
    assert (table["trials"] == 1).all() and len(table) == 14
    assert table[table.method == "snip"]["density"].round(4).tolist() == [0.5, 0.2]
    imp = table[table.method == "imp"]
    assert imp["level"].tolist() == [3, 7] and imp["density"].tolist() != [0.5, 0.2]
    assert (out / layout.COMPARE_PLOT).stat().st_size > 0 and "snip_invert" in (out / layout.COMPARE_MD).read_text()
    run = layout.at_init_run_dir(out, "snip_invert", 0.2, 0)
    finished = (run / layout.COMPLETE).stat().st_mtime_ns
    assert lth(*args) == 0  # resumed: nothing trained again, the same table
    assert (run / layout.COMPLETE).stat().st_mtime_ns == finished
    pd.testing.assert_frame_equal(pd.read_csv(out / layout.COMPARE_CSV), table)
    snip = read_run_tensors(layout.at_init_run_dir(out, "snip", 0.2, 0), layout.MASKS)
    inverted = read_run_tensors(run, layout.MASKS)
    assert all((snip[n] * inverted[n]).sum() < snip[n].sum() for n in snip)
    other = ["compare-at-init", "--output-dir", tmp_path / "b", "--densities", "0.5", "--imp-experiment",
             out / layout.COMPARE_IMP, "--lr", 0.1, "--data-root", mnist_root, "--workers", 1, *TINY]
    assert lth(*other) == 2
    assert "training.lr" in capsys.readouterr().err
