import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery_ticket.errors import LotteryError
from lottery_ticket.masking import intersection, union
from lottery_ticket.pruning import (
    layer_fractions,
    prune_count,
    prune_global,
    prune_layerwise,
    random_masks_like,
)


def test_prune_count_rounds_half_up():
    assert prune_count(0.2, 235200) == 47040
    assert prune_count(0.2, 150528) == 30106  # 30105.6 -> 30106
    assert prune_count(0.5, 5) == 3  # 2.5 rounds up
    assert prune_count(0.1, 4) == 0  # 0.4 rounds down
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(LotteryError):
            prune_count(bad, 10)


def test_layerwise_prunes_smallest_magnitudes_and_breaks_ties_by_position():
    w = {"a": torch.tensor([0.5, -0.1, 0.1, 2.0, -3.0])}
    m = {"a": torch.ones(5)}
    out = prune_layerwise(m, w, {"a": 0.4})  # 2 of 5: |-0.1| and |0.1| tie, both go
    assert out["a"].tolist() == [1, 0, 0, 1, 1]
    out = prune_layerwise(m, w, {"a": 0.2})  # 1 of 5: the tie goes to the earlier position
    assert out["a"].tolist() == [1, 0, 1, 1, 1]


def test_layerwise_counts_match_the_paper_schedule_for_lenet():
    g = torch.Generator().manual_seed(0)
    shapes = {"hidden.0.weight": (300, 784), "hidden.1.weight": (100, 300), "output.weight": (10, 100)}
    kinds = {"hidden.0.weight": "fc", "hidden.1.weight": "fc", "output.weight": "output"}
    fractions = layer_fractions(kinds, fc=0.2, conv=0.1, output=0.1)
    masks = {k: torch.ones(s) for k, s in shapes.items()}
    expected = {"hidden.0.weight": [188160, 150528, 120422], "hidden.1.weight": [24000, 19200, 15360],
                "output.weight": [900, 810, 729]}
    for level in range(3):
        weights = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
        masks = prune_layerwise(masks, weights, fractions)
        for k in shapes:
            assert int(masks[k].sum()) == expected[k][level]


def test_global_prunes_across_tensors_and_respects_never_prune():
    w = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.5, 4.0, 5.0]), "fc": torch.tensor([0.0, 0.1])}
    m = {k: torch.ones_like(v) for k, v in w.items()}
    out = prune_global(m, w, 0.5, never_prune=["fc"])  # 3 of 6 remaining: 0.5, 1.0, 2.0
    assert out["a"].tolist() == [0, 0, 1]
    assert out["b"].tolist() == [0, 1, 1]
    assert out["fc"].tolist() == [1, 1]
    with pytest.raises(LotteryError, match="unknown"):
        prune_global(m, w, 0.5, never_prune=["nope"])


def test_random_masks_keep_per_tensor_counts_and_are_seeded():
    g = torch.Generator().manual_seed(1)
    masks = {"a": (torch.rand(20, 30, generator=g) < 0.3).float(), "b": (torch.rand(50, generator=g) < 0.7).float()}
    r1 = random_masks_like(masks, seed=3)
    r2 = random_masks_like(dict(reversed(list(masks.items()))), seed=3)
    for k in masks:
        assert r1[k].sum() == masks[k].sum()
        assert torch.equal(r1[k], r2[k])
    assert not torch.equal(random_masks_like(masks, seed=4)["a"], r1["a"])


# --------------------------------------------------------------------------- properties

tensor_sizes = st.lists(st.integers(1, 60), min_size=1, max_size=4)


@st.composite
def masked_weights(draw):
    sizes = draw(tensor_sizes)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    weights, masks = {}, {}
    for i, n in enumerate(sizes):
        # few distinct values, so ties are common
        weights[f"t{i}"] = torch.randint(-3, 4, (n,), generator=g).float()
        masks[f"t{i}"] = (torch.rand(n, generator=g) < draw(st.floats(0.0, 1.0))).float()
    return weights, masks


fractions = st.floats(0.0, 0.99)


@settings(max_examples=60, deadline=None)
@given(masked_weights(), fractions)
def test_layerwise_exact_counts_and_masks_only_shrink(wm, fraction):
    weights, masks = wm
    out = prune_layerwise(masks, weights, {k: fraction for k in masks})
    for k in masks:
        remaining = int(masks[k].sum())
        assert int(out[k].sum()) == remaining - math.floor(fraction * remaining + 0.5)
        assert torch.all(out[k] <= masks[k])  # never revived
        kept, pruned = weights[k][out[k] == 1].abs(), weights[k][(masks[k] == 1) & (out[k] == 0)].abs()
        if len(kept) and len(pruned):
            assert pruned.max() <= kept.min()


@settings(max_examples=60, deadline=None)
@given(masked_weights(), fractions)
def test_global_exact_count_and_order_invariance(wm, fraction):
    weights, masks = wm
    out = prune_global(masks, weights, fraction)
    remaining = sum(int(m.sum()) for m in masks.values())
    assert sum(int(m.sum()) for m in out.values()) == remaining - math.floor(fraction * remaining + 0.5)
    for k in masks:
        assert torch.all(out[k] <= masks[k])
    reversed_out = prune_global(dict(reversed(list(masks.items()))), dict(reversed(list(weights.items()))), fraction)
    for k in masks:
        assert torch.equal(out[k], reversed_out[k])


@settings(max_examples=60, deadline=None)
@given(masked_weights(), fractions)
def test_layerwise_is_invariant_to_layer_order(wm, fraction):
    weights, masks = wm
    a = prune_layerwise(masks, weights, {k: fraction for k in masks})
    b = prune_layerwise(dict(reversed(list(masks.items()))), weights, {k: fraction for k in masks})
    for k in masks:
        assert torch.equal(a[k], b[k])


@st.composite
def three_masks(draw):
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return [{"w": (torch.rand(n, generator=g) < 0.5).float()} for _ in range(3)]


@settings(max_examples=80, deadline=None)
@given(three_masks())
def test_union_intersection_laws(ms):
    a, b, c = ms

    def eq(x, y):
        return torch.equal(x["w"], y["w"])

    assert eq(union(a, b), union(b, a)) and eq(intersection(a, b), intersection(b, a))
    assert eq(union(union(a, b), c), union(a, union(b, c)))
    assert eq(intersection(intersection(a, b), c), intersection(a, intersection(b, c)))
    assert eq(union(a, a), a) and eq(intersection(a, a), a)
    assert eq(union(a, intersection(a, b)), a) and eq(intersection(a, union(a, b)), a)  # absorption
    assert eq(intersection(a, union(b, c)), union(intersection(a, b), intersection(a, c)))  # distributive
    assert torch.all(intersection(a, b)["w"] <= union(a, b)["w"])
