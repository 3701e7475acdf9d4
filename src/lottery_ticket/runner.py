"""Running experiments from the command line: lottery trials, control runs, sweeps, in parallel.

Each job (a lottery trial, a control run, a sweep line) runs in its own worker process with its
own thread count; seeds come from the trial, level and run numbers alone, so results do not
depend on the number of workers or on the order jobs finish.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from lottery_ticket import layout, procs
from lottery_ticket.branches import branch_for_kind, run_branch
from lottery_ticket.errors import LotteryError
from lottery_ticket.experiment import experiment
from lottery_ticket.hparams import Hparams, diff
from lottery_ticket.layout import TICKET
from lottery_ticket.layout.files import (
    METRIC_COLUMNS,
    check_same_run,
    is_experiment,
    load_result,
    read_experiment,
    read_run_tensors,
    run_record,
    write_experiment,
    write_run,
)
from lottery_ticket.lock import RunLock
from lottery_ticket.masking import apply_presets
from lottery_ticket.seeds import derive_seed
from lottery_ticket.trainer import (
    threads as torch_threads,
)
from lottery_ticket.trainer import (
    total_iterations,
    train,
)


def trial_seeds(seed: int, trial: int) -> dict[str, int]:
    return {
        "model": derive_seed("model", seed, trial),
        "order": derive_seed("order", seed, trial),
        "labels": derive_seed("labels", seed, trial),
    }


def run_seeds(hp: Hparams, seed: int, trial: int, level: int, control: str = TICKET, run_index: int = 0) -> dict:
    """The trial's seeds with "order" set to this run's data-order seed (recorded in run.json).

    Each run draws its own order from (experiment seed, trial, level, control, run index), as the
    reference implementations draw a fresh order per training run (google-research/lottery-ticket
    shuffles with `train_order_seed=None`; open_lth's `data_order_seed` defaults to None, a new
    random order each run). Derived, so it does not depend on workers, job order or --batched.
    With --same-order-per-trial every run of a trial uses the trial's one order (the old way)."""
    seeds = trial_seeds(seed, trial)
    if not hp.training.same_order_per_trial:
        seeds["order"] = derive_seed("order", seed, trial, level, control, run_index)
    return seeds


def per_trial_labels(hp: Hparams) -> bool:
    """Whether every trial has its own labels (--permute-labels, --random-labels)."""
    return hp.dataset.permute_labels or hp.dataset.random_labels


@dataclass(frozen=True)
class RunOptions:
    """How to run (not what): where data is, which device, how chatty, checkpoint interval."""

    data_root: str | None = None
    device: str = "cpu"
    quiet: bool = False  # no output at all
    bars: bool = True  # a progress bar per run (off in worker processes)
    checkpoint_seconds: float = 10.0
    fast: bool = True
    download: bool = True  # fetch missing dataset files from the public mirrors
    background_eval: bool = False  # evaluate in a second thread while training goes on (a spare core)
    callbacks: tuple[str, ...] = ()  # registered evaluation callbacks run in every training run


Context = RunOptions  # its older name, kept for library callers


@dataclass(frozen=True)
class LotteryJob:
    """One lottery trial: levels 0..`levels` of train, prune, rewind, retrain (see `lottery_trial`).
    Pickled to a spawned worker as it is: the hyperparameters travel as an `Hparams`."""

    exp_dir: str
    hp: Hparams
    seed: int
    trial: int
    levels: int


@dataclass(frozen=True)
class LevelJob:
    """One level of one lottery trial: the ticket's run, after the trial's level before it is
    complete (see `lottery_level`)."""

    exp_dir: str
    hp: Hparams
    seed: int
    trial: int
    level: int


@dataclass(frozen=True)
class ControlJob:
    """One control run: `control` run number `run_index` with the masks of the ticket at
    (`trial`, `level`) of the experiment in `exp_dir` (see `control_run`)."""

    exp_dir: str
    control: str
    trial: int
    level: int
    run_index: int


# --------------------------------------------------------------------------- building blocks

_DATASETS: dict = {}  # the dataset this process loaded last
_SHARED_DATASETS: dict = {}  # datasets a parent process handed to this worker in shared memory


def _dataset_key(hp: Hparams, ctx: RunOptions, labels_seed: int | None) -> tuple:
    d = hp.dataset
    return (d.dataset, ctx.data_root, d.validation_size, d.split_seed, d.normalization,
            labels_seed if d.permute_labels else None, labels_seed if d.random_labels else None)


def load_splits(hp: Hparams, ctx: RunOptions, labels_seed: int | None):
    """The dataset for these hyperparameters (cached in this process, or shared by the parent)."""
    from lottery_ticket.data import load_dataset

    d = hp.dataset
    key = _dataset_key(hp, ctx, labels_seed)
    if key in _SHARED_DATASETS:
        return _SHARED_DATASETS[key]
    if key not in _DATASETS:
        _DATASETS.clear()
        _DATASETS[key] = load_dataset(
            d.dataset, ctx.data_root, validation_size=d.validation_size, split_seed=d.split_seed,
            normalization=d.normalization, permute_classes_seed=key[-2], random_labels_seed=key[-1],
            download=ctx.download, quiet=ctx.quiet,
        )
    return _DATASETS[key]


def shared_datasets(hp: Hparams, ctx: RunOptions) -> dict:
    """This process's copy of the dataset of `hp`, moved to shared memory, for `run_jobs` to hand
    to its workers: N workers then hold one copy of MNIST (~230 MB) between them, not N. Empty
    with --permute-labels or --random-labels (every trial has its own labels) or on a GPU (workers
    move data there)."""
    if per_trial_labels(hp) or ctx.device != "cpu":
        return {}
    splits = load_splits(hp, ctx, None)
    for name in splits.TENSORS:
        getattr(splits, name).share_memory_()
    return {_dataset_key(hp, ctx, None): splits}


def new_model(hp: Hparams, splits, seed: int, presets: dict | None = None) -> torch.nn.Module:
    from lottery_ticket.models import build_model

    model = build_model(
        hp.model.model, seed=seed, num_classes=splits.num_classes, input_shape=splits.input_shape,
        init=hp.model.init, dropout=hp.model.dropout,
    )
    if presets is not None:
        apply_presets(model, presets)
    return model


def pruner(hp: Hparams, model: torch.nn.Module, splits=None, seed: int = 0):
    """prune_masks(masks, final_weights): the registered strategy `hp.pruning.strategy` (see
    `lottery_ticket.strategies`), with `model` as the architecture, `splits` as its data and
    `seed` for strategies that draw examples or random scores."""
    from lottery_ticket.strategies import pruner as strategy_pruner

    return strategy_pruner(hp, model, splits, seed)


def pruning_seed(seed: int, trial: int) -> int:
    """The seed a trial's pruning strategy draws its scored examples (or random scores) from."""
    return derive_seed("pruning", seed, trial)


def callbacks(ctx: RunOptions) -> dict:
    """The evaluation callbacks of `ctx` by name (see `lottery_ticket.callbacks`)."""
    if not ctx.callbacks:
        return {}
    from lottery_ticket.callbacks import resolve

    return resolve(ctx.callbacks)


def train_options(ctx: RunOptions) -> dict:
    """The keyword arguments of `trainer.train` that say how to run (not what): one place from
    the run options to every training run."""
    return dict(device=ctx.device, quiet=ctx.quiet or not ctx.bars, checkpoint_seconds=ctx.checkpoint_seconds,
                fast=ctx.fast, background_eval=ctx.background_eval,
                callbacks=callbacks(ctx))


def check_model(hp: Hparams, batched: bool = False, trials: int | None = None) -> None:
    """What depends on the network, checked before anything is written or loaded: build it
    (model name, --init, --dropout), the pruner (--never-prune names) and, with `batched`, what
    batched training supports (`trials`: how many trials share the labels; None: any number)."""
    from lottery_ticket.data.registry import DATASETS
    from lottery_ticket.models import build_model
    from lottery_ticket.models.fc import is_fully_connected

    dataset = DATASETS.get(hp.dataset.dataset)
    model = build_model(hp.model.model, seed=0, num_classes=dataset.num_classes, input_shape=dataset.input_shape,
                        init=hp.model.init, dropout=hp.model.dropout)
    pruner(hp, model)
    if batched:
        if not is_fully_connected(hp.model.model):
            from lottery_ticket.batched_func import check_supported

            check_supported(model)  # (conv nets, VGG, ResNet: batched by torch.func)
        elif hp.dataset.augment:
            raise LotteryError("--batched does not support --augment for fully-connected models")
        if per_trial_labels(hp) and (trials is None or trials > 1):
            raise LotteryError("--batched trains all trials on the same labels; it cannot be combined with "
                               "--permute-labels or --random-labels")


def report_run(out: Path, result, started: float, ctx: RunOptions) -> None:
    if ctx.quiet:
        return
    import pandas as pd

    from lottery_ticket.analysis.early_stopping import early_stopping
    from lottery_ticket.masking import density

    es = early_stopping(pd.DataFrame(result.metrics, columns=list(METRIC_COLUMNS)))
    pm = 100 * density(read_run_tensors(out, layout.MASKS, verify=False))
    line = (f"{out}: Pm {pm:.1f}%  early stop{' (test loss)' if es['early_stop_split'] == 'test' else ''} "
            f"at {es['early_stop_iteration']:.0f}  "
            f"test acc {es['early_stop_test_accuracy']:.4f}  ({time.time() - started:.1f} s)")
    if procs.has_progress_queue():  # a worker: the parent prints it above its progress view
        procs.progress("line", str(out), line)
    else:
        print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- experiments


def prepare_experiment(exp_dir: str | Path, hp: Hparams, seed: int) -> None:
    """Record the experiment's settings, or refuse if the directory holds a different experiment."""
    exp_dir = Path(exp_dir)
    if is_experiment(exp_dir):
        old_hp, old_seed = read_experiment(exp_dir)
        changes = diff(old_hp, hp)
        if old_seed != seed:
            changes.append(f"seed: {old_seed!r} -> {seed!r}")
        if changes:
            raise LotteryError(
                f"{exp_dir} holds an experiment with different hyperparameters ({'; '.join(changes)}); "
                "use another --output-dir, or the same flags to resume it"
            )
        return
    if exp_dir.exists() and (not exp_dir.is_dir() or any(p for p in exp_dir.iterdir() if not p.name.startswith("."))):
        raise LotteryError(f"{exp_dir} exists and is not a lottery_ticket experiment; choose an empty or new directory")
    write_experiment(exp_dir, hp, seed)


def lottery_trial(job: LotteryJob, ctx: RunOptions) -> None:
    """One trial: levels 0..`levels` of train, prune, rewind, retrain."""
    exp_dir, hp, seed, trial, levels = job.exp_dir, job.hp, job.seed, job.trial, job.levels
    seeds = trial_seeds(seed, trial)

    def make_dataset():
        return load_splits(hp, ctx, seeds["labels"])

    splits = make_dataset()

    def make_model(presets):
        return new_model(hp, splits, seeds["model"], presets)

    def train_model(level, dataset, model, masks):
        result = train_ticket(LevelJob(exp_dir, hp, seed, trial, level), ctx, dataset, model, masks)
        return result.rewind, result.final

    prune_masks = pruner(hp, make_model(None), splits, pruning_seed(seed, trial))
    experiment(make_dataset, make_model, train_model, prune_masks, levels)


def train_ticket(job: LevelJob, ctx: RunOptions, splits, model: torch.nn.Module, masks):
    """The ticket's run at (trial, level): `model` (already reset) trained with `masks`; its result."""
    exp_dir, hp, seed, trial, level = job.exp_dir, job.hp, job.seed, job.trial, job.level
    out = layout.run_dir(exp_dir, trial, level)
    started = time.time()
    run = run_seeds(hp, seed, trial, level)
    result = train(
        model, splits, hp, order_seed=run["order"], masks=masks, output_dir=out,
        run_info={"trial": trial, "level": level, "control": TICKET, "run_index": 0, "seeds": run},
        start_iteration=hp.training.rewind_iteration if level > 0 else 0, **train_options(ctx),
    )
    report_run(out, result, started, ctx)
    return result


def lottery_level(job: LevelJob, ctx: RunOptions) -> None:
    """One level of one trial, from the files of the trial's level before (which must be
    complete): its masks pruned from that level's masks and final weights, its weights reset to
    level 0's (initial, or under late rewinding the rewind iteration's). The same runs as
    `lottery_trial` (bitwise: the files hold exactly what that loop keeps in memory), so a
    trial's levels can be scheduled one by one, between other trials' levels and control runs."""
    from lottery_ticket.masking import full_masks

    exp_dir, hp, trial, level = job.exp_dir, job.hp, job.trial, job.level
    seeds = trial_seeds(job.seed, trial)
    splits = load_splits(hp, ctx, seeds["labels"])
    if level == 0:
        model = new_model(hp, splits, seeds["model"])
        train_ticket(job, ctx, splits, model, full_masks(model))
        return
    reset = read_run_tensors(layout.run_dir(exp_dir, trial, 0),
                             layout.REWIND if hp.training.rewind_iteration > 0 else layout.INITIAL)
    model = new_model(hp, splits, seeds["model"], reset)
    previous = layout.run_dir(exp_dir, trial, level - 1)
    # (the architecture: strategies prune a copy holding the weights; the trial's seed, as lottery_trial)
    prune_masks = pruner(hp, model, splits, pruning_seed(job.seed, trial))
    masks = prune_masks(read_run_tensors(previous, layout.MASKS), read_run_tensors(previous, layout.FINAL))
    train_ticket(job, ctx, splits, model, masks)


def lottery_jobs(exp_dir: str, hp: Hparams, seed: int, trials: int, levels: int, controls: tuple[str, ...] = (),
                 control_levels: tuple[int, ...] = (), control_runs: int = 1) -> tuple[list, list[tuple[int, ...]]]:
    """A lottery with its control runs as one job graph (`schedule`): (jobs, after). Each level of
    each trial is a `LevelJob` waiting for the trial's level before; each control run (`controls`:
    branch names, at `control_levels`, `control_runs` per level and trial) a `BranchJob` waiting
    for its level. Run with `run_jobs(run_job, jobs, ..., after=after)`."""
    from lottery_ticket.branches import BranchJob

    jobs: list = []
    after: list[tuple[int, ...]] = []
    for trial in range(trials):
        previous: tuple[int, ...] = ()  # the trial's level before, once there is one
        for level in range(levels + 1):
            ticket = len(jobs)
            jobs.append(LevelJob(exp_dir, hp, seed, trial, level))
            after.append(previous)
            previous = (ticket,)
            if level in control_levels:
                for name in controls:
                    for r in range(control_runs):
                        jobs.append(BranchJob(exp_dir, name, trial, level, r))
                        after.append((ticket,))
    return jobs, after


def run_job(job, ctx: RunOptions) -> None:
    """The job function of a lottery job graph: a ticket level (`LevelJob`) or a branch run."""
    if isinstance(job, LevelJob):
        return lottery_level(job, ctx)
    return run_branch(job, ctx)


@dataclass
class ControlSetup:
    """Everything one control run needs before training."""

    hp: Hparams
    splits: object
    model: torch.nn.Module
    masks: dict
    order_seed: int
    out: Path
    run_info: dict
    start_iteration: int = 0


def prepare_control(job: ControlJob, ctx: RunOptions) -> ControlSetup:
    """The network, masks and seeds of one control run for the ticket at (trial, level).

    A control starts where the ticket's retraining starts. With late rewinding
    (`--rewind-iteration k`) that is iteration k -- its learning rate, warmup and data-order
    position -- as in Frankle et al., "Linear Mode Connectivity and the Lottery Ticket
    Hypothesis" (ICML 2020), Section 5 and appendix, whose random pruning and random
    reinitialization baselines are rewound to the same iteration as the IMP subnetworks. The
    weights: reinit a fresh initialization; random the level-0 weights at iteration k
    (rewind.safetensors) with a random mask; reuse/reuse_sign values sampled from the surviving
    weights at iteration k. (Our reading for reuse: the paper has no reuse control under
    rewinding; sampling from the weights the ticket itself restarts from keeps the control one
    change away from the ticket.) Without rewinding, k = 0 and the starting weights are the
    level-0 initial weights.
    """
    exp_dir, control, trial, level, run_index = job.exp_dir, job.control, job.trial, job.level, job.run_index
    hp, seed = read_experiment(exp_dir)
    seeds = run_seeds(hp, seed, trial, level, control, run_index)
    ticket = layout.run_dir(exp_dir, trial, level)
    if not layout.is_complete(ticket):
        raise LotteryError(f"the ticket run {ticket} is not complete; finish `lth lottery` first")
    masks = read_run_tensors(ticket, layout.MASKS)
    start = hp.training.rewind_iteration
    starting_weights = layout.REWIND if start > 0 else layout.INITIAL
    original = read_run_tensors(layout.run_dir(exp_dir, trial, 0), starting_weights)
    run_seed = derive_seed("control", control, seed, trial, level, run_index)
    splits = load_splits(hp, ctx, seeds["labels"])
    fresh = new_model(hp, splits, run_seed).state_dict()
    branch = branch_for_kind(control)
    masks = branch.source_masks(exp_dir, trial, level, hp, seed, splits, masks)
    weights, run_masks = branch.init(original, fresh, masks, run_seed)
    return ControlSetup(
        hp=hp, splits=splits, model=new_model(hp, splits, run_seed, presets=weights), masks=run_masks,
        order_seed=seeds["order"], out=layout.run_dir(exp_dir, trial, level, control, run_index),
        run_info={"trial": trial, "level": level, "control": control, "run_index": run_index,
                  "seeds": {**seeds, "control": run_seed},
                  # reuse once sampled from all initial values; marking the new sampling keeps
                  # such older runs on disk from being counted as these (check_same_run)
                  **({"sampled_from": "surviving"} if control in ("reuse", "reuse_sign") else {})},
        start_iteration=start,
    )


def control_run(job: ControlJob, ctx: RunOptions) -> None:
    """One control run trained with the masks of the ticket at (trial, level)."""
    c = prepare_control(job, ctx)
    started = time.time()
    result = train(
        c.model, c.splits, c.hp, order_seed=c.order_seed, masks=c.masks, output_dir=c.out, run_info=c.run_info,
        start_iteration=c.start_iteration, **train_options(ctx),
    )
    report_run(c.out, result, started, ctx)


@contextlib.contextmanager
def batched_checkpoint(exp_dir: str | Path, identity: dict, ctx: RunOptions):
    """The checkpoint arguments of `train_batched` for one batched computation, under a lock (one
    process trains a given set of runs at a time); the checkpoint goes once its runs are written."""
    directory = layout.batched_checkpoint_dir(exp_dir, identity)
    with RunLock(directory):
        yield {"checkpoint_dir": directory, "checkpoint_seconds": ctx.checkpoint_seconds, "identity": identity}
        with contextlib.suppress(FileNotFoundError):
            (directory / layout.CHECKPOINT_FILE).unlink()  # only after success: a failed run resumes from it
    for empty in (directory, directory.parent):  # (not empty if another process holds it now)
        with contextlib.suppress(OSError):
            empty.rmdir()


def train_runs_batched(exp_dir: str | Path, runs: list[tuple], splits, hp: Hparams, ctx: RunOptions,
                       start_iteration: int = 0) -> list:
    """Train `runs` -- (out, record, model, masks, order_seed) each -- as one batched computation,
    resumable from its checkpoint, and write each run's files; the `TrainResult`s."""
    from lottery_ticket.batched import train_batched

    started = time.time()
    identity = {"runs": [str(Path(out).relative_to(exp_dir)) for out, *_ in runs], "hparams": hp.to_dict()}
    total = total_iterations(hp.training, len(splits.train_y), hp.dataset.batch_size)
    with batched_checkpoint(exp_dir, identity, ctx) as resumable:
        results = train_batched([r[2] for r in runs], splits, hp, [r[4] for r in runs], [r[3] for r in runs],
                                ctx.device, start_iteration=start_iteration, callbacks=callbacks(ctx),
                                **resumable)
        for (out, record, _, masks, _), result in zip(runs, results, strict=True):
            write_run(out, record, masks, result, total)
            report_run(out, result, started, ctx)
    return results


def control_runs_batched(jobs: list[ControlJob], ctx: RunOptions) -> None:
    """All control runs in `jobs` as one batched computation (fully-connected models; same data)."""
    setups = [prepare_control(job, ctx) for job in jobs]
    if setups and per_trial_labels(setups[0].hp) and len({c.run_info["trial"] for c in setups}) > 1:
        raise LotteryError("--batched trains all runs on the same labels; trials with --permute-labels or "
                           "--random-labels differ")
    todo = []
    for c in setups:
        record = run_record(c.hp, c.run_info)
        check_same_run(c.out, record)
        if not layout.is_complete(c.out):
            todo.append((c, record))
    if not todo:
        return
    first = todo[0][0]
    runs = [(c.out, record, c.model, c.masks, c.order_seed) for c, record in todo]
    train_runs_batched(jobs[0].exp_dir, runs, first.splits, first.hp, ctx, start_iteration=first.start_iteration)


def lottery_batched(exp_dir: str, hp: Hparams, seed: int, trials: list[int], levels: int, ctx: RunOptions) -> None:
    """Trials 0..T-1 level by level, each level's trials trained as one batched computation.

    The same seeds and files as `lottery_trial` (bitwise on one thread). Resumes like
    `lottery_trial`: complete runs are loaded, an interrupted level continues from the checkpoint
    of its batched computation.
    """
    from lottery_ticket.masking import full_masks

    if per_trial_labels(hp):
        raise LotteryError("--batched trains all trials on the same labels; it cannot be combined with "
                           "--permute-labels or --random-labels")
    seeds = {t: trial_seeds(seed, t) for t in trials}
    splits = load_splits(hp, ctx, None)
    template = new_model(hp, splits, 0)  # the architecture: layer kinds, all-ones masks
    prune_masks = {t: pruner(hp, template, splits, pruning_seed(seed, t)) for t in trials}
    masks, reset, final = {}, {}, {}

    def keep(t: int, level: int, result) -> None:
        """What later levels need from trial t's run at `level`."""
        final[t] = result.final
        if level == 0:
            reset[t] = result.rewind

    for level in range(levels + 1):
        todo = []
        for t in trials:
            masks[t] = full_masks(template) if level == 0 else prune_masks[t](masks[t], final[t])
            out = layout.run_dir(exp_dir, t, level)
            run = run_seeds(hp, seed, t, level)
            record = run_record(hp, {"trial": t, "level": level, "control": TICKET, "run_index": 0,
                                     "seeds": run})
            check_same_run(out, record)
            if layout.is_complete(out):
                keep(t, level, load_result(out))
            else:
                todo.append((t, new_model(hp, splits, seeds[t]["model"], reset.get(t)), out, record))
        if not todo:
            continue
        runs = [(out, record, model, masks[t], record["run"]["seeds"]["order"]) for t, model, out, record in todo]
        results = train_runs_batched(exp_dir, runs, splits, hp, ctx,
                                     start_iteration=hp.training.rewind_iteration if level > 0 else 0)
        for (t, *_), result in zip(todo, results, strict=True):
            keep(t, level, result)


def control_jobs(exp_dir: str | Path, control: str, levels: list[int], runs: int) -> list[ControlJob]:
    branch_for_kind(control)  # an unknown run kind: an error naming the registered branches
    if not is_experiment(exp_dir):
        raise LotteryError(f"{exp_dir} is not a lottery experiment (no {layout.EXPERIMENT_FILE}); run `lth lottery` first")
    trials = layout.trials_present(exp_dir)
    if not trials:
        raise LotteryError(f"{exp_dir} has no trials yet; run `lth lottery` first")
    jobs = []
    for trial in trials:
        available = set(layout.levels_present(exp_dir, trial))
        missing = [lv for lv in levels if lv not in available]
        if missing:
            raise LotteryError(f"trial {trial} of {exp_dir} has no level(s) {missing}; it has {sorted(available)}")
        jobs.extend(ControlJob(str(exp_dir), control, trial, level, r) for level in levels for r in range(runs))
    return jobs


# --------------------------------------------------------------------------- parallel execution


def default_workers(jobs: int) -> int:
    return max(1, min(jobs, os.cpu_count() or 1))


def default_threads(workers: int, model: str | None = None) -> int:
    """Training threads per run: one for fully-connected models, whose small matrix products are
    fastest on one thread (and collapse when OpenMP threads compete for cores; see
    benchmarks/PROFILE.md), else the cores shared out among the workers."""
    from lottery_ticket.models.fc import is_fully_connected

    if model is not None and is_fully_connected(model):
        return 1
    return cores_per_worker(workers)


def cores_per_worker(workers: int) -> int:
    """The machine's cores shared out among `workers` (at least one)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _init_worker(threads: int, datasets: dict, parent_pid: int, progress_queue) -> None:
    procs.die_with_parent(parent_pid)
    if progress_queue is not None:
        progress_queue.cancel_join_thread()  # (exiting never waits for the parent to read events)
        procs.set_progress_queue(progress_queue)
    torch.set_num_threads(threads)
    _SHARED_DATASETS.update(datasets)


def _call_job(fn, job, ctx: RunOptions, parent_pid: int):
    """fn(job, ctx) in a worker; if the parent died meanwhile, exit once the run has stopped
    (its checkpoint written, its lock released) rather than take the next job."""
    try:
        return fn(job, ctx)
    except procs.Stopped:
        if not procs.parent_alive(parent_pid):
            os._exit(128 + signal.SIGTERM)
        raise


def run_jobs(fn, jobs: list, workers: int, threads: int, ctx: RunOptions, share: Hparams | None = None,
             runs: int | None = None, what: str = "jobs", after: list[tuple[int, ...]] | None = None,
             backend=None) -> list:
    """fn(job, ctx) for every job (a frozen dataclass such as `LotteryJob`, picklable), their results: in this
    process if `workers` is 1, else in a process pool whose workers find the dataset of `share` (if given)
    already loaded, in shared memory. `runs`: how many training runs the jobs make (for the progress
    view's ETA). `after[i]`: the indices of the jobs job i waits for (see `schedule`); a job starts
    when they are done and a worker is free, the longest remaining chain first (without `after`: in
    list order).

    The pool's workers die with this process. Asked to stop (SIGINT/SIGTERM, see `procs`), this
    process passes SIGTERM on to its workers, waits for them to write their checkpoints, and
    raises `procs.Stopped`.

    `backend` (see `lottery_ticket.backends`; None: this process pool) runs the jobs elsewhere,
    e.g. as Ray tasks on a cluster: `backend.run_jobs(fn, jobs, threads, ctx, runs, what, after)`."""
    from lottery_ticket.schedule import Schedule

    if backend is not None:
        return backend.run_jobs(fn, jobs, threads, ctx, runs=runs, what=what, after=after)

    schedule = Schedule(after if after is not None else [()] * len(jobs))
    if workers <= 1 or len(jobs) <= 1:
        results: dict[int, object] = {}
        with torch_threads(threads):
            while (i := schedule.next()) is not None:
                results[i] = fn(jobs[i], ctx)
                schedule.finished(i)
        return [results[i] for i in range(len(jobs))]
    if not ctx.quiet:
        print(f"starting {len(jobs)} {what} on {workers} worker processes x {threads} threads"
              + (f" ({runs} training runs)" if runs else ""), file=sys.stderr, flush=True)
    worker_ctx = replace(ctx, bars=False)
    mp = get_context("spawn")
    queue = None if ctx.quiet else mp.Queue()
    view = None if ctx.quiet else ProgressView(runs, len(jobs))
    parent = os.getpid()
    stopped: int | None = None
    futures: dict[int, object] = {}  # job index -> its future, once started
    try:
        with ProcessPoolExecutor(workers, mp_context=mp, initializer=_init_worker,
                                 initargs=(threads, shared_datasets(share, ctx) if share else {}, parent,
                                           queue)) as pool:
            pending: set = set()
            started: dict = {}  # future -> job index
            failed = False

            def start_ready() -> None:  # (no more than `workers` at once: the schedule picks late)
                while len(pending) < workers and (i := schedule.next()) is not None:
                    futures[i] = pool.submit(_call_job, fn, jobs[i], worker_ctx, parent)
                    started[futures[i]] = i
                    pending.add(futures[i])

            start_ready()
            try:
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    if view is not None:
                        view.update(queue, jobs_done=sum(f.done() for f in futures.values()))
                    errors = [f.exception() for f in done if not f.cancelled() and f.exception() is not None]
                    stops = [e.signum for e in errors if isinstance(e, procs.Stopped)]
                    if stopped is None and (procs.stop_requested() or stops):
                        stopped = procs.stop_signal() or stops[0]
                        _stop_workers(pool, pending)
                    elif errors:  # (as before: the running jobs finish, no new one starts)
                        for future in pending:
                            future.cancel()
                    pending = {f for f in pending if not f.cancelled()}
                    failed = failed or bool(errors)
                    for future in done:
                        schedule.finished(started[future])
                    if stopped is None and not failed:
                        start_ready()
            except BaseException:  # e.g. a second signal (Stopped at once): do not wait for every job
                _stop_workers(pool, pending)
                raise
    finally:
        if view is not None:
            view.close()
        if queue is not None:
            queue.close()
            queue.cancel_join_thread()
    if stopped is not None:
        raise procs.Stopped(stopped)
    for future in futures.values():
        if not future.cancelled() and future.exception() is not None:
            raise future.exception()
    if schedule:
        raise RuntimeError("job dependencies left jobs that could never start")  # (Schedule refuses cycles)
    return [futures[i].result() for i in range(len(jobs))]


def _stop_workers(pool: ProcessPoolExecutor, pending) -> None:
    """Start no new job, and SIGTERM the workers: each checkpoints its run and stops."""
    for future in pending:
        future.cancel()
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressView:
    """The parent's one view of its workers' runs, from their `procs.progress` events: runs
    done/running, iterations per second, ETA; a tqdm line on a terminal, else a plain line every
    PLAIN_SECONDS. Lines the workers send (run started, run finished) are printed above it."""

    PLAIN_SECONDS = 30.0

    def __init__(self, runs: int | None, jobs: int):
        self.runs, self.jobs = runs, jobs
        self.running: dict[str, tuple[int, int]] = {}  # run -> (iteration, total)
        self.done = self.jobs_done = self.trained = 0
        self.totals: list[int] = []
        self.started = time.monotonic()
        self.last_plain = self.started
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=runs, unit="run", desc="runs", file=sys.stderr, dynamic_ncols=True,
                            bar_format="{desc}: {n_fmt}/{total_fmt} {postfix}" if runs else "{desc}: {n_fmt} {postfix}")

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, queue, jobs_done: int) -> None:
        import queue as queues

        self.jobs_done = jobs_done
        while True:
            try:
                _, kind, key, value = queue.get_nowait()
            except (queues.Empty, OSError, ValueError, EOFError):
                break
            if kind == "start":
                iteration, total = value
                self.running[key] = (iteration, total)
                self.totals.append(total)
                self.write(self.started_line(key, iteration, total))
            elif kind == "step" and key in self.running:
                iteration, total = self.running[key]
                self.trained += max(0, value - iteration)
                self.running[key] = (value, total)
            elif kind == "done":
                if key in self.running:
                    iteration, total = self.running.pop(key)
                    self.trained += max(0, total - iteration)
                self.done += 1
            elif kind == "line":
                self.write(str(value))
        self.render()

    def started_line(self, key: str, iteration: int, total: int) -> str:
        return f"start: {key} (iteration {iteration} of {total})" if iteration else f"start: {key}"

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.trained / elapsed
        text = f"{len(self.running)} running, {self.jobs_done}/{self.jobs} jobs done, {rate:.0f} it/s"
        if self.runs and rate > 0 and self.totals:
            waiting = max(0, self.runs - self.done - len(self.running))
            left = sum(t - i for i, t in self.running.values()) + waiting * sum(self.totals) / len(self.totals)
            text += f", ETA {_duration(left / rate)}"
        return text

    def render(self) -> None:
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.set_postfix_str(self.summary(), refresh=True)
        elif time.monotonic() - self.last_plain >= self.PLAIN_SECONDS:
            self.last_plain = time.monotonic()
            runs = f"{self.done}/{self.runs}" if self.runs else str(self.done)
            print(f"progress: {runs} runs done, {self.summary()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
