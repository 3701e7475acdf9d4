"""The training loop: train one (masked) network, evaluate on a schedule, save everything.

One run = `train(...)`. It trains for a number of iterations (or epochs) on batches sliced from
in-memory tensors in the seeded training order, evaluates validation and test loss/accuracy every
`eval_every` iterations (and at 0 and the last), and, given an output directory, writes the run's
files (see docs/architecture.md), checkpoints every few seconds and resumes from its checkpoint.

The hot path has no per-step host synchronization: losses and correct counts go into a device
buffer that is read once per evaluation.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lottery_ticket import layout, procs
from lottery_ticket.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from lottery_ticket.errors import LotteryError
from lottery_ticket.fast_optim import make_update
from lottery_ticket.hparams import Hparams, TrainingHparams, check_rewind, milestones
from lottery_ticket.layout.files import (
    TensorBoard,
    TrainResult,
    check_same_run,
    finish_run_files,
    load_result,
    run_record,
    save_rewind,
    start_run_files,
    write_metrics,
)
from lottery_ticket.lock import RunLock
from lottery_ticket.masking import Masks, gradient_mask_pairs, mask_gradients, prepare_masks
from lottery_ticket.store import load_tensors, state_dict_copy

EVAL_BATCH = 1_000  # small enough for conv activations; large enough to amortize overhead

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TrainingDiverged(LotteryError):
    """The training loss became NaN or infinite; the run was stopped with its files kept."""


def total_iterations(t: TrainingHparams, num_train: int, batch_size: int) -> int:
    if t.epochs > 0:
        from lottery_ticket.data.order import batches_per_epoch

        return t.epochs * batches_per_epoch(num_train, batch_size)
    return t.iterations


def learning_rate(t: TrainingHparams, iteration: int, per_epoch: int | None = None) -> float:
    """The learning rate for the step taken at `iteration` (0-based): warmup, then step decay.
    `per_epoch` (iterations per epoch) converts milestones given in epochs (`80ep`)."""
    lr = t.lr
    if t.warmup_iterations > 0 and iteration < t.warmup_iterations:
        lr *= (iteration + 1) / t.warmup_iterations
    passed = sum(1 for m in milestones(t, per_epoch) if iteration >= m)
    return lr * (t.lr_gamma**passed)


def make_optimizer(model: nn.Module, t: TrainingHparams) -> torch.optim.Optimizer:
    params = list(model.parameters())
    # One fused kernel per step on CPU and CUDA (2.6x faster than foreach for LeNet on CPU, see
    # benchmarks/PROFILE.md); same state dict, so checkpoints work with either.
    kind = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in params) else {"foreach": True}
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, **kind)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **kind)
    raise LotteryError(f"unknown optimizer {t.optimizer!r}")


def autograd_step(model: nn.Module, optimizer: torch.optim.Optimizer, masks: Masks) -> StepFn:
    """One training step for any model: forward, backward, mask gradients, optimizer update."""
    pairs = gradient_mask_pairs(model, masks)
    grad_pairs: list = []
    update = make_update(optimizer)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad(set_to_none=False)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        if not grad_pairs:
            grad_pairs.extend((p.grad, m) for p, m in pairs)
        mask_gradients(grad_pairs)
        update()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    return step


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, masks: Masks, fast: bool = True) -> StepFn:
    """The fastest correct step for `model`: the hand-written fully-connected path where it applies."""
    if fast:
        from lottery_ticket import fast_mlp

        if fast_mlp.supports(model, optimizer):
            return fast_mlp.make_step(model, optimizer, masks)
    return autograd_step(model, optimizer, masks)


@contextlib.contextmanager
def threads(count: int | None):
    """Temporarily use `count` torch threads (None: leave as is)."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in large batches."""
    if len(y) == 0:
        return math.nan, math.nan
    was_training = model.training
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(y), EVAL_BATCH):
        logits = model(x[start : start + EVAL_BATCH])
        target = y[start : start + EVAL_BATCH]
        loss += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(1) == target).sum()
    model.train(was_training)
    return loss.item() / len(y), correct.item() / len(y)


def train(
    model: nn.Module,
    splits,
    hp: Hparams,
    *,
    order_seed: int,
    masks: Masks | None = None,
    output_dir: str | Path | None = None,
    run_info: dict | None = None,
    device: str | torch.device = "cpu",
    quiet: bool = True,
    checkpoint_seconds: float = 10.0,
    fast: bool = True,
    stop_after: int | None = None,
    start_iteration: int = 0,
    eval_threads: int | None = None,
    background_eval: bool = False,
    callbacks: dict[str, Callable] | None = None,
) -> TrainResult:
    """Train `model` (already initialized/preset) with `masks` and return its weights and metrics.

    With `output_dir`, the run is resumable and its files are written there; a complete run is
    loaded instead of trained again. `stop_after` ends training early at that iteration without
    marking the run complete (used by tests to simulate an interruption). `start_iteration` > 0
    continues the schedule (data order, learning rate) from that iteration: late rewinding.
    `eval_threads` (CPU): torch threads for evaluation, whose large matrix products use more
    cores well, while small training steps are fastest on one thread. `background_eval` (CPU):
    evaluate a snapshot of the weights in a second thread while training goes on (same rows,
    same values; for a run that has a spare core). `callbacks` ({name: callback}, see
    `lottery_ticket.callbacks`) run at every evaluation; their rows go to `<name>.csv` in the run.
    """
    out = Path(output_dir) if output_dir is not None else None
    record = run_record(hp, run_info or {})
    if out is not None:
        check_same_run(out, record)
        if layout.is_complete(out):
            procs.progress("done", str(out), False)
            return load_result(out)
        procs.check_stop()  # (asked to stop between runs: start no new one)
        lock = RunLock(out)
        lock.acquire()
    else:
        lock = None
    try:
        return _train(model, splits, hp, order_seed, masks, out, record, torch.device(device), quiet,
                      checkpoint_seconds, fast, stop_after, start_iteration, eval_threads,
                      background_eval, callbacks)
    finally:
        if lock is not None:
            lock.release()


def _train(model, splits, hp, order_seed, masks, out, record, device, quiet, checkpoint_seconds, fast, stop_after,
           start_iteration, eval_threads, background_eval, callbacks=None):
    from lottery_ticket.data.order import TrainingOrder

    t = hp.training
    model.to(device)
    masks = prepare_masks(model, masks, device)

    train_x, train_y = splits.train_x.to(device), splits.train_y.to(device)
    validation = (splits.validation_x.to(device), splits.validation_y.to(device))
    test = (splits.test_x.to(device), splits.test_y.to(device))
    total = total_iterations(t, len(train_y), hp.dataset.batch_size)
    check_rewind(t, total)  # (here too for --epochs, and for library callers)
    order = TrainingOrder(len(train_y), hp.dataset.batch_size, order_seed, device=device)
    augment = None
    if hp.dataset.augment:
        from lottery_ticket.data import augment_batch

        augment = augment_batch

    optimizer = make_optimizer(model, t)
    step = make_step(model, optimizer, masks, fast=fast)

    initial = state_dict_copy(model)
    rewind = initial if t.rewind_iteration == 0 else None
    rows: list[tuple[int, str, float, float]] = []
    start = first = start_iteration
    if not 0 <= start_iteration < total:
        raise LotteryError(f"start iteration {start_iteration} must be in [0, {total})")
    checkpoint_dir = out / layout.CHECKPOINT if out is not None else None
    recorder = None  # evaluation callbacks: called at evaluations only, never per step
    if callbacks:
        from lottery_ticket.callbacks import Recorder

        recorder = Recorder(callbacks, splits, device)
    if out is not None:
        if has_checkpoint(checkpoint_dir):
            start, extra, loop_buffers = load_checkpoint(checkpoint_dir, model, optimizer)
            rows = [tuple(r) for r in extra["metrics"]]
            if recorder is not None:
                recorder.load(extra.get("callbacks", {}))
            initial = load_tensors(out / layout.INITIAL)
            if t.rewind_iteration > 0 and (out / layout.REWIND).exists():
                rewind = load_tensors(out / layout.REWIND)
        else:
            start_run_files(out, record, masks, initial)
    tensorboard = TensorBoard(out, purge_step=start if start > first else None)

    per_epoch = len(train_y) // hp.dataset.batch_size
    schedule = bool(t.warmup_iterations or milestones(t, per_epoch))
    window_loss = torch.zeros(t.eval_every, dtype=torch.float32, device=device)
    window_correct = torch.zeros(t.eval_every, dtype=torch.int64, device=device)
    if start > first:  # resumed: the training-batch statistics since the last evaluation
        window_loss.copy_(loop_buffers["window_loss"])
        window_correct.copy_(loop_buffers["window_correct"])
    batch_size = hp.dataset.batch_size
    batch_x = train_x.new_empty((batch_size, *train_x.shape[1:]))  # reused every step
    batch_y = train_y.new_empty((batch_size,))

    def log_evaluation(iteration: int, window: int) -> list:
        """The rows of finished evaluations: this one's, or (background) the previous one's."""
        head = []
        if window > 0:
            losses = window_loss[:window]
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                bad = iteration - window + int(torch.nonzero(~finite)[0].item()) + 1
                raise _Diverged(bad)
            head.append((iteration, "train_batch", losses.double().mean().item(),
                         window_correct[:window].sum().item() / (window * batch_size)))
        done = finished_evaluations()
        if recorder is not None:
            with threads(eval_threads):
                recorder(model, iteration)
        if background is not None and first < iteration < total:
            snapshot.load_state_dict(model.state_dict())
            pending.append(background.submit(evaluations, snapshot, iteration, head))
            return done
        with threads(eval_threads):
            return done + evaluations(model, iteration, head)

    def evaluations(net: nn.Module, iteration: int, head: list) -> list:
        new = list(head)
        for split, (x, y) in (("validation", validation), ("test", test)):
            loss, accuracy = evaluate(net, x, y)
            if len(y) and not math.isfinite(loss):  # the weights themselves blew up in the last step
                raise _Diverged(iteration)
            new.append((iteration, split, loss, accuracy))
        if iteration == total:
            loss, accuracy = evaluate(net, train_x, train_y)
            new.append((iteration, "train", loss, accuracy))
        return new

    def finished_evaluations() -> list:
        """Wait for the background evaluation, if any, and return its rows."""
        done = []
        while pending:
            done.extend(pending.pop(0).result())
        return done

    background = snapshot = None
    pending: list = []
    if background_eval and device.type == "cpu":
        import copy
        from concurrent.futures import ThreadPoolExecutor

        background, snapshot = ThreadPoolExecutor(1, thread_name_prefix="evaluate"), copy.deepcopy(model)

    def log_rows(new: list) -> None:
        rows.extend(new)
        tensorboard.log(new)

    def write_progress(iteration: int) -> None:
        if out is None:
            return
        log_rows(finished_evaluations())
        extra = {"metrics": rows} if recorder is None else {"metrics": rows, "callbacks": recorder.state()}
        save_checkpoint(checkpoint_dir, model, optimizer, iteration, extra,
                        {"window_loss": window_loss, "window_correct": window_correct})
        write_metrics(out, rows)
        if recorder is not None:
            recorder.write(out)
        if tensorboard.writer is not None:
            tensorboard.writer.flush()

    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start, desc=str(out or "train"), unit="it", dynamic_ncols=True,
                   leave=False, file=sys.stderr, disable=None)  # no bar when stderr is not a terminal

    model.train()
    last_checkpoint = time.monotonic()
    # batches trained since the last evaluation (evaluations fall on multiples of eval_every)
    iteration, window = start, start - max(first, start - start % t.eval_every)
    end = total if stop_after is None else min(total, stop_after)
    key = str(out or "train")
    procs.progress("start", key, (start, total))
    try:
        if start == first:
            log_rows(log_evaluation(start, 0))
        while iteration < end:
            if procs.stop_requested():  # SIGINT/SIGTERM: checkpoint below, then raise Stopped
                break
            if schedule:
                lr = learning_rate(t, iteration, per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            index = order.batch(iteration)
            x = torch.index_select(train_x, 0, index, out=batch_x)
            y = torch.index_select(train_y, 0, index, out=batch_y)
            if augment is not None:
                # modulo 2**64: torch.Generator seeds are 64-bit, the runner's order seeds 63-bit
                x = augment(x, seed=(order_seed * 1_000_003 + iteration) % 2**64)
            loss, correct = step(x, y)
            window_loss[window] = loss
            window_correct[window] = correct
            window += 1
            iteration += 1
            if iteration == t.rewind_iteration and t.rewind_iteration > 0:
                rewind = state_dict_copy(model)
                if out is not None:
                    save_rewind(out, rewind)
            if iteration % t.eval_every == 0 or iteration == total:
                new = log_evaluation(iteration, window)
                log_rows(new)
                window = 0
                procs.progress("step", key, iteration)
                if bar is not None:
                    bar.update(iteration - bar.n)
                    named = {s: (lo, a) for _, s, lo, a in new}
                    if "validation" in named:  # (background evaluation: none finished yet)
                        bar.set_postfix(loss=f"{named['validation'][0]:.4f}",
                                        test_acc=f"{named['test'][1]:.4f}", refresh=False)
                if out is not None and time.monotonic() - last_checkpoint >= checkpoint_seconds and iteration < total:
                    write_progress(iteration)
                    last_checkpoint = time.monotonic()
        log_rows(finished_evaluations())  # one still running in the background (stop_after)
    except _Diverged as d:
        where = "no checkpoint was written"
        if checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
            where = f"last good checkpoint in {checkpoint_dir}"
        if out is not None:
            write_metrics(out, rows)
            if recorder is not None:
                recorder.write(out)
        raise TrainingDiverged(
            f"training loss became NaN or infinite at iteration {d.iteration}; "
            f"metrics up to iteration {rows[-1][0] if rows else 0} kept"
            + (f" in {out / layout.METRICS}" if out is not None else "") + f"; {where}"
        ) from None
    finally:
        if background is not None:
            background.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        tensorboard.close()

    final = state_dict_copy(model)
    callback_rows = recorder.state() if recorder is not None else {}
    if iteration < total:  # stopped early (stop_after, or a signal): leave a resumable state
        write_progress(iteration)
        if iteration < end:
            raise procs.Stopped(procs.stop_signal())
        return TrainResult(initial, final, rewind, rows, start, callback_rows)
    if out is not None:
        if recorder is not None:
            recorder.write(out)  # before finish_run_files, which marks the run complete
        finish_run_files(out, rows, final, total)
    procs.progress("done", key, True)
    return TrainResult(initial, final, rewind, rows, start, callback_rows)


class _Diverged(Exception):
    def __init__(self, iteration: int):
        self.iteration = iteration
