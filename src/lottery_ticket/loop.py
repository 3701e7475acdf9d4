"""The training loop, written once for 1 or K networks trained side by side.

`train(engine, ...)` runs the schedule every run shares: the learning rate (warmup, step decay),
an evaluation of validation and test loss/accuracy at the start, every `eval_every` iterations and
at the last one (where the whole training split is evaluated too), the training-batch statistics
of each window between evaluations (`train_batch` rows), evaluation callbacks, the late-rewinding
weights, divergence checks, checkpoints every few seconds and resume from them, stopping on a
signal (`procs.Stopped`), progress events and the progress bar.

What is trained, and how one step is taken, sits behind `Engine`: `trainer.SingleEngine` (one
network, the hand-written fully-connected step or autograd) and `batched.BatchedEngine` (K
fully-connected networks stacked into batched matrix products). A run's files are not written
here: a `Journal` (see trainer.py) receives rows, rewind weights and checkpoint moments.

The hot path has no per-step host synchronization: losses and correct counts go into a device
buffer ([eval_every, K]) that is read once per evaluation. Training and evaluation run with
denormal floats flushed to zero on the CPU (`denormals_flushed`: as the original TensorFlow
library did, ~1.4x faster on Intel CPUs, the same results).
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lottery_ticket import procs
from lottery_ticket.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from lottery_ticket.errors import LotteryError
from lottery_ticket.fast_conv import as_input, eval_rows, folded_batch_norm, input_format
from lottery_ticket.hparams import Hparams, TrainingHparams, check_rewind, milestones
from lottery_ticket.layout.files import TrainResult
from lottery_ticket.store import state_dict_copy

EVAL_BATCH = 1_000  # small enough for conv activations; large enough to amortize overhead

Row = tuple[int, str, float, float]  # (iteration, split, loss, accuracy)


class TrainingDiverged(LotteryError):
    """The training loss became NaN or infinite; the run was stopped with its files kept."""


class Engine:
    """K networks and how to take one training step of all of them.

    `module` and `optimizer` hold the whole trainable state (what a checkpoint saves and loads);
    `train` is the training split (x, y) on the device, as the final evaluation reads it."""

    networks: int
    module: nn.Module
    optimizer: torch.optim.Optimizer
    train: tuple[torch.Tensor, torch.Tensor]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on the batch(es) of `iteration`; (loss, number correct) per network, on the device
        ([K] tensors, or scalars for one network), not synchronized."""
        raise NotImplementedError

    def models(self) -> list[nn.Module]:
        """One module per network holding its current weights (for evaluation and state dicts)."""
        raise NotImplementedError


class Journal:
    """What a one-network run writes while it trains (besides its checkpoint): it gets network 0's
    rows. The default writes nothing (a batched computation's runs are written when it ends)."""

    def start(self, iteration: int, resumed: bool) -> None: ...

    def rows(self, new: list[Row]) -> None: ...

    def rewind(self, state: dict[str, torch.Tensor]) -> None: ...

    def save(self, rows: list[Row], callback_rows: dict[str, list[dict]]) -> None:
        """At a checkpoint (and when training diverged): everything logged so far."""

    def where(self) -> str:
        """Where `save` put the metrics (for the divergence message)."""
        return ""


def lr_schedule(t: TrainingHparams, per_epoch: int | None = None):
    """`learning_rate(iteration)` for the step taken at `iteration` (0-based): warmup, then step
    decay. `per_epoch` (iterations per epoch) converts milestones given in epochs (`80ep`). The
    milestones are resolved here, once per run, not at every step."""
    drops = milestones(t, per_epoch)

    def learning_rate(iteration: int) -> float:
        lr = t.lr
        if t.warmup_iterations > 0 and iteration < t.warmup_iterations:
            lr *= (iteration + 1) / t.warmup_iterations
        passed = sum(1 for m in drops if iteration >= m)
        return lr * (t.lr_gamma**passed)

    return learning_rate


def learning_rate(t: TrainingHparams, iteration: int, per_epoch: int | None = None) -> float:
    """The learning rate for the step taken at `iteration` (see `lr_schedule`)."""
    return lr_schedule(t, per_epoch)(iteration)


def check_iterations(t: TrainingHparams, total: int, start_iteration: int) -> None:
    """Refuse a rewind point or start beyond the schedule (before anything is written)."""
    check_rewind(t, total)  # (here too for --epochs, whose total depends on the dataset, and for library callers)
    if not 0 <= start_iteration < total:
        raise LotteryError(f"start iteration {start_iteration} must be in [0, {total})")


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


def flushing_denormals() -> bool:
    """Whether this thread's CPU arithmetic flushes denormal floats to zero (torch has no getter:
    a denormal times one is zero exactly when the flush is on)."""
    return torch.full((1,), 1e-39).mul_(1.0).item() == 0.0


@contextlib.contextmanager
def denormals_flushed():
    """Flush denormal floats (|x| < 1.2e-38) to zero in this thread's CPU arithmetic while inside,
    then restore the previous mode (the mode is per thread; torch's other threads keep theirs).

    Why: on Intel CPUs every operation on a denormal takes a slow microcode path. In LeNet training
    Adam's first moments of weights whose gradient stays zero (always-black pixels, pruned inputs)
    decay geometrically through the denormal range, up to 8% of them at once: a 50,000-iteration
    `lth train --preset paper` took 79.5 s, 57.9 s flushed. The original library did the same: it
    ran on TensorFlow, which flushes denormals in every CPU kernel (`port::ScopedFlushDenormal`).
    Results are unchanged in practice: a flushed value is below 1.2e-38 and reaches a weight only
    through an update of at most lr * 1.2e-38 / eps (Adam) or lr * 1.2e-38 (SGD), below half an
    ulp of any weight larger than ~1e-23 in magnitude; softmax terms below 1.2e-38 vanish beside
    the 1 of the largest. Measured: that 50,000-iteration run wrote bitwise the same metrics and
    final weights flushed and not; tests/test_denormals.py checks it on runs where denormals occur.
    Dense conv nets too: after 1,000 Adam steps of Conv-2 on CIFAR-10, 15% of the moments were
    denormal when kept (dead units), and losses and weights were bitwise those of the flushed run
    (benchmarks/PROFILE.md, "Denormal floats").
    GPU kernels are not affected (CUDA keeps denormals).
    """
    before = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def evaluation_threads(device: str | torch.device):
    """The torch threads of evaluation work (metrics, evaluation callbacks, batch-norm statistics):
    one on the CPU. On AVX-512 CPUs MKL splits some products (e.g. under ~100 rows, or 784 -> 100)
    differently on 1 and 2 threads, so results would depend on how many workers share the machine;
    a run with a spare core evaluates on it in the background instead (`train(background_eval=)`)."""
    return threads(1 if torch.device(device).type == "cpu" else None)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in large batches (conv nets on the CPU
    in channels-last format with batch norm folded into the convolutions, see `fast_conv`)."""
    return evaluate_splits(model, [(x, y)])[0]


@torch.inference_mode()
def evaluate_splits(model: nn.Module, splits: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[float, float]]:
    """`evaluate` of each (x, y) split in turn, the model prepared for evaluation once for all of
    them (eval mode, memory format, batch norm folded)."""
    if not splits:
        return []
    was_training = model.training
    model.eval()
    device = splits[0][0].device
    memory_format = input_format(model, device)
    rows = eval_rows(memory_format, EVAL_BATCH)
    net = folded_batch_norm(model) if memory_format == torch.channels_last else model
    try:
        with evaluation_threads(device), denormals_flushed():
            return [_split_metrics(net, x, y, memory_format, rows) for x, y in splits]
    finally:
        model.train(was_training)


def _split_metrics(net: nn.Module, x: torch.Tensor, y: torch.Tensor, memory_format: torch.memory_format,
                   rows: int) -> tuple[float, float]:
    if len(y) == 0:
        return math.nan, math.nan
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(y), rows):
        logits = net(as_input(x[start : start + rows], memory_format))
        target = y[start : start + rows]
        loss += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(1) == target).sum()
    return loss.item() / len(y), correct.item() / len(y)


class _Diverged(Exception):
    def __init__(self, iteration: int, network: int):
        self.iteration, self.network = iteration, network


@denormals_flushed()  # the whole loop: steps, evaluations, callbacks (see `denormals_flushed`)
def train(
    engine: Engine,
    splits,
    hp: Hparams,
    *,
    initial: list[dict[str, torch.Tensor]],
    total: int,
    start_iteration: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_seconds: float = 10.0,
    identity: dict | None = None,
    stop_after: int | None = None,
    callbacks: dict | None = None,
    background_eval: bool = False,
    journal: Journal | None = None,
    key: str | None = None,
    quiet: bool = True,
) -> list[TrainResult]:
    """Train the engine's networks from `start_iteration` to `total`; one `TrainResult` each.

    `initial`: each network's state dict before training. With `checkpoint_dir`, the loop state is
    saved there at evaluations every `checkpoint_seconds` and when stopped, and resumed from it;
    `identity` (JSON-able) names the runs, and a checkpoint of other runs is refused. `stop_after`
    ends training early at that iteration (tests). `callbacks` ({name: callback}) run at every
    evaluation, on one thread on the CPU (`evaluation_threads`). `background_eval` (CPU): evaluate
    a snapshot of the weights in a second thread while training goes on (same rows). `key` names
    the run in progress events (none without it) and the progress bar (only when not `quiet`).
    """
    t = hp.training
    k = engine.networks
    journal = journal or Journal()
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    train_x, train_y = engine.train
    device = train_x.device
    validation = (splits.validation_x.to(device), splits.validation_y.to(device))
    test = (splits.test_x.to(device), splits.test_y.to(device))
    batch_size = hp.dataset.batch_size
    per_epoch = len(train_y) // batch_size
    schedule = lr_schedule(t, per_epoch) if t.warmup_iterations or milestones(t, per_epoch) else None
    first = start_iteration

    window_loss = torch.zeros(t.eval_every, k, dtype=torch.float32, device=device)
    window_correct = torch.zeros(t.eval_every, k, dtype=torch.int64, device=device)
    rows: list[list[Row]] = [[] for _ in range(k)]
    rewind = list(initial) if t.rewind_iteration == 0 else [None] * k
    recorders = []  # evaluation callbacks, one recorder per network (called at evaluations only)
    if callbacks:
        from lottery_ticket.callbacks import Recorder

        recorders = [Recorder(callbacks, splits, device)]
        recorders += [Recorder(callbacks, recorders[0].splits, device) for _ in range(k - 1)]

    iteration, window = start_iteration, 0
    resumed = checkpoint_dir is not None and has_checkpoint(checkpoint_dir)
    if resumed:
        iteration, extra, buffers = load_checkpoint(checkpoint_dir, engine.module, engine.optimizer)
        if "rows" not in extra:
            raise LotteryError(f"the checkpoint in {checkpoint_dir} was written by an older version; "
                               "delete it to restart this run")
        if extra["identity"] != identity:
            raise LotteryError(f"the checkpoint in {checkpoint_dir} belongs to other runs; delete it to start over")
        rows = [[tuple(row) for row in network_rows] for network_rows in extra["rows"]]
        window = extra["window"]
        for recorder, state in zip(recorders, extra["callbacks"], strict=False):
            recorder.load(state)
        window_loss.copy_(buffers["window_loss"])
        window_correct.copy_(buffers["window_correct"])
        if t.rewind_iteration > 0 and iteration >= t.rewind_iteration:
            rewind = [{name[len(f"rewind/{n}/"):]: v for name, v in buffers.items() if name.startswith(f"rewind/{n}/")}
                      for n in range(k)]
    resumed_from = iteration
    journal.start(iteration, resumed)

    def evaluations(nets: list[nn.Module], iteration: int, heads: list[list[Row]]) -> list[list[Row]]:
        new = []
        named = [("validation", validation), ("test", test)]
        if iteration == total:
            named.append(("train", (train_x, train_y)))
        for n, net in enumerate(nets):
            net_rows = list(heads[n])
            for (split, (_, y)), (loss, accuracy) in zip(named, evaluate_splits(net, [d for _, d in named]),
                                                         strict=True):
                if split != "train" and len(y) and not math.isfinite(loss):  # the weights blew up in the last step
                    raise _Diverged(iteration, n)
                net_rows.append((iteration, split, loss, accuracy))
            new.append(net_rows)
        return new

    background = None
    pending: list = []
    if background_eval and device.type == "cpu":
        from concurrent.futures import ThreadPoolExecutor

        background = ThreadPoolExecutor(1, thread_name_prefix="evaluate")
        snapshots = [copy.deepcopy(m) for m in engine.models()]

    def finished_evaluations() -> list[list[Row]]:
        """Wait for the background evaluation, if any, and return its rows."""
        done: list[list[Row]] = [[] for _ in range(k)]
        while pending:
            done = [a + b for a, b in zip(done, pending.pop(0).result(), strict=True)]
        return done

    def log_evaluation(iteration: int, window: int) -> list[list[Row]]:
        """The rows of finished evaluations: this one's, or (background) the previous one's."""
        nets = engine.models()
        heads: list[list[Row]] = [[] for _ in range(k)]
        if window > 0:
            losses = window_loss[:window]
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                bad_step, bad_net = (int(v) for v in torch.nonzero(~finite)[0])
                raise _Diverged(iteration - window + bad_step + 1, bad_net)
            mean_loss = losses.double().mean(0).tolist()
            correct = window_correct[:window].sum(0).tolist()
            heads = [[(iteration, "train_batch", mean_loss[n], correct[n] / (window * batch_size))]
                     for n in range(k)]
        done = finished_evaluations()
        with evaluation_threads(device):
            for recorder, net in zip(recorders, nets, strict=False):
                recorder(net, iteration)
        if background is not None and first < iteration < total:
            for snapshot, net in zip(snapshots, nets, strict=True):
                snapshot.load_state_dict(net.state_dict())
            pending.append(background.submit(evaluations, snapshots, iteration, heads))
            return done
        new = evaluations(nets, iteration, heads)
        return [a + b for a, b in zip(done, new, strict=True)]

    def log(new: list[list[Row]]) -> None:
        for network_rows, network_new in zip(rows, new, strict=True):
            network_rows.extend(network_new)
        journal.rows(new[0])

    def save(iteration: int, window: int) -> None:
        log(finished_evaluations())
        buffers = {"window_loss": window_loss, "window_correct": window_correct}
        if t.rewind_iteration > 0 and rewind[0] is not None:
            buffers.update({f"rewind/{n}/{name}": v for n, state in enumerate(rewind) for name, v in state.items()})
        extra = {"identity": identity, "rows": rows, "window": window,
                 "callbacks": [recorder.state() for recorder in recorders]}
        save_checkpoint(checkpoint_dir, engine.module, engine.optimizer, iteration, extra, buffers)
        journal.save(rows[0], recorders[0].state() if recorders else {})

    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=iteration, desc=key or "train", unit="it", dynamic_ncols=True,
                   leave=False, file=sys.stderr, disable=None)  # no bar when stderr is not a terminal

    last_checkpoint = time.monotonic()
    end = total if stop_after is None else min(total, stop_after)
    if key is not None:
        procs.progress("start", key, (iteration, total))
    try:
        if not resumed:
            log(log_evaluation(iteration, 0))
        while iteration < end:
            if procs.stop_requested():  # SIGINT/SIGTERM: checkpoint below, then raise Stopped
                break
            if schedule is not None:
                engine.set_lr(schedule(iteration))
            loss, correct = engine.step(iteration)
            window_loss[window] = loss
            window_correct[window] = correct
            window += 1
            iteration += 1
            if iteration == t.rewind_iteration and t.rewind_iteration > 0:
                rewind = [state_dict_copy(net) for net in engine.models()]
                journal.rewind(rewind[0])
            if iteration % t.eval_every == 0 or iteration == total:
                new = log_evaluation(iteration, window)
                log(new)
                window = 0
                if key is not None:
                    procs.progress("step", key, iteration)
                if bar is not None:
                    bar.update(iteration - bar.n)
                    named = {s: (lo, a) for _, s, lo, a in new[0]}
                    if "validation" in named:  # (background evaluation: none finished yet)
                        bar.set_postfix(loss=f"{named['validation'][0]:.4f}",
                                        test_acc=f"{named['test'][1]:.4f}", refresh=False)
                if (checkpoint_dir is not None and iteration < total
                        and time.monotonic() - last_checkpoint >= checkpoint_seconds):
                    save(iteration, window)
                    last_checkpoint = time.monotonic()
        log(finished_evaluations())  # one still running in the background (stop_after)
    except _Diverged as d:
        journal.save(rows[0], recorders[0].state() if recorders else {})
        message = f"network {d.network}: " if k > 1 else ""
        message += f"training loss became NaN or infinite at iteration {d.iteration}"
        message += f"; metrics up to iteration {rows[0][-1][0] if rows[0] else 0} kept{journal.where()}"
        if checkpoint_dir is not None:
            message += (f"; last good checkpoint in {checkpoint_dir}" if has_checkpoint(checkpoint_dir)
                        else "; no checkpoint was written")
        raise TrainingDiverged(message) from None
    finally:
        if background is not None:
            background.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()

    if iteration < total:  # stopped early (stop_after, or a signal): leave a resumable state
        if checkpoint_dir is not None:
            save(iteration, window)
        if iteration < end:
            raise procs.Stopped(procs.stop_signal())
    return [
        TrainResult(initial[n], state_dict_copy(net), rewind[n], rows[n], resumed_from=resumed_from,
                    callback_rows=recorders[n].state() if recorders else {})
        for n, net in enumerate(engine.models())
    ]
