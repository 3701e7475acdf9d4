"""Named registries: pruning strategies, datasets and evaluation callbacks, each added by one file.

A registry belongs to a package; the first lookup imports every module of that package, so a new
entry is one new file in the package that registers itself with `@registry.register("name")`.
Code outside the package (a notebook, a test, the examples in docs/extending.md) registers the
same way before the entry is used.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from lottery_ticket.errors import LotteryError


class Registry:
    """Entries by name, in registration order (the order `--help` lists them)."""

    def __init__(self, kind: str, package: str):
        self.kind = kind  # e.g. "pruning strategy", for error messages
        self.package = package  # imported on first lookup: its modules register the built-ins
        self._entries: dict[str, Any] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: `@registry.register("name")` above a function or class adds it as `name`."""

        def add(entry: Any) -> Any:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self):
        return iter(self.names())

    def get(self, name: str) -> Any:
        """The entry registered as `name`; a user-facing error naming the choices otherwise."""
        self._load()
        if name not in self._entries:
            raise LotteryError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}")
        return self._entries[name]


class ChoicesHelp(str):
    """An argparse help text ending in a registry's names, looked up only when the help is printed:
    registries import torch, and `lth --help` must stay fast. (argparse formats every help text as
    `text % params`; this class does its lookup there.) `names` returns the names."""

    def __new__(cls, text: str, names: Callable[[], list[str]]):
        self = super().__new__(cls, text + "; choices: %(registered)s")
        self.names = names
        return self

    def __mod__(self, params):
        return str(self).replace("%(registered)s", ", ".join(self.names())) % params
