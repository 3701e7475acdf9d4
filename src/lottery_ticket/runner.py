"""Running experiments from the command line: lottery trials, control runs, sweeps, in parallel.

Each job (a lottery trial, a control run, a sweep line) runs in its own worker process with its
own thread count; seeds come from the trial, level and run numbers alone, so results do not
depend on the number of workers or on the order jobs finish.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

from lottery_ticket import checkpoint, paths
from lottery_ticket.controls import CONTROLS, control_init
from lottery_ticket.errors import LotteryError
from lottery_ticket.experiment import experiment
from lottery_ticket.hparams import Hparams, diff, never_prune
from lottery_ticket.lock import RunLock
from lottery_ticket.masking import apply_presets, layer_kinds
from lottery_ticket.pruning import layer_fractions, prune_global, prune_layerwise
from lottery_ticket.store import load_tensors, read_json, write_json
from lottery_ticket.trainer import (
    check_same_run,
    load_result,
    run_record,
    total_iterations,
    train,
    versions,
    write_run,
)
from lottery_ticket.trainer import (
    threads as torch_threads,
)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of names and numbers (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def trial_seeds(seed: int, trial: int) -> dict[str, int]:
    return {
        "model": derive_seed("model", seed, trial),
        "order": derive_seed("order", seed, trial),
        "labels": derive_seed("labels", seed, trial),
    }


@dataclass(frozen=True)
class Context:
    """How to run (not what): where data is, which device, how chatty, checkpoint interval."""

    data_root: str | None = None
    device: str = "cpu"
    quiet: bool = False  # no output at all
    bars: bool = True  # a progress bar per run (off in worker processes)
    checkpoint_seconds: float = 10.0
    fast: bool = True
    download: bool = True  # fetch missing dataset files from the public mirrors
    eval_threads: int | None = None  # torch threads while evaluating (None: the training threads)
    background_eval: bool = False  # evaluate in a second thread while training goes on (a spare core)


# --------------------------------------------------------------------------- building blocks

_DATASETS: dict = {}  # the dataset this process loaded last
_SHARED_DATASETS: dict = {}  # datasets a parent process handed to this worker in shared memory


def _dataset_key(hp: Hparams, ctx: Context, labels_seed: int | None) -> tuple:
    d = hp.dataset
    return (d.dataset, ctx.data_root, d.validation_size, d.split_seed, d.normalization,
            labels_seed if d.permute_labels else None)


def load_splits(hp: Hparams, ctx: Context, labels_seed: int | None):
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
            normalization=d.normalization, permute_labels_seed=key[-1], download=ctx.download,
        )
    return _DATASETS[key]


def shared_datasets(hp: Hparams, ctx: Context) -> dict:
    """This process's copy of the dataset of `hp`, moved to shared memory, for `run_jobs` to hand
    to its workers: N workers then hold one copy of MNIST (~230 MB) between them, not N. Empty
    with --permute-labels (every trial has its own labels) or on a GPU (workers move data there)."""
    if hp.dataset.permute_labels or ctx.device != "cpu":
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


def pruner(hp: Hparams, model: torch.nn.Module):
    """prune_masks(masks, final_weights) for these hyperparameters."""
    p = hp.pruning
    if p.strategy == "global":
        return lambda masks, weights: prune_global(masks, weights, p.global_fraction, never_prune(p))
    fractions = layer_fractions(layer_kinds(model), p.fc_fraction, p.conv_fraction, p.output_fraction)
    for name in never_prune(p):
        if name not in fractions:
            raise LotteryError(f"--never-prune names unknown tensor {name!r}; prunable: {sorted(fractions)}")
        fractions[name] = 0.0
    return lambda masks, weights: prune_layerwise(masks, weights, fractions)


def report_run(out: Path, result, started: float, ctx: Context) -> None:
    if ctx.quiet:
        return
    import pandas as pd

    from lottery_ticket.analysis.early_stopping import early_stopping
    from lottery_ticket.masking import density

    es = early_stopping(pd.DataFrame(result.metrics, columns=["iteration", "split", "loss", "accuracy"]))
    pm = 100 * density(load_tensors(out / paths.MASKS))
    print(
        f"{out}: Pm {pm:.1f}%  early stop{' (test loss)' if es['early_stop_split'] == 'test' else ''} "
        f"at {es['early_stop_iteration']:.0f}  "
        f"test acc {es['early_stop_test_accuracy']:.4f}  ({time.time() - started:.1f} s)",
        file=sys.stderr, flush=True,
    )


# --------------------------------------------------------------------------- experiments


def prepare_experiment(exp_dir: str | Path, hp: Hparams, seed: int) -> None:
    """Record the experiment's settings, or refuse if the directory holds a different experiment."""
    exp_dir = Path(exp_dir)
    record_file = exp_dir / paths.EXPERIMENT_FILE
    if record_file.exists():
        old = read_json(record_file)
        try:
            changes = diff(Hparams.from_dict(old["hparams"]), hp)
        except (KeyError, TypeError, LotteryError):
            raise LotteryError(f"{record_file} is not a lottery_ticket experiment record") from None
        if old.get("seed") != seed:
            changes.append(f"seed: {old.get('seed')!r} -> {seed!r}")
        if changes:
            raise LotteryError(
                f"{exp_dir} holds an experiment with different hyperparameters ({'; '.join(changes)}); "
                "use another --output-dir, or the same flags to resume it"
            )
        return
    if exp_dir.exists() and (not exp_dir.is_dir() or any(p for p in exp_dir.iterdir() if not p.name.startswith("."))):
        raise LotteryError(f"{exp_dir} exists and is not a lottery_ticket experiment; choose an empty or new directory")
    write_json(record_file, {"kind": "lottery", "hparams": hp.to_dict(), "seed": seed, "versions": versions()})


def lottery_trial(exp_dir: str, hp_dict: dict, seed: int, trial: int, levels: int, ctx: Context) -> None:
    """One trial: levels 0..`levels` of train, prune, rewind, retrain."""
    hp = Hparams.from_dict(hp_dict)
    seeds = trial_seeds(seed, trial)
    rewind = hp.training.rewind_iteration

    def make_dataset():
        return load_splits(hp, ctx, seeds["labels"])

    splits = make_dataset()

    def make_model(presets):
        return new_model(hp, splits, seeds["model"], presets)

    def train_model(level, dataset, model, masks):
        out = paths.run_dir(exp_dir, trial, level)
        started = time.time()
        result = train(
            model, dataset, hp, order_seed=seeds["order"], masks=masks, output_dir=out,
            run_info={"trial": trial, "level": level, "control": "main", "run_index": 0, "seeds": seeds},
            device=ctx.device, quiet=ctx.quiet or not ctx.bars, checkpoint_seconds=ctx.checkpoint_seconds, fast=ctx.fast,
            eval_threads=ctx.eval_threads, background_eval=ctx.background_eval,
            start_iteration=rewind if level > 0 else 0,
        )
        report_run(out, result, started, ctx)
        return result.rewind, result.final

    prune_masks = pruner(hp, make_model(None))
    experiment(make_dataset, make_model, train_model, prune_masks, levels)


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


def prepare_control(exp_dir: str, control: str, trial: int, level: int, run_index: int, ctx: Context) -> ControlSetup:
    """The network, masks and seeds of one control run for the ticket at (trial, level)."""
    record = read_json(Path(exp_dir) / paths.EXPERIMENT_FILE)
    hp, seed = Hparams.from_dict(record["hparams"]), record["seed"]
    seeds = trial_seeds(seed, trial)
    ticket = paths.run_dir(exp_dir, trial, level)
    if not paths.is_complete(ticket):
        raise LotteryError(f"the ticket run {ticket} is not complete; finish `lth lottery` first")
    masks = load_tensors(ticket / paths.MASKS)
    original = load_tensors(paths.run_dir(exp_dir, trial, 0) / paths.INITIAL)
    run_seed = derive_seed("control", control, seed, trial, level, run_index)
    splits = load_splits(hp, ctx, seeds["labels"])
    fresh = new_model(hp, splits, run_seed).state_dict()
    weights, run_masks = control_init(control, original, fresh, masks, run_seed)
    # Controls train from iteration 0 with the full schedule: there is no rewinding to compare.
    control_hp = hp if hp.training.rewind_iteration == 0 else _without_rewind(hp)
    return ControlSetup(
        hp=control_hp, splits=splits, model=new_model(hp, splits, run_seed, presets=weights), masks=run_masks,
        order_seed=seeds["order"], out=paths.run_dir(exp_dir, trial, level, control, run_index),
        run_info={"trial": trial, "level": level, "control": control, "run_index": run_index,
                  "seeds": {**seeds, "control": run_seed}},
    )


def control_run(exp_dir: str, control: str, trial: int, level: int, run_index: int, ctx: Context) -> None:
    """One control run trained with the masks of the ticket at (trial, level)."""
    c = prepare_control(exp_dir, control, trial, level, run_index, ctx)
    started = time.time()
    result = train(
        c.model, c.splits, c.hp, order_seed=c.order_seed, masks=c.masks, output_dir=c.out, run_info=c.run_info,
        device=ctx.device, quiet=ctx.quiet or not ctx.bars, checkpoint_seconds=ctx.checkpoint_seconds, fast=ctx.fast,
            eval_threads=ctx.eval_threads, background_eval=ctx.background_eval,
    )
    report_run(c.out, result, started, ctx)


@contextlib.contextmanager
def batched_checkpoint(exp_dir: str | Path, identity: dict, ctx: Context):
    """The checkpoint arguments of `train_batched` for one batched computation, under a lock (one
    process trains a given set of runs at a time); the checkpoint goes once its runs are written."""
    directory = paths.batched_checkpoint_dir(exp_dir, identity)
    with RunLock(directory):
        yield {"checkpoint_dir": directory, "checkpoint_seconds": ctx.checkpoint_seconds, "identity": identity}
        with contextlib.suppress(FileNotFoundError):
            (directory / checkpoint.FILE).unlink()  # only after success: a failed run resumes from it
    for empty in (directory, directory.parent):  # (not empty if another process holds it now)
        with contextlib.suppress(OSError):
            empty.rmdir()


def train_runs_batched(exp_dir: str | Path, runs: list[tuple], splits, hp: Hparams, ctx: Context,
                       start_iteration: int = 0) -> list:
    """Train `runs` -- (out, record, model, masks, order_seed) each -- as one batched computation,
    resumable from its checkpoint, and write each run's files; the `TrainResult`s."""
    from lottery_ticket.batched import train_batched

    started = time.time()
    identity = {"runs": [str(Path(out).relative_to(exp_dir)) for out, *_ in runs], "hparams": hp.to_dict()}
    total = total_iterations(hp.training, len(splits.train_y), hp.dataset.batch_size)
    with batched_checkpoint(exp_dir, identity, ctx) as resumable:
        results = train_batched([r[2] for r in runs], splits, hp, [r[4] for r in runs], [r[3] for r in runs],
                                ctx.device, start_iteration=start_iteration, **resumable)
        for (out, record, _, masks, _), result in zip(runs, results, strict=True):
            write_run(out, record, masks, result, total)
            report_run(out, result, started, ctx)
    return results


def control_runs_batched(jobs: list[tuple], ctx: Context) -> None:
    """All control runs in `jobs` as one batched computation (fully-connected models; same data)."""
    setups = [prepare_control(*job, ctx) for job in jobs]
    if setups and setups[0].hp.dataset.permute_labels and len({c.run_info["trial"] for c in setups}) > 1:
        raise LotteryError("--batched trains all runs on the same labels; trials with --permute-labels differ")
    todo = []
    for c in setups:
        record = run_record(c.hp, c.run_info)
        check_same_run(c.out, record)
        if not paths.is_complete(c.out):
            todo.append((c, record))
    if not todo:
        return
    first = todo[0][0]
    runs = [(c.out, record, c.model, c.masks, c.order_seed) for c, record in todo]
    train_runs_batched(jobs[0][0], runs, first.splits, first.hp, ctx)


def lottery_batched(exp_dir: str, hp_dict: dict, seed: int, trials: list[int], levels: int, ctx: Context) -> None:
    """Trials 0..T-1 level by level, each level's trials trained as one batched computation.

    The same seeds and files as `lottery_trial` (bitwise on one thread). Resumes like
    `lottery_trial`: complete runs are loaded, an interrupted level continues from the checkpoint
    of its batched computation.
    """
    from lottery_ticket.masking import full_masks

    hp = Hparams.from_dict(hp_dict)
    if hp.dataset.permute_labels:
        raise LotteryError("--batched trains all trials on the same labels; it cannot be combined with --permute-labels")
    seeds = {t: trial_seeds(seed, t) for t in trials}
    splits = load_splits(hp, ctx, None)
    template = new_model(hp, splits, 0)  # the architecture: layer kinds, all-ones masks
    prune_masks = pruner(hp, template)
    masks, reset, final = {}, {}, {}

    def keep(t: int, level: int, result) -> None:
        """What later levels need from trial t's run at `level`."""
        final[t] = result.final
        if level == 0:
            reset[t] = result.rewind

    for level in range(levels + 1):
        todo = []
        for t in trials:
            masks[t] = full_masks(template) if level == 0 else prune_masks(masks[t], final[t])
            out = paths.run_dir(exp_dir, t, level)
            record = run_record(hp, {"trial": t, "level": level, "control": "main", "run_index": 0,
                                     "seeds": seeds[t]})
            check_same_run(out, record)
            if paths.is_complete(out):
                keep(t, level, load_result(out))
            else:
                todo.append((t, new_model(hp, splits, seeds[t]["model"], reset.get(t)), out, record))
        if not todo:
            continue
        runs = [(out, record, model, masks[t], seeds[t]["order"]) for t, model, out, record in todo]
        results = train_runs_batched(exp_dir, runs, splits, hp, ctx,
                                     start_iteration=hp.training.rewind_iteration if level > 0 else 0)
        for (t, *_), result in zip(todo, results, strict=True):
            keep(t, level, result)


def _without_rewind(hp: Hparams) -> Hparams:

    return replace(hp, training=replace(hp.training, rewind_iteration=0))


def experiment_trials(exp_dir: str | Path) -> list[int]:
    found = []
    for p in Path(exp_dir).glob("trial_*"):
        suffix = p.name[len("trial_"):]
        if suffix.isdigit():
            found.append(int(suffix))
    return sorted(found)


def control_jobs(exp_dir: str | Path, control: str, levels: list[int], runs: int) -> list[tuple]:
    if control not in CONTROLS:
        raise LotteryError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
    if not (Path(exp_dir) / paths.EXPERIMENT_FILE).exists():
        raise LotteryError(f"{exp_dir} is not a lottery experiment (no {paths.EXPERIMENT_FILE}); run `lth lottery` first")
    trials = experiment_trials(exp_dir)
    if not trials:
        raise LotteryError(f"{exp_dir} has no trials yet; run `lth lottery` first")
    jobs = []
    for trial in trials:
        available = set(paths.levels_present(exp_dir, trial))
        missing = [lv for lv in levels if lv not in available]
        if missing:
            raise LotteryError(f"trial {trial} of {exp_dir} has no level(s) {missing}; it has {sorted(available)}")
        jobs.extend((str(exp_dir), control, trial, level, r) for level in levels for r in range(runs))
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
    return eval_threads(workers)


def eval_threads(workers: int) -> int:
    """Evaluation threads per run: the cores shared out among the workers (large products scale)."""
    return max(1, (os.cpu_count() or 1) // workers)


def _init_worker(threads: int, datasets: dict) -> None:
    torch.set_num_threads(threads)
    _SHARED_DATASETS.update(datasets)


def run_jobs(fn, jobs: list[tuple], workers: int, threads: int, ctx: Context, share: Hparams | None = None) -> None:
    """Run fn(*job, ctx) for every job: in this process if `workers` is 1, else in a process pool
    whose workers find the dataset of `share` (if given) already loaded, in shared memory."""
    if workers <= 1 or len(jobs) <= 1:
        with torch_threads(threads):
            for job in jobs:
                fn(*job, ctx)
        return
    worker_ctx = replace(ctx, bars=False)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads, shared_datasets(share, ctx) if share else {})) as pool:
        futures = [pool.submit(fn, *job, worker_ctx) for job in jobs]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in futures:
            if future.done() and not future.cancelled() and future.exception() is not None:
                raise future.exception()
