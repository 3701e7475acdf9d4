"""Branches: experiments that start from a finished lottery level, by name; a new one is one file here.

A branch takes the ticket of a finished level -- its masks and the weights its retraining starts
from (the level-0 initial weights, or under late rewinding the level-0 weights at the rewind
iteration) -- and trains or measures something from there. `lth branch NAME --experiment DIR
--levels L --runs R` runs branch NAME once per (trial, level in L, run index r < R); each run
writes its own run directory, `layout.run_dir(DIR, t, k, kind, r)` (`kind`: the branch's run kind, normally its name),
the layout of the ticket's own `main` run beside it, so `lth report` shows it as one more column.

A branch is a subclass of `Branch` registered with `@register_branch("name")`. The controls of
Frankle & Carbin (reinit, reuse, reuse_sign, random_pruning) are branches (`controls.py`);
a new control is a `ControlBranch` subclass with one method, `init`. See docs/extending.md.

Runs in worker processes (`--workers` > 1) are spawned: a job names its branch (`BranchJob`),
and the worker finds it in this package's registry, so only branches in files of this package
run there; a branch registered elsewhere (a notebook, a test) runs with `--workers 1`.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lottery_ticket import layout
from lottery_ticket.errors import LotteryError
from lottery_ticket.registries import Registry

BRANCHES = Registry("branch", __name__)
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_RESERVED = {layout.TICKET, "train"}  # the ticket's own run; the run kind `lth train` records


@dataclass(frozen=True)
class BranchJob:
    """One run of a branch, picklable: it names the branch (a spawned worker looks it up)."""

    experiment: str
    branch: str  # the registered name
    trial: int
    level: int
    run_index: int
    options: tuple[tuple[str, Any], ...] = ()  # the branch's own flags: (dest, value) pairs

    def option(self, name: str) -> Any:
        return dict(self.options)[name]


@dataclass
class ReportSection:
    """A section of `lth report`: a title, a note saying how its numbers are computed, a table and
    figures (`analysis.plots.Plot`). What a branch adds, and the analytics' sections too."""

    title: str
    note: str
    header: list[str]
    rows: list[list[str]]
    plots: list = field(default_factory=list)


class Branch:
    """An experiment starting from the ticket of a finished (trial, level). Subclasses set
    `description` and implement `run`; `register_branch` sets `name` and `kind`."""

    name: ClassVar[str] = ""
    # The run kind: run directories are `<kind>_<r>`, run.json's "control" and the run's seeds
    # derive from it. Defaults to the name; a renamed branch keeps its old kind so the runs
    # already on disk stay its runs (see controls.RandomPruning).
    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line: `lth branch --help` lists it
    batched: ClassVar[bool] = False  # whether `run_batched` exists (`--batched`)
    control: ClassVar[bool] = False  # offered by `lth reinit --control` (a control of the ticket)
    one_run_per_job: ClassVar[bool] = True  # False: a job trains several runs (the progress view shows no total)

    @classmethod
    def add_arguments(cls, parser: argparse._ArgumentGroup) -> None:
        """Add this branch's own flags to `lth branch NAME` (none by default). Their values reach
        `run` as `job.option(dest)`. Give every flag a default. A run must record the values that
        change its result (in its run.json), so a rerun with other values is refused, not mixed."""

    def check(self, hp, jobs: list[BranchJob]) -> None:
        """Refuse (LotteryError) what this branch cannot do with the experiment's hyperparameters
        `hp`, before any run starts (nothing by default)."""

    def run(self, job: BranchJob, ctx) -> None:
        """Do run `job` (resuming it if it was interrupted; nothing if it is complete). `ctx` is the
        run options (`runner.RunOptions`: device, quiet, checkpoint interval, ...)."""
        raise NotImplementedError

    def run_batched(self, jobs: list[BranchJob], ctx) -> None:
        """All of `jobs` as one batched computation (only if `batched`)."""
        raise LotteryError(f"--batched is not supported by branch {self.name}")

    def report(self, experiment: Path, plots_dir: Path) -> ReportSection | None:
        """This branch's section of `lth report` for `experiment` (figures saved in `plots_dir`),
        or None (the default: its runs appear in the results table like any run)."""
        return None


def register_branch(name: str):
    """Class decorator registering a `Branch` subclass as `name`."""
    if not _NAME.fullmatch(name) or name in _RESERVED:
        raise ValueError(f"branch names are lowercase identifiers other than {sorted(_RESERVED)}; got {name!r}")

    def add(cls: type[Branch]) -> type[Branch]:
        cls.name = name
        cls.kind = cls.__dict__.get("kind") or name
        if not _NAME.fullmatch(cls.kind) or cls.kind in _RESERVED:
            raise ValueError(f"branch {name!r}: run kind {cls.kind!r} is not a lowercase identifier")
        if not cls.description or "\n" in cls.description:
            raise ValueError(f"branch {name!r} needs a one-line description")
        return BRANCHES.register(name)(cls)

    return add


def branch_names() -> list[str]:
    return BRANCHES.names()


def get_branch(name: str) -> Branch:
    """The registered branch `name`; unknown names: LotteryError naming the registered ones."""
    return BRANCHES.get(name)()


def branch_for_kind(kind: str) -> Branch:
    """The branch whose runs are `<kind>_<r>` (e.g. `random` -> random_pruning)."""
    for name in BRANCHES.names():
        if BRANCHES.get(name).kind == kind:
            return get_branch(name)
    raise LotteryError(f"unknown branch run kind {kind!r}; registered branches: {', '.join(BRANCHES.names())}")


def control_names() -> list[str]:
    """The branches `lth reinit --control` offers."""
    return [name for name in BRANCHES.names() if BRANCHES.get(name).control]


def report_sections(experiment: str | Path, plots_dir: str | Path) -> list[ReportSection]:
    """The report sections of every registered branch that has one for `experiment`."""
    sections = []
    for name in BRANCHES.names():
        section = get_branch(name).report(Path(experiment), Path(plots_dir))
        if section is not None:
            sections.append(section)
    return sections


def run_branch(job: BranchJob, ctx) -> None:
    """The job function of `runner.run_jobs`: the branch the job names runs it."""
    get_branch(job.branch).run(job, ctx)
