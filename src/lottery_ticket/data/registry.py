"""Datasets by name: `--dataset NAME` picks one; a new dataset is one file in `data/sets/`.

A dataset is a function `read(root, *, download, mirrors, quiet)` returning the raw data as
`(train_images, train_labels, test_images, test_labels)`: uint8 images [N, C, H, W] and integer
labels. It is registered with `@register_dataset(name, train_size=..., input_shape=(C, H, W), num_classes=...)`;
`load_dataset` then splits and normalizes it the same way for every dataset (`make_splits`).
See docs/extending.md for a worked example.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lottery_ticket.registries import Registry

DATASETS = Registry("dataset", "lottery_ticket.data.sets")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    read: Callable[..., tuple]  # read(root: Path, *, download, mirrors, quiet) -> raw tensors
    train_size: int  # training images before the validation split (checked before loading)
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W): models are built for it before anything is loaded
    mirrors: tuple[str, ...] = ()  # download mirrors, tried in order (`mirrors=` overrides them)


def register_dataset(name: str, *, train_size: int, input_shape: tuple[int, int, int], num_classes: int = 10,
                     mirrors: tuple[str, ...] = ()):
    """Decorator registering `read` as dataset `name` (see the module docstring)."""

    def add(read: Callable[..., tuple]) -> Callable[..., tuple]:
        DATASETS.register(name)(DatasetEntry(name, read, train_size, num_classes, tuple(input_shape), tuple(mirrors)))
        return read

    return add
