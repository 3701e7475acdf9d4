"""The sanity checks of Frankle et al. (ICLR 2021) as branches: layerwise shuffle and inversion."""

import pytest
import torch
from conftest import lth

from lottery_ticket import layout
from lottery_ticket.branches.shuffle import shuffle_layerwise
from lottery_ticket.layout.files import read_run_tensors

RUN = ["--quiet", "--threads", "1", "--workers", "1"]


def test_shuffle_keeps_each_layers_count_and_changes_the_mask():
    g = torch.Generator().manual_seed(0)
    masks = {"a": (torch.rand(6, 5, generator=g) < 0.3).float(), "b": (torch.rand(4, generator=g) < 0.5).float(),
             "full": torch.ones(3, 3), "tiny": torch.tensor([1.0, 0.0])}
    for seed in range(20):
        shuffled = shuffle_layerwise(masks, seed)
        for name, mask in masks.items():
            assert shuffled[name].shape == mask.shape and shuffled[name].sum() == mask.sum()
        assert not torch.equal(shuffled["a"], masks["a"]) and not torch.equal(shuffled["b"], masks["b"])
        assert shuffled["tiny"].tolist() == [0.0, 1.0]  # the only other arrangement
        assert torch.equal(shuffled["full"], masks["full"])  # no other arrangement exists
    assert all(torch.equal(shuffle_layerwise(masks, 3)[k], shuffle_layerwise(masks, 3)[k]) for k in masks)


@pytest.fixture(scope="module")
def snip_lottery(tmp_path_factory, mnist_root):
    """Levels 0 and 1 of a lottery pruned by SNIP (20% of the remaining weights per level)."""
    exp = tmp_path_factory.mktemp("sanity") / "lot"
    assert lth("lottery", "--strategy", "snip", "--iterations", 20, "--eval-every", 10, "--levels", 1,
               "--validation-size", 1000, "--output-dir", exp, "--data-root", mnist_root, *RUN) == 0
    return exp, mnist_root


def test_invert_prunes_what_the_ticket_kept(snip_lottery, capsys):
    exp, root = snip_lottery
    assert lth("branch", "invert", "--experiment", exp, "--levels", 1, "--data-root", root, *RUN) == 0
    ticket = read_run_tensors(layout.run_dir(exp, 0, 1), layout.MASKS)
    inverted = read_run_tensors(layout.run_dir(exp, 0, 1, "invert", 0), layout.MASKS)
    for name in ticket:
        assert inverted[name].sum() > 0
    assert sum(m.sum() for m in inverted.values()) == sum(m.sum() for m in ticket.values())
    # the ticket pruned the lowest 20% of the scores, the inversion the highest 20%: disjoint
    assert sum(((1 - ticket[n]) * (1 - inverted[n])).sum() for n in ticket) == 0
    start = read_run_tensors(layout.run_dir(exp, 0, 1, "invert", 0), layout.INITIAL)
    original = read_run_tensors(layout.run_dir(exp, 0, 0), layout.INITIAL)
    assert torch.equal(start["hidden.0.bias"], original["hidden.0.bias"])
    assert lth("branch", "invert", "--experiment", exp, "--levels", 0, "--data-root", root, *RUN) == 2
    assert "level 0 is not pruned" in capsys.readouterr().err


def test_shuffle_branch_runs_on_a_snip_ticket(snip_lottery):
    exp, root = snip_lottery
    assert lth("branch", "shuffle", "--experiment", exp, "--levels", 1, "--data-root", root, *RUN) == 0
    ticket = read_run_tensors(layout.run_dir(exp, 0, 1), layout.MASKS)
    shuffled = read_run_tensors(layout.run_dir(exp, 0, 1, "shuffle", 0), layout.MASKS)
    for name in ticket:
        assert shuffled[name].sum() == ticket[name].sum() and not torch.equal(shuffled[name], ticket[name])
