"""Mask and weight analytics of a lottery experiment, in one place: what fraction of each layer
remains, how much the masks of different trials and of consecutive levels overlap, and which
initial weights survive.

* Remaining fraction: 100 * ones / size per prunable tensor (the Pm of docs/architecture.md).
* Overlap: the Jaccard index |A and B| / |A or B| of two masks' kept positions (all prunable
  tensors together; two empty masks have index 1). Between the tickets of different trials at one
  level (every pair of trials), and between consecutive levels of one trial (k - 1 and k). Under
  iterative magnitude pruning a level's mask is a subset of the previous one's, so the
  consecutive-level index is the ratio of their kept counts (0.8 per level at 20% pruning): a
  check more than a finding; other strategies need not nest. Trials start from different
  initializations, so the between-trial index compares positions only; the table gives beside it
  the index two independent random masks of the same densities p and q would have in expectation,
  pq / (p + q - pq) (for large tensors), as the baseline an overlap should beat to mean anything.
* Surviving initial weights: the initial values (level 0's `initial.safetensors` of each trial:
  the initialization, also under late rewinding) of the weights a level's ticket keeps, pooled over
  trials, as normalized histograms per layer (area 1): Frankle & Carbin (ICLR 2019), Appendix F.1,
  Figure 13 of arXiv v5 ("the distribution of initializations in winning tickets", Lenet with
  Adam; F.2, Figure 14, for SGD): the kept initial weights become bimodal, their small magnitudes
  pruned away, as Pm falls.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lottery_ticket import layout
from lottery_ticket.analysis.stats import spread

Masks = dict[str, torch.Tensor]


def remaining_percent(masks: Masks) -> dict[str, float]:
    """``{"pm": overall, "pm_<tensor>": per tensor}``: 100 * ones / size (all tensors together for
    ``pm``); a tensor of size 0 gives NaN."""
    result: dict[str, float] = {}
    ones_total = size_total = 0
    for name in sorted(masks):
        ones, size = int((masks[name] != 0).sum().item()), int(masks[name].numel())
        ones_total += ones
        size_total += size
        result[f"pm_{name}"] = 100.0 * ones / size if size else math.nan
    result["pm"] = 100.0 * ones_total / size_total if size_total else math.nan
    return result


def jaccard(a: Masks, b: Masks) -> float:
    """|kept in both| / |kept in either| over the tensors both name (1.0 when neither keeps any)."""
    both = either = 0
    for name in sorted(set(a) & set(b)):
        x, y = a[name] != 0, b[name] != 0
        both += int((x & y).sum().item())
        either += int((x | y).sum().item())
    return both / either if either else 1.0


def random_jaccard(p: float, q: float) -> float:
    """The expected Jaccard index of two independent random masks of densities p and q (fractions),
    for large tensors: pq / (p + q - pq)."""
    union = p + q - p * q
    return p * q / union if union else 1.0


def density(masks: Masks) -> float:
    kept = sum(int((m != 0).sum().item()) for m in masks.values())
    size = sum(m.numel() for m in masks.values())
    return kept / size if size else 1.0


def ticket_masks(experiment_dir: str | Path, results: pd.DataFrame) -> dict[tuple[int, int], Masks]:
    """``{(trial, level): masks}`` of the ticket runs in ``results`` (a ``load_results`` table,
    filtered as the report uses it) that have masks, each checked against its recorded digest."""
    from lottery_ticket.layout.files import read_run_tensors

    chosen = results[(results["control"] == layout.TICKET) & results["has_masks"]]
    return {(int(r.trial), int(r.level)): read_run_tensors(Path(r.path), layout.MASKS)
            for r in chosen.itertuples(index=False)}


def layer_table(masks: dict[tuple[int, int], Masks]) -> pd.DataFrame:
    """Remaining percent per level and tensor over trials: columns ``level, tensor, trials, mean,
    min, max`` (``tensor`` "all" is Pm, every prunable tensor together)."""
    rows = []
    for level in sorted({level for _, level in masks}):
        per_trial = [remaining_percent(m) for (_, k), m in sorted(masks.items()) if k == level]
        for key in sorted(per_trial[0], key=lambda key: (key != "pm", key)):
            s = spread(p[key] for p in per_trial)
            rows.append({"level": level, "tensor": "all" if key == "pm" else key.removeprefix("pm_"),
                         "trials": s.n, "mean": s.mean, "min": s.min, "max": s.max})
    return pd.DataFrame(rows, columns=["level", "tensor", "trials", "mean", "min", "max"])


def overlap_table(masks: dict[tuple[int, int], Masks]) -> pd.DataFrame:
    """Per level: the Jaccard index between the tickets of every pair of trials (``pairs``, its
    spread), the random-mask baseline for the mean densities, and between each trial's ticket and
    its previous level's (``trials``, its spread; NaN at level 0)."""
    rows = []
    levels = sorted({level for _, level in masks})
    for level in levels:
        trials = sorted(t for t, k in masks if k == level)
        between = spread(jaccard(masks[a, level], masks[b, level]) for a, b in itertools.combinations(trials, 2))
        p = float(np.mean([density(masks[t, level]) for t in trials]))
        consecutive = spread(jaccard(masks[t, level - 1], masks[t, level]) for t in trials if (t, level - 1) in masks)
        rows.append({
            "level": level, "pm": 100.0 * p,
            "pairs": between.n, "between_trials_mean": between.mean, "between_trials_min": between.min,
            "between_trials_max": between.max, "random_baseline": random_jaccard(p, p),
            "trials": consecutive.n, "consecutive_mean": consecutive.mean, "consecutive_min": consecutive.min,
            "consecutive_max": consecutive.max,
        })
    return pd.DataFrame(rows)


def surviving_initial_weights(
    experiment_dir: str | Path, masks: dict[tuple[int, int], Masks], levels: Iterable[int]
) -> dict[int, dict[str, np.ndarray]]:
    """``{level: {tensor: initial values of the weights that level's tickets keep}}``, pooled over
    the trials whose level-0 ticket run has an ``initial.safetensors`` (checked against its digest)."""
    from lottery_ticket.layout.files import read_run_tensors

    initial = {}
    for trial in sorted({t for t, _ in masks}):
        run = layout.run_dir(experiment_dir, trial, 0)
        if (run / layout.INITIAL).is_file():
            initial[trial] = read_run_tensors(run, layout.INITIAL)
    out: dict[int, dict[str, np.ndarray]] = {}
    for level in levels:
        pooled: dict[str, list[np.ndarray]] = {}
        for (trial, k), mask in sorted(masks.items()):
            if k != level or trial not in initial:
                continue
            for name in sorted(mask):
                kept = initial[trial][name][mask[name] != 0]
                pooled.setdefault(name, []).append(kept.double().numpy())
        if pooled:
            out[level] = {name: np.concatenate(parts) for name, parts in pooled.items()}
    return out
