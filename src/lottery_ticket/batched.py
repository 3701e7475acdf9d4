"""Train K independent fully-connected networks of one architecture as one batched computation.

Each network keeps its own initial weights, masks and data order (order seed); the K weight
matrices of a layer are stacked into one [K, out, in] tensor and every matrix product of the
step becomes one `torch.bmm`/`torch.baddbmm`. This removes K-1 copies of the per-step Python and
dispatch overhead, and lets all cores work on whole matrices (threads split the K networks)
instead of splitting one small matrix product.

The results are those of K separate `trainer.train` runs (bitwise identical on one thread, tested
down to the files `lth lottery --batched` writes; with more threads, bmm may split the sums
differently than mm, so equal to rounding):

* the step runs fast_mlp's kernels (themselves autograd's), batched;
* the optimizer is `trainer.make_optimizer` over per-network views of the stacked tensors (see
  StackedFC), so its fused kernel rounds each network's update as a separate optimizer would;
* masks touch gradients through `masking.mask_gradients`, on (stacked grad, stacked mask) pairs;
* evaluation copies the weights back into each network's own module and calls
  `trainer.evaluate`, so the metric rows are built exactly as `trainer.train` builds them.

No output directory: the caller writes each network's run files from the returned
`TrainResult`s (runner.lottery_batched, runner.control_runs_batched). Checkpoints of the whole
batched state, and resume from them, are optional (`checkpoint_dir`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from lottery_ticket import procs
from lottery_ticket.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from lottery_ticket.errors import LotteryError
from lottery_ticket.fast_mlp import (
    _log_softmax_backward,
    _nll_backward,
    _nll_forward,
    _relu_backward,
)
from lottery_ticket.fast_optim import make_update
from lottery_ticket.hparams import Hparams, check_rewind, milestones
from lottery_ticket.masking import Masks, mask_gradients, prepare_masks
from lottery_ticket.models.fc import FullyConnected
from lottery_ticket.store import state_dict_copy
from lottery_ticket.trainer import (
    TrainingDiverged,
    TrainResult,
    evaluate,
    learning_rate,
    make_optimizer,
    total_iterations,
)


class StackedFC(nn.Module):
    """The layers of K same-shaped `FullyConnected` networks, stacked along a leading K axis:
    `weights[l]` is [K, out, in], `biases[l]` is [K, out], and `weight_grads`/`bias_grads` hold
    their gradients. The matrix products work on the stacks; the parameters the optimizer sees
    are per-network views of them (network k's tensors, aliasing slice k of each stack, with
    slice k of the gradient stacks as `.grad`). A fused optimizer thus updates each network's
    tensors exactly as K separate optimizers would -- it vectorizes each tensor with its own
    tail, so one stacked tensor would round some elements differently -- and the K networks
    stay bitwise equal to K separate runs on one thread.

    Built on the models' device; do not move it with `.to()` (that would break the aliasing)."""

    def __init__(self, models: list[FullyConnected]):
        super().__init__()
        layers = [m.linears() for m in models]
        count = len(layers[0])

        def stack(tensors) -> torch.Tensor:
            return torch.stack([t.detach() for t in tensors]).contiguous()

        self.weights = [stack(ls[i].weight for ls in layers) for i in range(count)]
        self.biases = [stack(ls[i].bias for ls in layers) for i in range(count)]
        self.weight_grads = [torch.zeros_like(w) for w in self.weights]
        self.bias_grads = [torch.zeros_like(b) for b in self.biases]
        self.networks = nn.ParameterList()
        self._grads: list[torch.Tensor] = []
        for k in range(len(models)):
            for i in range(count):
                for stacked, grads in ((self.weights[i], self.weight_grads[i]), (self.biases[i], self.bias_grads[i])):
                    self.networks.append(nn.Parameter(stacked[k]))  # shares the stack's memory
                    self._grads.append(grads[k])
        self.attach_grads()

    def attach_grads(self) -> None:
        """Point every per-network parameter's `.grad` at its slice of the gradient stacks (again
        after something set them to None, e.g. `optimizer.zero_grad()`)."""
        for p, grad in zip(self.networks, self._grads, strict=True):
            if p.grad is None or p.grad.data_ptr() != grad.data_ptr():
                p.grad = grad

    @torch.no_grad()
    def copy_into(self, models: list[FullyConnected]) -> None:
        """Write network k's slice of every stacked tensor into `models[k]`'s own parameters."""
        for k, model in enumerate(models):
            for layer, w, b in zip(model.linears(), self.weights, self.biases, strict=True):
                layer.weight.copy_(w[k])
                layer.bias.copy_(b[k])


def _widths(model: nn.Module) -> list[int]:
    if type(model) is not FullyConnected:
        raise LotteryError(f"batched training supports fully-connected models only, not {type(model).__name__}")
    layers = model.linears()
    if any(layer.bias is None for layer in layers):
        raise LotteryError("batched training needs every Linear layer to have a bias")
    return [layers[0].in_features] + [layer.out_features for layer in layers]


def make_batched_step(stacked: StackedFC, optimizer: torch.optim.Optimizer, masks: list[torch.Tensor]):
    """`step(x [K, B, in], y [K, B]) -> (loss [K], correct [K])`: fast_mlp's step for K networks.

    `masks[l]` is the stacked [K, out, in] mask of layer l's weights."""
    weights, biases = stacked.weights, stacked.biases
    buffers: dict[tuple[int, int], dict] = {}
    update = make_update(optimizer)

    @torch.no_grad()
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, batch = y.shape
        b = buffers.get((k, batch))
        if b is None:
            b = buffers[(k, batch)] = {
                "hidden": [x.new_empty(k, batch, w.shape[1]) for w in weights[:-1]],
                "logits": x.new_empty(k, batch, weights[-1].shape[1]),
                "grads": [x.new_empty(k, batch, w.shape[1]) for w in weights[:-1]],
                "row_grad": x.new_full((k * batch,), 1.0 / batch),
                "one": x.new_ones(()),
            }
        h = x.reshape(k, batch, -1)
        inputs = [h]
        for W, bias, out in zip(weights[:-1], biases[:-1], b["hidden"], strict=True):
            h = torch.relu_(torch.baddbmm(bias.unsqueeze(1), h, W.transpose(1, 2), out=out))
            inputs.append(h)
        logits = torch.baddbmm(biases[-1].unsqueeze(1), h, weights[-1].transpose(1, 2), out=b["logits"])

        # Per network, the kernels autograd runs for F.cross_entropy (as fast_mlp does): the loss
        # with a mean nll_loss per network; the gradient with reduction "none" and d loss / d
        # row = 1 / batch, which is the mean reduction's -1 / total_weight at the target.
        log_probs = torch.log_softmax(logits, 2)
        loss = torch.stack([_nll_forward(log_probs[n], y[n], None, 1, -100)[0] for n in range(k)])
        correct = (logits.argmax(2) == y).sum(1)
        flat = log_probs.view(k * batch, -1)
        g = _nll_backward(b["row_grad"], flat, y.reshape(-1), None, 0, -100, b["one"])
        g = _log_softmax_backward(g, flat, 1, torch.float32).view(k, batch, -1)

        for i in range(len(weights) - 1, -1, -1):
            torch.bmm(g.transpose(1, 2), inputs[i], out=stacked.weight_grads[i])
            torch.sum(g, 1, out=stacked.bias_grads[i])
            if i == 0:
                break
            gh = torch.bmm(g, weights[i], out=b["grads"][i - 1])
            g = _relu_backward(gh, inputs[i], 0, grad_input=gh)
        mask_gradients(zip(stacked.weight_grads, masks, strict=True))
        stacked.attach_grads()
        update()
        return loss, correct

    return step


def train_batched(
    models: list[nn.Module],
    splits,
    hp: Hparams,
    order_seeds: list[int],
    masks: list[Masks | None] | None = None,
    device: str | torch.device = "cpu",
    start_iteration: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_seconds: float = 10.0,
    identity: dict | None = None,
    stop_after: int | None = None,
    callbacks: dict | None = None,
) -> list[TrainResult]:
    """Train `models[k]` with `masks[k]` on the data order of `order_seeds[k]`, all at once.

    Returns one `TrainResult` per network, as `trainer.train(models[k], splits, hp,
    order_seed=order_seeds[k], masks=masks[k], device=device, start_iteration=start_iteration)`
    would (same metric rows: validation/test every `eval_every`, train_batch, the final full
    training split; same initial/final/rewind state dicts), bitwise on one thread. Like `train`,
    it applies the masks to the models and leaves them trained.

    With `checkpoint_dir`, the whole batched state (stacked weights, optimizer, metrics so far,
    rewind weights, loop buffers) is saved there at evaluation points every `checkpoint_seconds`,
    and a later call with the same networks resumes from it, bit for bit on the CPU. `identity`
    (JSON-able) names those networks; a checkpoint saved under another identity is refused.
    `stop_after` ends training early at that iteration, leaving a checkpoint (for tests).
    `callbacks` run at every evaluation for each network, as in `train`.
    """
    from lottery_ticket.data.order import TrainingOrder

    if not models:
        raise LotteryError("train_batched needs at least one model")
    masks = [None] * len(models) if masks is None else list(masks)
    if not len(models) == len(order_seeds) == len(masks):
        raise LotteryError(f"got {len(models)} models, {len(order_seeds)} order seeds and {len(masks)} masks")
    widths = _widths(models[0])
    for model in models[1:]:
        if _widths(model) != widths:
            raise LotteryError(f"all models must have the same layer widths; got {widths} and {_widths(model)}")
    if hp.dataset.augment:
        raise LotteryError("batched training does not support --augment")
    t = hp.training
    device = torch.device(device)
    batch_size = hp.dataset.batch_size
    k = len(models)

    # Per network, exactly what trainer.train does before its first step.
    layer_names = [name for name, p in models[0].named_parameters() if name.endswith("weight")]
    run_masks = [prepare_masks(model.to(device), mask, device) for model, mask in zip(models, masks, strict=True)]
    initial = [state_dict_copy(model) for model in models]
    rewind = list(initial) if t.rewind_iteration == 0 else [None] * k

    train_x = splits.train_x.to(device).reshape(len(splits.train_y), -1)
    train_y = splits.train_y.to(device)
    validation = (splits.validation_x.to(device), splits.validation_y.to(device))
    test = (splits.test_x.to(device), splits.test_y.to(device))
    total = total_iterations(t, len(train_y), batch_size)
    check_rewind(t, total)  # (here too for --epochs, and for library callers)
    if not 0 <= start_iteration < total:
        raise LotteryError(f"start iteration {start_iteration} must be in [0, {total})")
    orders = [TrainingOrder(len(train_y), batch_size, seed, device=device) for seed in order_seeds]

    stacked = StackedFC(models)  # on the models' device
    stacked_masks = [
        torch.stack([m.get(name, torch.ones_like(models[0].get_parameter(name))) for m in run_masks])
        for name in layer_names
    ]
    optimizer = make_optimizer(stacked, t)
    step = make_batched_step(stacked, optimizer, stacked_masks)

    per_epoch = len(train_y) // batch_size
    schedule = bool(t.warmup_iterations or milestones(t, per_epoch))
    window_loss = torch.zeros(t.eval_every, k, dtype=torch.float32, device=device)
    window_correct = torch.zeros(t.eval_every, k, dtype=torch.int64, device=device)
    x = torch.empty(k * batch_size, train_x.shape[1], dtype=train_x.dtype, device=device)
    index = torch.empty(k * batch_size, dtype=torch.int64, device=device)
    y = torch.empty(k * batch_size, dtype=train_y.dtype, device=device)
    rows: list[list[tuple[int, str, float, float]]] = [[] for _ in range(k)]
    recorders = []  # evaluation callbacks, one recorder per network (called at evaluations only)
    if callbacks:
        from lottery_ticket.callbacks import Recorder

        recorders = [Recorder(callbacks, splits, device)]
        recorders += [Recorder(callbacks, recorders[0].splits, device) for _ in range(k - 1)]

    def log_evaluation(iteration: int, window: int) -> None:
        stacked.copy_into(models)
        if window > 0:
            losses = window_loss[:window]
            finite = torch.isfinite(losses)
            if not bool(finite.all()):
                bad_step, bad_net = (int(v) for v in torch.nonzero(~finite)[0])
                raise TrainingDiverged(
                    f"network {bad_net}: training loss became NaN or infinite at iteration "
                    f"{iteration - window + bad_step + 1}"
                )
            batch_loss = losses.double().mean(0).tolist()
            batch_accuracy = (window_correct[:window].sum(0).double() / (window * batch_size)).tolist()
        for n, model in enumerate(models):
            if window > 0:
                rows[n].append((iteration, "train_batch", batch_loss[n], batch_accuracy[n]))
            for split, (sx, sy) in (("validation", validation), ("test", test)):
                loss, accuracy = evaluate(model, sx, sy)
                if len(sy) and not math.isfinite(loss):  # the weights themselves blew up
                    raise TrainingDiverged(f"network {n}: evaluation loss became NaN or infinite at "
                                           f"iteration {iteration}")
                rows[n].append((iteration, split, loss, accuracy))
            if iteration == total:
                rows[n].append((iteration, "train", *evaluate(model, train_x, train_y)))
            if recorders:
                recorders[n](model, iteration)

    def save(iteration: int, window: int) -> None:
        buffers = {"window_loss": window_loss, "window_correct": window_correct}
        if t.rewind_iteration > 0 and rewind[0] is not None:
            buffers.update({f"rewind/{n}/{name}": v for n, state in enumerate(rewind) for name, v in state.items()})
        extra = {"identity": identity, "rows": rows, "window": window}
        if recorders:
            extra["callbacks"] = [recorder.state() for recorder in recorders]
        save_checkpoint(checkpoint_dir, stacked, optimizer, iteration, extra, buffers)

    iteration, window = start_iteration, 0
    if checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        iteration, extra, buffers = load_checkpoint(checkpoint_dir, stacked, optimizer)
        if extra["identity"] != identity:
            raise LotteryError(f"the checkpoint in {checkpoint_dir} belongs to other runs; delete it to start over")
        rows = [[tuple(row) for row in network_rows] for network_rows in extra["rows"]]
        window = extra["window"]
        for recorder, state in zip(recorders, extra.get("callbacks", []), strict=False):
            recorder.load(state)
        window_loss.copy_(buffers["window_loss"])
        window_correct.copy_(buffers["window_correct"])
        if t.rewind_iteration > 0 and iteration >= t.rewind_iteration:
            rewind = [{name[len(f"rewind/{n}/"):]: v for name, v in buffers.items() if name.startswith(f"rewind/{n}/")}
                      for n in range(k)]
    else:
        log_evaluation(start_iteration, 0)
    resumed_from = iteration
    last_checkpoint = time.monotonic()
    end = total if stop_after is None else min(total, stop_after)
    while iteration < end:
        if procs.stop_requested():  # SIGINT/SIGTERM: checkpoint below, then raise Stopped
            break
        if schedule:
            lr = learning_rate(t, iteration, per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
        torch.cat([order.batch(iteration) for order in orders], out=index)
        torch.index_select(train_x, 0, index, out=x)
        torch.index_select(train_y, 0, index, out=y)
        loss, correct = step(x.view(k, batch_size, -1), y.view(k, batch_size))
        window_loss[window] = loss
        window_correct[window] = correct
        window += 1
        iteration += 1
        if iteration == t.rewind_iteration and t.rewind_iteration > 0:
            stacked.copy_into(models)
            rewind = [state_dict_copy(model) for model in models]
        if iteration % t.eval_every == 0 or iteration == total:
            log_evaluation(iteration, window)
            window = 0
            if (checkpoint_dir is not None and iteration < total
                    and time.monotonic() - last_checkpoint >= checkpoint_seconds):
                save(iteration, window)
                last_checkpoint = time.monotonic()

    if iteration < total and checkpoint_dir is not None:  # stopped early (stop_after, or a signal)
        save(iteration, window)
    if iteration < end:
        raise procs.Stopped(procs.stop_signal())
    stacked.copy_into(models)
    return [
        TrainResult(initial[n], state_dict_copy(models[n]), rewind[n], rows[n], resumed_from,
                    recorders[n].state() if recorders else {})
        for n in range(k)
    ]

