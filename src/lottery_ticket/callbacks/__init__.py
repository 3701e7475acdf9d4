"""Evaluation callbacks by name: `--callback NAME` adds a measurement; a new one is one file here.

A callback is a function `callback(model, iteration, splits) -> rows` registered with
`@register_callback("name")`. The training loop calls it at every evaluation (iteration 0, every
`--eval-every` iterations and the last), after the validation and test metrics, with the network
in eval mode under `torch.inference_mode()` and the dataset (`data.Splits`, tensors on the run's
device). It returns a list of rows (dicts of column -> number or string, the same columns every
time) or None; the loop prepends the iteration and writes all rows to `<name>.csv` in the run
directory whenever it writes metrics.csv (checkpoints included, so a resumed run's file equals an
uninterrupted run's). Nothing runs between evaluations: without callbacks the loop does no extra
work. See `activations.py` for a real one and docs/extending.md for a worked example.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from lottery_ticket.data.datasets import Splits
from lottery_ticket.errors import LotteryError
from lottery_ticket.registries import Registry
from lottery_ticket.store import write_text_atomic

CALLBACKS = Registry("evaluation callback", __name__)
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED = {"metrics"}  # a run's own metrics.csv


def register_callback(name: str):
    """Decorator registering `callback(model, iteration, splits) -> rows` as `name` (its file: `name`.csv)."""
    if not _NAME.fullmatch(name) or name in _RESERVED:
        raise ValueError(f"callback names are lowercase identifiers other than {sorted(_RESERVED)}; got {name!r}")
    return CALLBACKS.register(name)


def callback_names() -> list[str]:
    return CALLBACKS.names()


def callback_file(name: str) -> str:
    """The file in the run directory that holds callback `name`'s rows."""
    return f"{name}.csv"


def resolve(names: Sequence[str]) -> dict[str, Callable]:
    """The registered callbacks `names` (in that order, duplicates dropped); unknown names: LotteryError."""
    return {name: CALLBACKS.get(name) for name in dict.fromkeys(names)}


class Recorder:
    """Calls the callbacks at an evaluation and keeps their rows (used by the training loops)."""

    def __init__(self, callbacks: dict[str, Callable], splits, device: torch.device | str = "cpu"):
        self.callbacks = callbacks
        self.splits = _on_device(splits, torch.device(device))
        self.rows: dict[str, list[dict]] = {name: [] for name in callbacks}

    def __call__(self, model: torch.nn.Module, iteration: int) -> None:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for name, callback in self.callbacks.items():
                    for row in callback(model, iteration, self.splits) or ():
                        self.rows[name].append({"iteration": iteration, **row})
        finally:
            model.train(was_training)

    def state(self) -> dict:
        """JSON-able rows so far (kept in checkpoints)."""
        return {name: list(rows) for name, rows in self.rows.items()}

    def load(self, state: dict) -> None:
        for name in self.rows:
            self.rows[name] = [dict(row) for row in state.get(name, [])]

    def write(self, out: str | Path) -> None:
        write_rows(out, self.rows)


def _on_device(splits, device: torch.device):
    """`splits` itself if its tensors are on `device` already (no copy), else a copy there."""
    if all(getattr(splits, name).device == device for name in Splits.TENSORS):
        return splits
    return splits.to(device)


def write_rows(out: str | Path, rows: dict[str, list[dict]]) -> None:
    """Each callback's rows as `<name>.csv` in the run directory `out`."""
    for name, name_rows in rows.items():
        write_text_atomic(Path(out) / callback_file(name), rows_csv(name, name_rows))


def rows_csv(name: str, rows: list[dict]) -> str:
    """CSV text: a header of the first row's columns, floats written exactly (repr)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = list(rows[0]) if rows else ["iteration"]
    writer.writerow(columns)
    for row in rows:
        if list(row) != columns:
            raise LotteryError(f"callback {name!r} returned rows with columns {list(row)}, earlier {columns}")
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row.values()])
    return buffer.getvalue()
