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
from lottery_ticket.registries import Registry

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


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def check_never_prune(hp: Hparams, model: torch.nn.Module) -> None:
    """--never-prune must name prunable tensors of `model` (checked before anything is trained)."""
    prunable = prunable_names(model)
    for name in never_prune(hp.pruning):
        if name not in prunable:
            raise LotteryError(f"--never-prune names unknown tensor {name!r}; prunable: {sorted(prunable)}")


def pruner(hp: Hparams, model: torch.nn.Module, splits=None) -> Callable[[Masks, dict], Masks]:
    """prune_masks(masks, final_weights) for `hp` (the signature `experiment.experiment` takes):
    the registered strategy `hp.pruning.strategy`, given `model` as the architecture."""
    strategy = STRATEGIES.get(hp.pruning.strategy)
    check_never_prune(hp, model)

    def prune_masks(masks: Masks, weights: dict[str, torch.Tensor]) -> Masks:
        return strategy(PruningContext(masks=masks, weights=weights, hp=hp, architecture=model, splits=splits))

    return prune_masks
