"""The `lth` command: train, lottery, branch, reinit, sweep, report, models, presets.

User mistakes (LotteryError) print one line, `error: ...`, and exit with status 2.

Modules that import torch, pandas or matplotlib are imported inside the commands that use them,
so that `lth --help` and argument errors stay fast; everything else is imported here.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from lottery_ticket import __version__, layout
from lottery_ticket.backends import BACKENDS, RAY_INSTALL_HINT, make_backend
from lottery_ticket.branches import BranchJob, branch_names, control_names, get_branch, run_branch
from lottery_ticket.errors import LotteryError
from lottery_ticket.hparams import (
    INT_MAX,
    add_hparam_flags,
    check_rewind,
    hparams_from_args,
    never_prune,
    presets,
)
from lottery_ticket.procs import Stopped, stop_on_signals
from lottery_ticket.registries import ChoicesHelp

EXIT_USER_ERROR = 2
SWEEP_COMMANDS = ("train", "lottery", "reinit", "branch")  # the commands an argfile line may run
MAX_COUNT = 10_000  # trials, runs per level, levels: more is a typo (job lists are built up front)
MAX_PARALLEL = 1024  # threads, worker processes

# the allowed integers of every numeric run flag (hyperparameters check themselves: hparams.Range)
RUN_INT_FLAGS = {
    "seed": (0, INT_MAX), "trial": (0, INT_MAX), "level": (0, MAX_COUNT), "levels": (0, MAX_COUNT),
    "trials": (1, MAX_COUNT), "runs": (1, MAX_COUNT), "control_runs": (1, MAX_COUNT), "threads": (1, MAX_PARALLEL),
    "workers": (1, MAX_PARALLEL),
}


def check_run_flags(args: argparse.Namespace) -> None:
    """Every numeric flag that is not a hyperparameter, checked before anything runs or is written."""
    for name, (low, high) in RUN_INT_FLAGS.items():
        value = getattr(args, name, None)
        if isinstance(value, int) and not low <= value <= high:
            raise LotteryError(f"--{name.replace('_', '-')} must be an integer in [{low}, {high}], got {value}")
    seconds = getattr(args, "checkpoint_seconds", None)
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise LotteryError(f"--checkpoint-seconds must be finite and > 0, got {seconds}")
    check_backend_flags(args)


def check_backend_flags(args: argparse.Namespace) -> None:
    """--backend and the flags that only mean something with --backend ray."""
    backend = getattr(args, "backend", "local")
    for name in ("ray_address", "cpus_per_run", "gpus_per_run"):
        if getattr(args, name, None) is not None and backend != "ray":
            raise LotteryError(f"--{name.replace('_', '-')} needs --backend ray")
    cpus, gpus = getattr(args, "cpus_per_run", None), getattr(args, "gpus_per_run", None)
    if cpus is not None and not (math.isfinite(cpus) and 0 < cpus <= MAX_PARALLEL):
        raise LotteryError(f"--cpus-per-run must be a number in (0, {MAX_PARALLEL}], got {cpus}")
    if gpus is not None and not (math.isfinite(gpus) and 0 <= gpus <= MAX_PARALLEL):
        raise LotteryError(f"--gpus-per-run must be a number in [0, {MAX_PARALLEL}], got {gpus}")
    if backend == "ray" and getattr(args, "batched", False):
        raise LotteryError("--batched trains in one process; it cannot be combined with --backend ray")
    if backend == "ray" and (getattr(args, "workers", None) or 1) > 1:
        raise LotteryError("--workers is for --backend local; with --backend ray the cluster's resources "
                           "decide how many runs train at once (see --cpus-per-run, --gpus-per-run)")


def _add_run_flags(parser: argparse.ArgumentParser, parallel: bool = False) -> None:
    g = parser.add_argument_group("running")
    g.add_argument("--data-root", default=None,
                   help="dataset directory (default: $LTH_DATA, else ~/.cache/lottery_ticket/data); "
                        "missing files are downloaded and checksum-verified")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="fail instead of downloading missing dataset files")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress bars, per-run lines, progress view or download lines")
    g.add_argument("--checkpoint-seconds", type=float, default=10.0,
                   help="write a resumable checkpoint after this many seconds of training (default: 10)")
    g.add_argument("--no-fast", dest="fast", action="store_false",
                   help="use the general autograd training step even where the fast path applies")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per run for training (default: 1 for fully-connected models, "
                        "whose small steps are fastest on one thread; else cores / workers); "
                        "evaluation uses cores / workers")
    g.add_argument("--callback", action="append", default=[], metavar="NAME",
                   help=ChoicesHelp("an evaluation callback to run at every evaluation, writing NAME.csv in "
                                    "each run directory (repeat for several; e.g. activations: per-ReLU "
                                    "mean activation and fraction of zeros on the validation split)",
                                    _callback_names))
    if parallel:
        g.add_argument("--batched", action="store_true",
                       help="train the runs (trials of a level, or control runs) as one batched computation "
                            "in one process (fully-connected models by batched matrix products, conv nets, "
                            "VGG and ResNet by torch.func's vmap; no --dropout); the big win is on a GPU")
        g.add_argument("--workers", type=int, default=None,
                       help="parallel worker processes (default: one per core, at most one per job)")
        _add_backend_flags(g)


def _add_backend_flags(g) -> None:
    """Where the runs go: this machine's worker processes, or the tasks of a Ray cluster."""
    g.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local: worker processes on this machine (default); ray: one Ray task per run "
                        f"(a lottery level or control run, a branch run, a sweep line) on a Ray cluster (needs {RAY_INSTALL_HINT}); "
                        "results go to the experiment directory, which every node must mount at the same path")
    g.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --backend ray: the address of a running Ray cluster (e.g. head-node:6379, "
                        "as `ray start --head` prints); default: start a private Ray instance on this "
                        "machine for this command ($RAY_ADDRESS is never used implicitly)")
    g.add_argument("--cpus-per-run", type=float, default=None, metavar="N",
                   help="with --backend ray: CPUs Ray reserves for each run (default: 1); also its torch threads")
    g.add_argument("--gpus-per-run", type=float, default=None, metavar="N",
                   help="with --backend ray: GPUs Ray reserves for each run, fractional allowed: 0.25 packs "
                        "four runs on one GPU (default: 1 with --device cuda, else 0); the run trains on the "
                        "GPU Ray assigns it")


def _strategy_names() -> list[str]:
    from lottery_ticket.strategies import strategy_names

    return strategy_names()


def _callback_names() -> list[str]:
    from lottery_ticket.callbacks import callback_names

    return callback_names()


def _add_experiment_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="paper",
                        help="hyperparameter preset (see `lth presets`); `paper` picks the paper's "
                             "preset for --model (default: paper = LeNet-300-100 on MNIST)")
    parser.add_argument("--seed", type=int, default=0,
                        help="base seed; trial t's model, data-order and label seeds derive from (seed, t)")


class _RenamedFlag(argparse.Action):
    """A flag that was renamed: using it is a one-line error naming the new flag (no alias: the
    old name stays too close to another flag to mean something else silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        raise LotteryError(self.const)


def build_parser(branches: bool = False) -> argparse.ArgumentParser:
    """The `lth` parser; with `branches`, `lth branch` gets one subcommand per registered branch
    (this imports the branches, and with them torch: only for the commands that need them)."""
    parser = argparse.ArgumentParser(
        prog="lth",
        description="Lottery ticket experiments (Frankle & Carbin, ICLR 2019): find winning tickets "
                    "by iterative magnitude pruning and run the control experiments. SIGINT or SIGTERM "
                    "stops at the next training step with checkpoints written (exit 130 or 143); "
                    "run the same command again to resume.",
    )
    parser.add_argument("--version", action="version", version=f"lth (lottery_ticket) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one network (optionally masked and preset)",
                       description="Train one network and write its run files to --output-dir.")
    p.add_argument("--output-dir", required=True,
                   help="directory for this run's files: new, empty, or holding this run (resumed); "
                        "a directory holding other files is refused unless --force")
    p.add_argument("--force", action="store_true",
                   help="train into --output-dir even if it holds files that are not this run's "
                        "(they are left alone)")
    p.add_argument("--masks", nargs="+", default=None, metavar="PATH",
                   help="masks.safetensors file(s); several are combined by union")
    p.add_argument("--prune-at-init", default=None, metavar="STRATEGY",
                   help=ChoicesHelp("prune the initialized network once, before training, with this pruning "
                                    "strategy (e.g. snip, grasp, synflow, random) to --density, and write its "
                                    "masks.safetensors; recorded in run.json, so a rerun with other values is "
                                    "refused",
                                    _strategy_names))
    p.add_argument("--density", type=float, default=None,
                   help="with --prune-at-init: the fraction of prunable weights kept, in (0, 1], e.g. 0.05")
    p.add_argument("--init-weights", default=None, metavar="PATH",
                   help="a safetensors state dict giving initial values (e.g. a run's initial.safetensors); "
                        "tensors it does not name keep the seeded initialization")
    p.add_argument("--presets", action=_RenamedFlag, help=argparse.SUPPRESS, default=argparse.SUPPRESS,
                   const="--presets was renamed --init-weights (a file of initial weights); "
                         "--preset NAME picks a hyperparameter preset")
    p.add_argument("--trial", type=int, default=0, help="trial number: picks the model and data-order seeds")
    _add_experiment_flags(p)
    _add_run_flags(p)
    add_hparam_flags(p)

    p = sub.add_parser("lottery", help="iterative magnitude pruning with resetting: find winning tickets",
                       description="Train, prune, reset the remaining weights to their initial values, "
                                   "retrain, for --levels levels, in --trials independent trials.")
    p.add_argument("--output-dir", required=True, help="experiment directory (resumed if it exists)")
    p.add_argument("--levels", type=int, default=20, help="pruning levels after level 0 (default: 20)")
    p.add_argument("--trials", type=int, default=1, help="independent trials, run in parallel (default: 1)")
    p.add_argument("--report", action="store_true", help="write the HTML report when done")
    g = p.add_argument_group("controls (run with the lottery, each as soon as its level's masks exist)")
    g.add_argument("--controls", default="", metavar="NAMES",
                   help=ChoicesHelp("comma-separated controls to run with the lottery, e.g. reinit,random: the "
                                    "runs of `lth reinit --control NAME` (the same files and results), each "
                                    "started as soon as its level is done, between the remaining levels and "
                                    "trials, so no worker waits", control_names))
    g.add_argument("--control-levels", default=None, metavar="LEVELS",
                   help="levels for the controls, e.g. 0,7,15 or 0-5 (default: every level)")
    g.add_argument("--control-runs", type=int, default=1, help="runs of each control per level and trial (default: 1)")
    _add_experiment_flags(p)
    _add_run_flags(p, parallel=True)
    add_hparam_flags(p)

    p = sub.add_parser("reinit", help="control runs with the masks of an existing lottery experiment",
                       description="Train control networks with each ticket's masks: reinit (fresh random "
                                   "init), reuse (sampled from the original initial weights), reuse_sign (the "
                                   "same, keeping each weight's original sign), random_pruning (random masks "
                                   "of the same per-layer sizes, original init). A shortcut: `lth reinit "
                                   "--control NAME` is `lth branch NAME` (the same runs and files).")
    p.add_argument("--control", default="reinit", metavar="NAME",
                   help=ChoicesHelp("which control (default: reinit); `random`, the older name of "
                                    "random_pruning, still runs it (the same runs on disk)", control_names))
    _add_branch_flags(p)

    p = sub.add_parser("branch", help="run a branch (e.g. a control) from the tickets of an existing lottery",
                       description="Run the experiment NAME from the finished tickets of `lth lottery`: for each "
                                   "trial, each level in --levels and each run index below --runs, one run in "
                                   f"{layout.run_dir('DIR', '<t>', '<k>', '<NAME>', '<r>')}/, shown by `lth report` "
                                   "beside the ticket. `lth branch NAME --help` shows a branch's own flags.")
    if branches:
        names = p.add_subparsers(dest="branch", required=True, metavar="NAME", title="branches")
        for name in branch_names():
            branch = get_branch(name)
            own = argparse.ArgumentParser(add_help=False)
            branch.add_arguments(own.add_argument_group(f"{name} options"))
            b = names.add_parser(name, parents=[own], help=branch.description,
                                 description=f"{name}: {branch.description}.")
            b.set_defaults(branch_options=[a.dest for a in own._actions])
            _add_branch_flags(b)
    else:  # (`lth --help`: the branches are listed by `lth branch --help`)
        p.add_argument("branch", metavar="NAME", help="the branch; `lth branch --help` lists them")

    p = sub.add_parser("compare-at-init", help="IMP tickets vs SNIP, GraSP, SynFlow and random pruning at initialization",
                       description="For one preset and a list of densities: magnitude-IMP tickets (an `lth lottery` "
                                   "experiment in DIR/imp, or --imp-experiment, resumed: finished levels are reused; "
                                   "each density is matched by the level nearest to it) and one-shot pruning at "
                                   "initialization by each of --methods to exactly each density, from the same "
                                   "initialization of each trial, trained alike. Writes DIR/compare.csv, "
                                   "DIR/compare.md and DIR/compare.png: test accuracy at early stopping vs density, "
                                   "mean and min/max over trials (Frankle et al. ICLR 2021, 'Missing the Mark'). "
                                   "Run the same command again to resume.")
    p.add_argument("--output-dir", required=True, help="the comparison's directory (resumed if it exists)")
    p.add_argument("--densities", required=True,
                   help="comma-separated fractions of prunable weights kept, e.g. 0.1,0.05,0.02")
    p.add_argument("--trials", type=int, default=1, help="independent trials (default: 1)")
    p.add_argument("--methods", default="snip,grasp,synflow,random",
                   help=ChoicesHelp("comma-separated pruning strategies applied at initialization "
                                    "(default: snip,grasp,synflow,random)", _strategy_names))
    p.add_argument("--checks", default="",
                   help="comma-separated sanity checks run on every method's masks too (Frankle et al. 2021, "
                        "Section 5): shuffle (layerwise shuffled masks), reinit (fresh weights), invert "
                        "(the lowest scores kept); default: none")
    p.add_argument("--imp-experiment", default=None, metavar="DIR",
                   help="an existing `lth lottery` experiment (magnitude pruning) to take the IMP tickets from, "
                        "and its seed; its levels and trials are extended as needed; its training "
                        "hyperparameters must equal these flags'")
    _add_experiment_flags(p)
    _add_run_flags(p, parallel=True)
    add_hparam_flags(p)

    p = sub.add_parser("sweep", help="run every line of an argfile (skipping completed runs)",
                       description="Each non-empty line of ARGFILE (not starting with #) is one `lth` "
                                   "command without the leading `lth`, e.g. `train --lr 0.001 --output-dir "
                                   "runs/a`. An ARGFILE that starts with a `#!` line and is executable is a "
                                   "script: it is run and its output used (a text file with the exec bit is "
                                   "still read as text). Lines run in parallel; completed runs are skipped. "
                                   "A failing line does not stop the others: the sweep ends with a list of "
                                   "the failed lines and exit status 2.")
    p.add_argument("argfile", help="a text file of command lines, or an executable script printing them")
    p.add_argument("--workers", type=int, default=None, help="lines run at once (default: one per core)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per line (default: cores / workers)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the lines and exit (an argfile script is not run: only named)")
    p.add_argument("--argfile-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="stop an argfile script that runs longer than this and fail (default: 60)")
    p.add_argument("--quiet", action="store_true", help="no progress view (the lines' own output stays)")
    _add_backend_flags(p.add_argument_group("running"))

    p = sub.add_parser("report", help="tables, plots and an HTML report of an experiment",
                       description="Write DIR/report.html, DIR/report.md, DIR/results.csv, DIR/aggregate.csv "
                                   "and DIR/plots/ for an experiment directory written by `lth lottery` "
                                   "(any other directory is refused). Complete runs are checked against the "
                                   "checksums recorded when they finished; a damaged file is an error.")
    p.add_argument("experiment", help="experiment directory (may still be running)")
    p.add_argument("--errorbars", choices=("minmax", "std"), default="minmax",
                   help="error bars in the figures: minmax (the range over trials, as the paper's "
                        "figures; default) or std (one standard deviation)")

    p = sub.add_parser("activations", help="per-layer activations of saved networks, with statistics and a plot",
                       description="For each trial and level asked, load the network (--weights) of run --run, "
                                   "run it in eval mode without gradients on examples of --split, and write its "
                                   "layers' activations (forward hooks; ReLU outputs by intercepting the calls) "
                                   "to OUT/<trial, level, run, weights, split>.safetensors with each unit's firing "
                                   "rate; OUT/activations.csv: per layer the mean, zero fraction, dead-unit "
                                   "fraction and firing rates; OUT/activations.png/.svg: those across levels.")
    _add_network_flags(p, levels=True)
    p.add_argument("--split", default="validation", choices=("train", "validation", "test"),
                   help="the examples' split (default: validation)")
    p.add_argument("--examples", default="1000", metavar="N|all|LIST",
                   help="which examples of the split: the first N (default: 1000), all, or indices such as "
                        "0-99,512")
    p.add_argument("--layers", default=None, metavar="NAMES",
                   help="comma-separated layers: relu<i> (the i-th ReLU's output) or a module name such as "
                        "hidden.0 (its output); default: every ReLU")
    p.add_argument("--list-layers", action="store_true", help="print the model's layer names and exit")
    p.add_argument("--output-dir", default=None, help="where to write (default: EXPERIMENT/activations)")
    p.add_argument("--data-root", default=None, help="dataset directory (default: $LTH_DATA, else the cache)")
    p.add_argument("--no-download", dest="download", action="store_false",
                   help="fail instead of downloading missing dataset files")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")

    p = sub.add_parser("export", help="write a network as a sparse safetensors file (kept weights only)",
                       description="Write the network (--weights) of one run as a sparse safetensors file: "
                                   "each masked tensor as its kept values plus their positions (a bitmap or "
                                   "int32 indices, whichever is smaller), everything else dense; the format is "
                                   "described in README.md (`lottery_ticket.export`). It loads back bitwise "
                                   "(pruned weights as +0.0) with lottery_ticket.export.load_sparse.")
    _add_network_flags(p, levels=False)
    p.add_argument("--output", required=True, metavar="FILE", help="the sparse file to write (.safetensors)")

    sub.add_parser("models", help="list the registered models")
    sub.add_parser("presets", help="list the presets and their hyperparameters")
    return parser


def _add_network_flags(parser: argparse.ArgumentParser, levels: bool) -> None:
    """Which saved network(s) of an experiment: `lth activations` (several) and `lth export` (one)."""
    parser.add_argument("--experiment", required=True, help="a directory written by `lth lottery`")
    if levels:
        parser.add_argument("--trials", default="0", help="trials, e.g. 0 or 0-2 (default: 0)")
        parser.add_argument("--levels", default="0", help="levels, e.g. 0-5 or 1,3,7 (default: 0)")
    else:
        parser.add_argument("--trial", type=int, default=0, help="the trial (default: 0)")
        parser.add_argument("--level", type=int, default=0, help="the level (default: 0)")
    parser.add_argument("--run", default=layout.TICKET,
                        help=f"the run: {layout.TICKET} (the ticket; default) or a control or branch run such as "
                             f"{layout.run_name('reinit', 0)}")
    parser.add_argument("--weights", default="final", choices=tuple(layout.NETWORKS),
                        help="the run's initial weights (masks applied), its weights at --rewind-iteration "
                             "(rewind), or its trained weights (final; default)")


def _add_branch_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `lth reinit` and of every `lth branch NAME`: which tickets, how many runs."""
    parser.add_argument("--experiment", required=True, help="a directory written by `lth lottery`")
    parser.add_argument("--levels", default="0-5", help="levels, e.g. 0-5 or 1,3,7 (default: 0-5)")
    parser.add_argument("--runs", type=int, default=1, help="runs per level and trial (default: 1)")
    _add_run_flags(parser, parallel=True)


def parse_levels(text: str, flag: str = "--levels", maximum: int = MAX_COUNT) -> list[int]:
    """`0-5` or `1,3,7` (or both, `0-2,5`) as a sorted list; bounds are checked before a range is built."""
    levels: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = (int(v) for v in part.split("-"))
            elif part.strip():
                a = b = int(part)
            else:
                continue
            if a > b:
                raise LotteryError(f"{flag} range {part.strip()} ends before it starts; got {text!r}")
            if b > maximum:
                raise LotteryError(f"{flag} must name numbers in [0, {maximum}]; got {text!r}")
            levels.update(range(a, b + 1))
    except ValueError:
        raise LotteryError(f"{flag} must look like 0-5 or 1,3,7; got {text!r}") from None
    if not levels or min(levels) < 0:
        raise LotteryError(f"{flag} must name numbers >= 0; got {text!r}")
    return sorted(levels)


def _context(args):
    from lottery_ticket.runner import RunOptions

    if args.callback:
        from lottery_ticket.callbacks import resolve

        resolve(args.callback)  # unknown names fail here, before anything is written
    return RunOptions(data_root=args.data_root, device=args.device, quiet=args.quiet,
                      checkpoint_seconds=args.checkpoint_seconds, fast=args.fast, download=args.download,
                      callbacks=tuple(dict.fromkeys(args.callback)))


def _check_device(device: str, args=None) -> None:
    """The device exists here (with --backend ray: on the nodes, checked by each task)."""
    import torch

    if getattr(args, "backend", "local") == "ray":
        return

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LotteryError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LotteryError(f"--device {device} was given but no CUDA GPU is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise LotteryError(f"--device {device} was given but this machine has {count} CUDA GPU(s) "
                           f"(cuda:0 to cuda:{count - 1})")


def _threads(args, default: int) -> int:
    """--threads (checked by `check_run_flags`), or `default`."""
    return args.threads or default


def _workers(args, jobs: int, model: str | None = None) -> tuple[int, int]:
    from lottery_ticket.runner import default_threads, default_workers

    workers = args.workers or default_workers(jobs)
    return workers, _threads(args, default_threads(workers, model))


def _parallel(args, jobs: int, model: str | None = None):
    """(workers, threads per run, backend): the local pool's, or with --backend ray one worker
    slot per task and threads following --cpus-per-run (backend None: the local pool)."""
    backend = make_backend(args.backend, args.ray_address, args.cpus_per_run or 1.0,
                           args.gpus_per_run if args.gpus_per_run is not None
                           else float(getattr(args, "device", "cpu").startswith("cuda")))
    if backend is None:
        return (*_workers(args, jobs, model), None)
    return 1, _threads(args, max(1, int(backend.cpus))), backend


def _with_background_eval(ctx, workers: int, cores: int | None = None):
    """Runs evaluate in the background (on the CPU) when each has a core to spare: `cores` (a Ray
    task's CPU share) or the machine's cores / workers above one. (Evaluation itself always runs
    on one thread on the CPU: `loop.evaluation_threads`.)"""
    from lottery_ticket.runner import cores_per_worker

    return replace(ctx, background_eval=(cores or cores_per_worker(workers)) > 1)


def _check_train_output_dir(directory: str, force: bool) -> None:
    """Refuse (unless --force) a directory holding files a run does not write: most likely a
    mistyped --output-dir pointing at a project or data folder, not a place for run files."""
    path = Path(directory)
    if force or not path.is_dir():
        return
    try:
        foreign = layout.foreign_entries(path)
    except OSError as e:
        raise LotteryError(f"cannot read --output-dir {directory}: {e.strerror}") from None
    if foreign:
        shown = ", ".join(repr(name) for name in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise LotteryError(f"--output-dir {directory} holds files that are not a lottery_ticket run ({shown}); "
                           "choose a new or empty directory, or pass --force to train there anyway")


def _check_prune_at_init(args) -> None:
    """--prune-at-init and --density come together, without --masks; the strategy is registered."""
    if args.prune_at_init is None:
        if args.density is not None:
            raise LotteryError("--density is the density of --prune-at-init; give both")
        return
    from lottery_ticket.strategies import STRATEGIES

    STRATEGIES.get(args.prune_at_init)  # unknown names: an error naming the registered ones
    if args.density is None or not (0.0 < args.density <= 1.0):
        raise LotteryError(f"--prune-at-init needs --density in (0, 1], got {args.density}")
    if args.masks:
        raise LotteryError("--prune-at-init computes the masks; it cannot be combined with --masks")


def cmd_train(args) -> None:
    from lottery_ticket.layout.files import check_same_run, run_record
    from lottery_ticket.masking import load_masks
    from lottery_ticket.runner import (
        check_model,
        default_threads,
        load_splits,
        new_model,
        pruning_seed,
        run_seeds,
        train_options,
    )
    from lottery_ticket.store import load_tensors
    from lottery_ticket.strategies import prune_at_init
    from lottery_ticket.trainer import threads, train

    hp = hparams_from_args(args)
    check_model(hp)
    _check_prune_at_init(args)
    ctx = _with_background_eval(_context(args), 1)
    train_threads = _threads(args, default_threads(1, hp.model.model))
    _check_device(ctx.device)
    _check_train_output_dir(args.output_dir, args.force)
    seeds = run_seeds(hp, args.seed, args.trial, level=0)  # level 0 of `lth lottery` with the same seed and trial
    splits = load_splits(hp, ctx, seeds["labels"])
    init_weights = load_tensors(args.init_weights) if args.init_weights else None
    model = new_model(hp, splits, seeds["model"], init_weights)
    masks = load_masks(args.masks) if args.masks else None
    run_info = {"trial": args.trial, "level": 0, "control": "train", "run_index": 0, "seeds": seeds,
                # (run.json's key for the initial weights file keeps the flag's older name)
                "masks": args.masks, "presets": args.init_weights}
    with threads(train_threads):
        if args.prune_at_init is not None:
            at_init = {"strategy": args.prune_at_init, "density": args.density,
                       "seed": pruning_seed(args.seed, args.trial)}
            run_info["prune_at_init"] = at_init
            check_same_run(Path(args.output_dir), run_record(hp, run_info))  # (before the scoring)
            if not layout.is_complete(Path(args.output_dir)):
                masks = prune_at_init(hp, model, splits, at_init["strategy"], args.density, at_init["seed"])
        result = train(model, splits, hp, order_seed=seeds["order"], masks=masks, output_dir=args.output_dir,
                       run_info=run_info, **train_options(ctx))
    if not args.quiet:
        last = {split: (loss, acc) for _, split, loss, acc in result.metrics}
        print(f"done: {args.output_dir}  test accuracy {last['test'][1]:.4f}  "
              f"validation loss {last['validation'][0]:.4f}")


def cmd_lottery(args) -> None:
    from lottery_ticket.runner import (
        check_model,
        lottery_jobs,
        prepare_experiment,
        run_job,
        run_jobs,
    )

    hp = hparams_from_args(args)
    check_model(hp, batched=args.batched)
    if hp.training.epochs == 0:
        check_rewind(hp.training, hp.training.iterations, args.levels)
    ctx = _context(args)
    _check_device(ctx.device, args)
    controls, control_levels = _lottery_controls(args)
    jobs, after = lottery_jobs(args.output_dir, hp, args.seed, args.trials, args.levels, controls,
                               control_levels, args.control_runs)
    for name in controls:
        get_branch(name).check(hp, [job for job in jobs if getattr(job, "branch", None) == name])
    # (a missing Ray: before any file)
    workers, threads, backend = _parallel(args, len(jobs) if controls else args.trials, hp.model.model)
    prepare_experiment(args.output_dir, hp, args.seed)
    if args.batched:
        from lottery_ticket.runner import cores_per_worker, lottery_batched
        from lottery_ticket.trainer import threads

        with threads(_threads(args, cores_per_worker(1))):
            lottery_batched(args.output_dir, hp, args.seed, list(range(args.trials)), args.levels, ctx)
    else:
        run_jobs(run_job, jobs, workers, threads, _with_background_eval(ctx, workers, backend and threads), share=hp,
                 runs=len(jobs), what="runs", after=after, backend=backend)
    if not args.quiet:
        from lottery_ticket.analysis.table import summary_table

        print(summary_table(args.output_dir))
        print(f"results: {args.output_dir}")
    if args.report:
        _report(args.output_dir, args.quiet)


def _lottery_controls(args) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The branch names of `lth lottery --controls` and their levels, checked before anything is written."""
    names = tuple(dict.fromkeys(_control_name(n.strip(), args.quiet) for n in args.controls.split(",") if n.strip()))
    if not names:
        if args.control_levels is not None or args.control_runs != 1:
            raise LotteryError("--control-levels and --control-runs need --controls")
        return (), ()
    if args.batched:
        raise LotteryError("--controls cannot be combined with --batched; run `lth reinit --batched` after the lottery")
    levels = tuple(parse_levels(args.control_levels)) if args.control_levels is not None else tuple(range(args.levels + 1))
    if max(levels) > args.levels:
        raise LotteryError(f"--control-levels names level {max(levels)}, but the lottery has levels 0-{args.levels}")
    return names, levels


def _control_name(name: str, quiet: bool) -> str:
    """The control branch called `name`, or whose run kind is `name`: `random` (random_pruning's
    name before, and still the name of its runs on disk), so older command lines still run, and
    resume, the same runs."""
    controls = control_names()
    if name in controls:
        return name
    by_kind = {get_branch(c).kind: c for c in controls}
    if name not in by_kind:
        raise LotteryError(f"unknown control {name!r}; choose from {', '.join(controls)}")
    if not quiet:
        print(f"note: control {name} is now called {by_kind[name]} (the same runs)", file=sys.stderr)
    return by_kind[name]


def cmd_reinit(args) -> None:
    """`lth reinit --control NAME`: `lth branch NAME` for the control branches (see `_control_name`)."""
    args.branch_options = []
    _run_branch(args, _control_name(args.control, args.quiet))


def cmd_branch(args) -> None:
    _run_branch(args, args.branch)


def _run_branch(args, name: str) -> None:
    """Branch `name`'s runs for every trial of the experiment at the levels and run indices asked."""
    from lottery_ticket.runner import check_model, control_jobs, read_experiment, run_jobs

    branch = get_branch(name)
    if args.batched and not branch.batched:
        raise LotteryError(f"--batched is not supported by branch {name}")
    ctx = _context(args)
    _check_device(ctx.device, args)
    levels = parse_levels(args.levels)
    options = tuple((dest, getattr(args, dest)) for dest in args.branch_options)
    jobs = [BranchJob(job.exp_dir, name, job.trial, job.level, job.run_index, options)
            for job in control_jobs(args.experiment, branch.kind, levels, args.runs)]
    hp, _ = read_experiment(args.experiment)
    check_model(hp, batched=args.batched, trials=len({job.trial for job in jobs}))
    branch.check(hp, jobs)
    if args.batched:
        from lottery_ticket.runner import cores_per_worker
        from lottery_ticket.trainer import threads

        with threads(_threads(args, cores_per_worker(1))):
            branch.run_batched(jobs, ctx)
    else:
        workers, threads, backend = _parallel(args, len(jobs), hp.model.model)
        run_jobs(run_branch, jobs, workers, threads, _with_background_eval(ctx, workers, backend and threads),
                 share=hp, runs=len(jobs) if branch.one_run_per_job else None, what=f"{name} runs", backend=backend)
    if not args.quiet:
        from lottery_ticket.analysis.table import summary_table

        print(summary_table(args.experiment))


def cmd_compare_at_init(args) -> None:
    from lottery_ticket.analysis.compare import markdown, write_comparison
    from lottery_ticket.compare_at_init import (
        CHECKS,
        AtInitJob,
        check_same_training,
        compare_job,
        imp_densities,
        nearest_level,
        parse_densities,
        parse_names,
    )
    from lottery_ticket.data.registry import DATASETS
    from lottery_ticket.models import build_model
    from lottery_ticket.runner import (
        LotteryJob,
        check_model,
        prepare_experiment,
        read_experiment,
        run_jobs,
    )

    if args.batched:
        raise LotteryError("--batched is not supported by compare-at-init (its runs have different masks "
                           "and starts); use --workers")
    hp = hparams_from_args(args)
    check_model(hp)
    densities = parse_densities(args.densities)
    methods = parse_names(args.methods, [n for n in _strategy_names() if n not in ("layerwise", "global")],
                          "--methods strategy")
    checks = parse_names(args.checks, CHECKS, "--checks check")
    ctx = _context(args)
    _check_device(ctx.device)
    out = Path(args.output_dir)
    if args.imp_experiment:
        imp = Path(args.imp_experiment)
        if not (imp / layout.EXPERIMENT_FILE).is_file():
            raise LotteryError(f"--imp-experiment {imp} is not an `lth lottery` experiment")
        imp_hp, seed = read_experiment(imp)
        check_same_training(imp_hp, hp)
    else:
        imp, imp_hp, seed = out / layout.COMPARE_IMP, hp, args.seed
    dataset = DATASETS.get(hp.dataset.dataset)
    template = build_model(hp.model.model, seed=0, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
    level_densities = imp_densities(imp_hp, template)
    chosen = {d: nearest_level(level_densities, d) for d in densities}
    levels = max(chosen.values())
    prepare_experiment(imp, imp_hp, seed)
    trials = range(args.trials)
    # trial by trial: an interrupted comparison has every method at every density for its first trials
    at_init = [AtInitJob(str(out), hp, seed, t, m, d, c) for t in trials for m in methods for c in ("", *checks)
               for d in densities]
    jobs = [LotteryJob(str(imp), imp_hp, seed, t, levels) for t in trials] + at_init
    workers, threads = _workers(args, len(jobs), hp.model.model)
    if not args.quiet:
        print(f"IMP levels for densities {', '.join(f'{d:g}' for d in densities)}: "
              + ", ".join(f"level {chosen[d]} ({100 * level_densities[chosen[d]]:.2f}%)" for d in densities),
              file=sys.stderr)
    results = run_jobs(compare_job, jobs, workers, threads, _with_background_eval(ctx, workers), share=hp,
                       runs=args.trials * (levels + 1) + len(at_init), what="trials and runs")
    collapsed = [message for message in results if message]
    runs = [("imp", d, chosen[d], layout.run_dir(imp, t, chosen[d])) for d in densities for t in trials]
    runs += [(j.method, j.density, None, layout.at_init_run_dir(out, j.method, j.density, j.trial)) for j in at_init]
    table = write_comparison(out, runs, title=f"{hp.model.model}: {args.trials} trials, {hp.training.iterations} "
                                              "iterations (bars: min/max)", collapsed=collapsed)
    if not args.quiet:
        print(markdown(table, collapsed))
        print(f"comparison: {out / layout.COMPARE_MD}, {out / layout.COMPARE_CSV}, {out / layout.COMPARE_PLOT}")


def is_script(path: Path) -> bool:
    """An argfile is a script if it starts with `#!` (decided by content: on network and Windows
    mounts every file may carry the exec bit)."""
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def _run_argfile_script(path: Path, timeout: float) -> str:
    """The script's output; killed with all its children after `timeout` seconds."""
    if not os.access(path, os.X_OK):
        raise LotteryError(f"argfile {path} starts with #! but is not executable; chmod +x it, "
                           "or remove the #! line to read it as text")
    try:
        proc = subprocess.Popen([str(path.resolve())], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    except OSError as e:
        raise LotteryError(f"cannot run argfile script {path}: {e.strerror}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, signal.SIGKILL)  # (its own session: the script and what it started)
            else:
                proc.kill()
        proc.wait()
        raise LotteryError(f"argfile script {path} did not finish within {timeout:g} s "
                           "(see --argfile-timeout)") from None
    if proc.returncode != 0:
        raise LotteryError(f"argfile script {path} failed ({proc.returncode}): {err.strip()[-300:]}")
    return out


def sweep_lines(argfile: str, timeout: float = 60.0) -> list[str]:
    path = Path(argfile)
    if not path.is_file():
        raise LotteryError(f"argfile {argfile} does not exist")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise LotteryError(f"--argfile-timeout must be a positive number of seconds; got {timeout}")
    if is_script(path):
        text = _run_argfile_script(path, timeout)
    else:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise LotteryError(f"cannot read argfile {argfile}: {e}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    parser = build_parser(branches=any(line.split()[0] == "branch" for line in lines))
    for line in lines:
        words = shlex.split(line)
        if not words or words[0] not in SWEEP_COMMANDS:
            raise LotteryError(f"argfile line must start with train, lottery or reinit (or branch NAME): {line!r}")
        try:
            args = parser.parse_args(words)
        except SystemExit:
            raise LotteryError(f"invalid argfile line: {line!r}") from None
        try:  # every line's flags before any line runs
            check_run_flags(args)
            if words[0] in ("train", "lottery"):
                hparams_from_args(args)
        except LotteryError as e:
            raise LotteryError(f"argfile line {line!r}: {e}") from None
    return lines


def run_sweep_line(line: str, threads: int) -> None:
    """One argfile line, run in this process with one worker (parallelism is across lines)."""
    from lottery_ticket.trainer import threads as torch_threads

    words = shlex.split(line)
    if words[0] in ("lottery", "reinit", "branch") and "--workers" not in words:
        words += ["--workers", "1", "--threads", str(threads)]
    with torch_threads(threads):
        run(words)


def cmd_sweep(args) -> None:
    from lottery_ticket.runner import RunOptions, run_jobs

    if args.dry_run and Path(args.argfile).is_file() and is_script(Path(args.argfile)):
        print(f"would run argfile script {args.argfile} and run the lines it prints (not run: --dry-run)")
        return
    lines = sweep_lines(args.argfile, args.argfile_timeout)
    if args.dry_run:
        print("\n".join(lines))
        return
    workers, threads, backend = _parallel(args, len(lines))
    if backend is None:
        print(f"sweep: {len(lines)} lines, {workers} workers x {threads} threads", file=sys.stderr)
    codes = run_jobs(_sweep_line_job, [SweepJob(line, threads) for line in lines], workers, 1, RunOptions(quiet=args.quiet),
                     what="sweep lines", backend=backend)
    failed = [line for line, code in zip(lines, codes, strict=True) if code]
    if failed:
        for line in failed:
            print(f"failed: {line}", file=sys.stderr)
        raise LotteryError(f"{len(failed)} of {len(lines)} sweep lines failed (listed above); "
                           "the others ran; fix them and run the sweep again")


@dataclass(frozen=True)
class SweepJob:
    """One argfile line of `lth sweep`, run with `threads` torch threads."""

    line: str
    threads: int


def _sweep_line_job(job: SweepJob, ctx=None) -> int:
    """One line; its failure is printed and returned as its exit status, so the others still run.
    (Stopped, a BaseException, goes through: a stop stops the whole sweep.)"""
    line = job.line
    try:
        run_sweep_line(line, job.threads)
    except LotteryError as e:
        print(f"error: {line}: {e}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except Exception:  # a bug, not a user mistake: its traceback, and the other lines still run
        print(f"error: {line}: unexpected failure:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        return 1
    return 0


def _report(experiment: str, quiet: bool, errorbars: str = "minmax") -> None:
    from lottery_ticket.analysis.report import write_report
    from lottery_ticket.layout.files import check_lottery_record

    if not Path(experiment).is_dir():
        raise LotteryError(f"experiment directory {experiment} does not exist")
    # The report's files overwrite any of the same names: only in a directory `lth lottery` made.
    check_lottery_record(experiment)
    written = write_report(experiment, errorbars=errorbars)
    if not quiet:
        import pandas as pd

        from lottery_ticket.analysis.table import averages_text

        print(averages_text(pd.read_csv(written["aggregate_csv"])))
        print(f"report: {written['html']}")


def _examples(text: str) -> list[int] | None:
    """--examples: the first N, all (None), or a list of indices such as 0-99,512."""
    if text == "all":
        return None
    if text.isdigit():
        if int(text) < 1:
            raise LotteryError("--examples must be at least 1")
        return list(range(int(text)))
    return parse_levels(text, "--examples", maximum=INT_MAX)


def cmd_activations(args) -> None:
    from lottery_ticket.analysis.activations import Request, extract

    request = Request(
        experiment=args.experiment, trials=parse_levels(args.trials, "--trials"), levels=parse_levels(args.levels),
        run=args.run, weights=args.weights, split=args.split, examples=_examples(args.examples),
        layers=[name.strip() for name in args.layers.split(",") if name.strip()] if args.layers else None,
        out_dir=args.output_dir, data_root=args.data_root, download=args.download, quiet=args.quiet)
    if args.list_layers:
        from lottery_ticket.activations import layer_names
        from lottery_ticket.analysis.efficiency import experiment_model

        model, input_shape = experiment_model(args.experiment)
        print("\n".join(layer_names(model, input_shape)))
        return
    table = extract(request)
    if not args.quiet:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"activations: {request.output_dir()}")


def cmd_export(args) -> None:
    from lottery_ticket.analysis.masks import remaining_percent
    from lottery_ticket.export import dense_bytes, save_sparse
    from lottery_ticket.layout.files import read_network

    run, state, masks = read_network(args.experiment, args.trial, args.level, args.run, args.weights)
    size = save_sparse(args.output, state, masks)
    dense = len(dense_bytes(state))
    print(f"{args.output}: {size:,} bytes, {run}/{layout.NETWORKS[args.weights]} at Pm "
          f"{remaining_percent(masks)['pm']:.2f}% ({dense:,} bytes dense: {size / dense:.3f} of it)")


def cmd_models(args) -> None:
    """The prunable count is what the model's paper preset prunes: its --never-prune tensors
    (e.g. Resnet-18's fc layer and 1x1 shortcuts) are left out, as the paper counts them."""
    from lottery_ticket.data.registry import DATASETS
    from lottery_ticket.masking import prunable_names
    from lottery_ticket.models import build_model, registered

    print(f"{'model':<16}{'dataset':<10}{'prunable weights':>18}  {'preset':<16}description")
    for entry in registered():
        for name in entry.examples:
            model = build_model(name, seed=0, input_shape=DATASETS.get(entry.dataset).input_shape)
            params = dict(model.named_parameters())
            frozen = set(never_prune(presets()[entry.default_preset][0].pruning))
            count = sum(params[n].numel() for n in prunable_names(model) if n not in frozen)
            print(f"{name:<16}{entry.dataset:<10}{count:>18,}  {entry.default_preset:<16}{entry.description}")


def cmd_presets(args) -> None:
    for name, (hp, description) in presets().items():
        print(f"{name}: {description}")
        for section, values in hp.to_dict().items():
            print(f"  {section}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
        print()


COMMANDS = {
    "train": cmd_train, "lottery": cmd_lottery, "reinit": cmd_reinit, "branch": cmd_branch, "sweep": cmd_sweep,
    "report": lambda a: _report(a.experiment, False, a.errorbars), "models": cmd_models, "presets": cmd_presets,
    "activations": cmd_activations, "export": cmd_export, "compare-at-init": cmd_compare_at_init,
}


def run(argv: list[str]) -> None:
    args = build_parser(branches=bool(argv) and argv[0] == "branch").parse_args(argv)
    check_run_flags(args)
    COMMANDS[args.command](args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stoppable = bool(argv) and argv[0] in (*SWEEP_COMMANDS, "sweep", "compare-at-init")  # (others stop at once)
    try:
        with stop_on_signals() if stoppable else contextlib.nullcontext():
            run(argv)
    except LotteryError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Stopped as e:
        print(f"interrupted ({signal.Signals(e.signum).name}): checkpoints written; "
              "run the same command again to resume", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
