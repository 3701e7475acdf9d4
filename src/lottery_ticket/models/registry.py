"""Models looked up by name.

A registered *family* owns a name pattern (e.g. `fc_300_100`) and builds the network from it.
Every model is built, then initialized in one place (`init.initialize`) from an explicit seed,
so the same (name, seed) always gives the same weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from lottery_ticket.errors import LotteryError
from lottery_ticket.models.init import initialize


@dataclass(frozen=True)
class ModelEntry:
    """A model family. `build` must return a module whose output layer is the LAST `nn.Linear`
    in module registration order (`model.modules()`): the pruning code treats that layer as the
    output layer. Builders raise `LotteryError` for options they do not support.
    """

    pattern: str  # a regular expression matched against the whole name
    build: Callable[..., nn.Module]  # build(name, num_classes=..., input_shape=..., **options)
    examples: tuple[str, ...]  # names listed by `lth models`
    default_preset: str  # the preset holding the paper's hyperparameters for this model
    dataset: str  # the dataset the paper trains it on
    description: str


_REGISTRY: list[ModelEntry] = []


def register(entry: ModelEntry) -> None:
    _REGISTRY.append(entry)


def entry_for(name: str) -> ModelEntry:
    for entry in _REGISTRY:
        if re.fullmatch(entry.pattern, name):
            return entry
    known = ", ".join(n for e in _REGISTRY for n in e.examples)
    raise LotteryError(f"unknown model {name!r}; known models: {known} (and any fc_N_M_...)")


def build_model(
    name: str,
    seed: int,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (1, 28, 28),
    init: str = "glorot_normal",
    **options,
) -> nn.Module:
    """Construct model `name` and initialize it deterministically from `seed`."""
    model = entry_for(name).build(name, num_classes=num_classes, input_shape=tuple(input_shape), **options)
    initialize(model, init, seed)
    return model


def registered() -> list[ModelEntry]:
    return list(_REGISTRY)
