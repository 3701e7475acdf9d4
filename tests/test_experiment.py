"""The dependency-injected experiment loop, the layout helpers and the results files."""

import pytest
import torch

from lottery_ticket import layout
from lottery_ticket.errors import LotteryError
from lottery_ticket.experiment import experiment
from lottery_ticket.masking import apply_presets
from lottery_ticket.models import build_model
from lottery_ticket.pruning import prune_layerwise
from lottery_ticket.store import load_tensors, read_json, save_tensors, write_json


def test_experiment_trains_prunes_resets_and_retrains():
    calls = []

    def make_dataset():
        calls.append("dataset")
        return "data"

    def make_model(presets):
        model = build_model("fc_10", seed=0, input_shape=(4,))
        if presets is not None:
            apply_presets(model, presets)
        return model

    initial0 = make_model(None).state_dict()

    def train_model(level, dataset, model, masks):
        assert dataset == "data"
        state = {k: v.clone() for k, v in model.state_dict().items()}
        if level > 0:  # reset to the level-0 weights, pruned ones zeroed by the trainer later
            for k in state:
                assert torch.equal(state[k], initial0[k])
        calls.append((level, {k: int(m.sum()) for k, m in masks.items()}))
        final = {k: v + level + 1 for k, v in state.items()}
        return state, final

    def prune_masks(masks, weights):
        return prune_layerwise(masks, weights, {k: 0.5 for k in masks})

    last = experiment(make_dataset, make_model, train_model, prune_masks, levels=2)
    assert calls[0] == "dataset"
    assert [c[0] for c in calls[1:]] == [0, 1, 2]
    assert [c[1]["hidden.0.weight"] for c in calls[1:]] == [40, 20, 10]
    assert int(last["output.weight"].sum()) == 25


def test_paths_layout():
    assert layout.run_dir("e", 2, 3) == layout.level_dir("e", 2, 3) / "main"
    assert str(layout.run_dir("e", 0, 1, "reuse_sign", 4)).endswith("trial_0/level_1/reuse_sign_4")
    assert layout.parse_run_name("reuse_sign_4") == ("reuse_sign", 4)
    assert layout.parse_run_name("reuse_2") == ("reuse", 2)
    assert layout.parse_run_name("main") == ("main", 0)
    assert layout.parse_run_name("junk") is None


def test_tensor_and_json_files_round_trip_and_damage_is_reported(tmp_path):
    tensors = {"a": torch.arange(6.0).view(2, 3), "b": torch.ones(2, dtype=torch.int64)}
    save_tensors(tmp_path / "t.safetensors", tensors)
    back = load_tensors(tmp_path / "t.safetensors")
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "t.safetensors").read_bytes()[:-5])
    with pytest.raises(LotteryError, match="corrupted or truncated"):
        load_tensors(tmp_path / "cut.safetensors")
    with pytest.raises(LotteryError, match="missing file"):
        load_tensors(tmp_path / "none.safetensors")
    write_json(tmp_path / "x.json", {"k": [1, 2]})
    assert read_json(tmp_path / "x.json") == {"k": [1, 2]}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(LotteryError, match="corrupted JSON"):
        read_json(tmp_path / "bad.json")
    assert not list(tmp_path.glob("*.tmp"))
