"""One run: train one (masked) network with the training loop (loop.py) and save everything.

One run = `train(...)`. `SingleEngine` steps one network on batches sliced from in-memory tensors
in the seeded training order (the hand-written fully-connected step where it applies, else
autograd); `loop.train` runs the schedule. Given an output directory, `train` writes the run's
files (see docs/architecture.md), checkpoints every few seconds and resumes from its checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lottery_ticket import layout, loop, procs
from lottery_ticket.callbacks import write_rows
from lottery_ticket.checkpoint import has_checkpoint
from lottery_ticket.data.augment import augment_seed
from lottery_ticket.errors import LotteryError
from lottery_ticket.fast_optim import make_update
from lottery_ticket.hparams import Hparams, TrainingHparams
from lottery_ticket.layout.files import (
    TensorBoard,
    check_same_run,
    finish_run_files,
    load_result,
    run_record,
    save_rewind,
    start_run_files,
    write_metrics,
)
from lottery_ticket.lock import RunLock
from lottery_ticket.loop import (  # noqa: F401 -- re-exported: the single-run API's names
    EVAL_BATCH,
    TrainingDiverged,
    TrainResult,
    evaluate,
    learning_rate,
    threads,
)
from lottery_ticket.masking import (
    Masks,
    gradient_mask_pairs,
    mask_gradients,
    mask_optimizer_state,
    prepare_masks,
)
from lottery_ticket.store import load_tensors, state_dict_copy

StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def total_iterations(t: TrainingHparams, num_train: int, batch_size: int) -> int:
    if t.epochs > 0:
        from lottery_ticket.data.order import batches_per_epoch

        return t.epochs * batches_per_epoch(num_train, batch_size)
    return t.iterations


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


class SingleEngine(loop.Engine):
    """One network: batches in its seeded order (augmented if asked), stepped by `make_step`.
    Moves the model to `device` and applies `masks` to it (`self.masks`: the full masks)."""

    networks = 1

    def __init__(self, model: nn.Module, splits, hp: Hparams, order_seed: int, masks: Masks | None,
                 device: torch.device, fast: bool = True):
        from lottery_ticket.data.order import TrainingOrder

        model.to(device)
        self.module = model
        self.masks = prepare_masks(model, masks, device)
        self.train = (splits.train_x.to(device), splits.train_y.to(device))
        train_x, train_y = self.train
        self.order = TrainingOrder(len(train_y), hp.dataset.batch_size, order_seed, device=device)
        self.order_seed = order_seed
        self.augment = None
        if hp.dataset.augment:
            from lottery_ticket.data.augment import augment_batch

            self.augment = augment_batch
        self.optimizer = make_optimizer(model, hp.training)
        self._step = make_step(model, self.optimizer, self.masks, fast=fast)
        self.batch_x = train_x.new_empty((hp.dataset.batch_size, *train_x.shape[1:]))  # reused every step
        self.batch_y = train_y.new_empty((hp.dataset.batch_size,))
        model.train()

    def step(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.order.batch(iteration)
        x = torch.index_select(self.train[0], 0, index, out=self.batch_x)
        y = torch.index_select(self.train[1], 0, index, out=self.batch_y)
        if self.augment is not None:
            x = self.augment(x, seed=augment_seed(self.order_seed, iteration))
        return self._step(x, y)

    def models(self) -> list[nn.Module]:
        return [self.module]


class _RunJournal(loop.Journal):
    """A run directory while the run trains: TensorBoard scalars, the rewind weights, and
    metrics.csv plus the callbacks' files at every checkpoint."""

    def __init__(self, out: Path):
        self.out = out
        self.board = TensorBoard(None, None)

    def start(self, iteration: int, resumed: bool) -> None:
        self.board = TensorBoard(self.out, purge_step=iteration if resumed else None)

    def rows(self, new) -> None:
        self.board.log(new)

    def rewind(self, state) -> None:
        save_rewind(self.out, state)

    def save(self, rows, callback_rows) -> None:
        write_metrics(self.out, rows)
        if callback_rows:
            write_rows(self.out, callback_rows)
        if self.board.writer is not None:
            self.board.writer.flush()

    def where(self) -> str:
        return f" in {self.out / layout.METRICS}"


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
    background_eval: bool = False,
    callbacks: dict[str, Callable] | None = None,
    optimizer_state: dict | None = None,
) -> TrainResult:
    """Train `model` (already initialized/preset) with `masks` and return its weights and metrics.

    With `output_dir`, the run is resumable and its files are written there; a complete run is
    loaded instead of trained again. `stop_after` ends training early at that iteration without
    marking the run complete (used by tests to simulate an interruption). `start_iteration` > 0
    continues the schedule (data order, learning rate) from that iteration: late rewinding.
    `background_eval` (CPU):
    evaluate a snapshot of the weights in a second thread while training goes on (same rows,
    same values; for a run that has a spare core). `callbacks` ({name: callback}, see
    `lottery_ticket.callbacks`) run at every evaluation; their rows go to `<name>.csv` in the run.
    `optimizer_state` (an optimizer state dict, e.g. of a replayed run at `start_iteration`): the
    optimizer starts from it, masked like the weights (weight rewinding); else it starts fresh.
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
                      checkpoint_seconds, fast, stop_after, start_iteration, background_eval, callbacks,
                      optimizer_state)
    finally:
        if lock is not None:
            lock.release()


def _train(model, splits, hp, order_seed, masks, out, record, device, quiet, checkpoint_seconds, fast, stop_after,
           start_iteration, background_eval, callbacks=None, optimizer_state=None):
    engine = SingleEngine(model, splits, hp, order_seed, masks, device, fast)
    if optimizer_state is not None:  # (a checkpoint, if any, replaces it when the loop resumes)
        engine.optimizer.load_state_dict(optimizer_state)
        mask_optimizer_state(engine.optimizer, model, engine.masks)
    total = total_iterations(hp.training, len(engine.train[1]), hp.dataset.batch_size)
    loop.check_iterations(hp.training, total, start_iteration)
    initial = state_dict_copy(model)
    checkpoint_dir = journal = None
    if out is not None:
        checkpoint_dir, journal = out / layout.CHECKPOINT, _RunJournal(out)
        if has_checkpoint(checkpoint_dir):
            initial = load_tensors(out / layout.INITIAL)
        else:
            start_run_files(out, record, engine.masks, initial)
    key = str(out or "train")
    try:
        [result] = loop.train(engine, splits, hp, initial=[initial], total=total, start_iteration=start_iteration,
                              checkpoint_dir=checkpoint_dir, checkpoint_seconds=checkpoint_seconds,
                              stop_after=stop_after, callbacks=callbacks, background_eval=background_eval, journal=journal, key=key, quiet=quiet)
    finally:
        if journal is not None:
            journal.board.close()
    if stop_after is not None and stop_after < total:  # stopped early, resumable
        return result
    if out is not None:
        finish_run_files(out, result.metrics, result.final, total, result.callback_rows)
    procs.progress("done", key, True)
    return result


