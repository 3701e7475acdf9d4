"""Pruning strategies by name: `--strategy NAME` picks one; a new strategy is one file here.

A strategy is a function `strategy(ctx: PruningContext) -> Masks`, registered with
`@register_strategy("name")`. It gets the trained network of the level just finished, that
level's masks, the hyperparameters and the training data (so data-dependent methods such as SNIP
fit), and returns the next level's masks (same names and shapes, 0/1 float32, on the CPU). The
built-in magnitude strategies (`layerwise`, `global`) are in `magnitude.py`; see
docs/extending.md for a worked example.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import torch

from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import Hparams, never_prune
from lottery_ticket.masking import Masks, apply_presets, prunable_names
from lottery_ticket.pruning import density_count, keep_highest, prune_count
from lottery_ticket.registries import Registry
from lottery_ticket.seeds import derive_seed

STRATEGIES = Registry("pruning strategy", __name__)
register_strategy = STRATEGIES.register


@dataclass
class PruningContext:
    """What a strategy sees when it prunes after a level."""

    masks: Masks  # the masks the level trained with
    weights: dict[str, torch.Tensor]  # the trained network's state dict (what magnitude pruning reads)
    hp: Hparams
    architecture: torch.nn.Module = field(repr=False)  # a network of the right shape (any weights)
    splits: object | None = field(default=None, repr=False)  # the dataset (`data.Splits`), if known
    # Score-based strategies (snip, grasp, synflow, random): the density (fraction of prunable
    # weights kept) of the new masks; None: a lottery level, which removes --global-fraction of the
    # remaining weights. `invert` keeps the lowest scores (the inversion sanity check). `seed`
    # picks the training examples scored and random scores.
    density: float | None = None
    invert: bool = False
    seed: int = 0

    @cached_property
    def model(self) -> torch.nn.Module:
        """The trained network (a copy of `architecture` holding `weights`), built on first use."""
        model = copy.deepcopy(self.architecture)
        apply_presets(model, self.weights)
        return model

    def train_batches(self, count: int, batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first `count` minibatches (`--batch-size` unless given) of the training split, in its
        stored order: deterministic data for data-dependent strategies."""
        if self.splits is None:
            raise LotteryError("this pruning strategy needs the training data, which was not given")
        size = batch_size or self.hp.dataset.batch_size
        x, y = self.splits.train_x, self.splits.train_y
        for start in range(0, min(count * size, len(y)), size):
            yield x[start : start + size], y[start : start + size]


    def target_count(self) -> int:
        """How many weights (of the tensors not in --never-prune) the new masks keep."""
        frozen = set(never_prune(self.hp.pruning))
        masks = [m for name, m in self.masks.items() if name not in frozen]
        remaining = int(sum(m.sum().item() for m in masks))
        if self.density is None:
            return remaining - prune_count(self.hp.pruning.global_fraction, remaining)
        keep = density_count(self.density, sum(m.numel() for m in masks))
        if keep > remaining:
            raise LotteryError(f"density {self.density} keeps {keep} weights but only {remaining} remain unpruned")
        return keep

    def keep_highest(self, scores: dict[str, torch.Tensor], keep: int | None = None,
                     masks: Masks | None = None) -> Masks:
        """The new masks: the `keep` (default `target_count()`) highest `scores` among the weights
        `masks` (default: `self.masks`) keeps, or the lowest with `invert` (`pruning.keep_highest`)."""
        p = self.hp.pruning
        return keep_highest(self.masks if masks is None else masks, scores,
                            self.target_count() if keep is None else keep, invert=self.invert,
                            never_prune=never_prune(p), allow_collapse=p.allow_layer_collapse)

    def score_examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training examples data-dependent scores are computed on (never validation or test):
        a permutation of the training split drawn from `seed`, then either its first
        --score-per-class examples of each class, grouped by class as GraSP's code's
        `GraSP_fetch_data` returns them (--score-data per_class), or its first --score-batch
        examples (--score-data batch, SNIP's one minibatch)."""
        if self.splits is None:
            raise LotteryError("this pruning strategy needs the training data, which was not given")
        p = self.hp.pruning
        x, y = self.splits.train_x, self.splits.train_y
        generator = torch.Generator().manual_seed(derive_seed("score_data", self.seed))
        order = torch.randperm(len(y), generator=generator)
        if p.score_data == "batch":
            if p.score_batch > len(y):
                raise LotteryError(f"--score-batch {p.score_batch} exceeds the {len(y)} training examples")
            chosen = order[: p.score_batch]
        else:
            labels = y[order]
            chosen = []
            for label in range(self.splits.num_classes):
                of_class = order[labels == label][: p.score_per_class]
                if len(of_class) < p.score_per_class:
                    raise LotteryError(f"--score-per-class {p.score_per_class}: class {label} has only "
                                       f"{len(of_class)} training examples")
                chosen.append(of_class)
            chosen = torch.cat(chosen)
        return x[chosen], y[chosen]


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def check_never_prune(hp: Hparams, model: torch.nn.Module) -> None:
    """--never-prune must name prunable tensors of `model` (checked before anything is trained)."""
    prunable = prunable_names(model)
    for name in never_prune(hp.pruning):
        if name not in prunable:
            raise LotteryError(f"--never-prune names unknown tensor {name!r}; prunable: {sorted(prunable)}")


def pruner(hp: Hparams, model: torch.nn.Module, splits=None, seed: int = 0) -> Callable[[Masks, dict], Masks]:
    """prune_masks(masks, final_weights) for `hp` (the signature `experiment.experiment` takes):
    the registered strategy `hp.pruning.strategy`, given `model` as the architecture (and `seed`
    for the strategies that draw examples or random scores)."""
    strategy = STRATEGIES.get(hp.pruning.strategy)
    check_never_prune(hp, model)

    def prune_masks(masks: Masks, weights: dict[str, torch.Tensor]) -> Masks:
        return strategy(PruningContext(masks=masks, weights=weights, hp=hp, architecture=model, splits=splits,
                                        seed=seed))

    return prune_masks


def prune_at_init(hp: Hparams, model: torch.nn.Module, splits, strategy: str, density: float, seed: int,
                  invert: bool = False) -> Masks:
    """One-shot masks of `density` for the untrained `model` by the registered `strategy` (e.g.
    snip, grasp, synflow, random), scoring its current (initial) weights: pruning at
    initialization. `seed` draws the scored training examples or random scores."""
    check_never_prune(hp, model)
    from lottery_ticket.masking import full_masks

    ctx = PruningContext(masks=full_masks(model), weights=model.state_dict(), hp=hp, architecture=model,
                         splits=splits, density=density, invert=invert, seed=seed)
    return STRATEGIES.get(strategy)(ctx)


# The paper's magnitude strategies first, so `--help` lists `layerwise, global` before the others
# (the registry imports the rest of the package, in name order, on first lookup).
from lottery_ticket.strategies import magnitude  # noqa: E402, F401
