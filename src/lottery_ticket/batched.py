"""Train K independent networks of one architecture as one batched computation: fully-connected
networks here, by hand-written batched matrix products; any other architecture (conv nets, VGG,
ResNet) through torch.func in `batched_func` (`train_batched` picks the engine).

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
* evaluation copies the weights back into each network's own module (`BatchedEngine.models`),
  and the training loop (loop.py, the same as `trainer.train`'s) evaluates and logs each one.

No output directory: the caller writes each network's run files from the returned
`TrainResult`s (runner.lottery_batched, runner.control_runs_batched). Checkpoints of the whole
batched state, and resume from them, are optional (`checkpoint_dir`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from lottery_ticket import loop
from lottery_ticket.errors import LotteryError
from lottery_ticket.fast_mlp import (
    _log_softmax_backward,
    _nll_backward,
    _nll_forward,
    _relu_backward,
)
from lottery_ticket.fast_optim import make_update
from lottery_ticket.hparams import Hparams
from lottery_ticket.loop import Engine, TrainResult
from lottery_ticket.masking import Masks, mask_gradients, prepare_masks
from lottery_ticket.models.fc import FullyConnected
from lottery_ticket.store import state_dict_copy
from lottery_ticket.trainer import make_optimizer, total_iterations


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


class BatchedEngine(Engine):
    """K fully-connected networks of one architecture, stacked (`StackedFC`): one step trains all
    of them, network k on the batch of `order_seeds[k]`. Per network, it does exactly what
    `trainer.SingleEngine` does before the first step (models moved, masks applied to them)."""

    def __init__(self, models: list[nn.Module], splits, hp: Hparams, order_seeds: list[int],
                 masks: list[Masks | None], device: torch.device):
        from lottery_ticket.data.order import TrainingOrder

        widths = _widths(models[0])
        for model in models[1:]:
            if _widths(model) != widths:
                raise LotteryError(f"all models must have the same layer widths; got {widths} and {_widths(model)}")
        if hp.dataset.augment:
            raise LotteryError("batched training does not support --augment")
        k, batch_size = len(models), hp.dataset.batch_size
        layer_names = [name for name, p in models[0].named_parameters() if name.endswith("weight")]
        run_masks = [prepare_masks(model.to(device), mask, device) for model, mask in zip(models, masks, strict=True)]
        self.networks, self.batch_size, self._models = k, batch_size, models
        self.masks = run_masks
        self.train = (splits.train_x.to(device).reshape(len(splits.train_y), -1), splits.train_y.to(device))
        train_x, train_y = self.train
        self.orders = [TrainingOrder(len(train_y), batch_size, seed, device=device) for seed in order_seeds]
        self.module = StackedFC(models)  # on the models' device
        stacked_masks = [
            torch.stack([m.get(name, torch.ones_like(models[0].get_parameter(name))) for m in run_masks])
            for name in layer_names
        ]
        self.optimizer = make_optimizer(self.module, hp.training)
        self._step = make_batched_step(self.module, self.optimizer, stacked_masks)
        self.x = torch.empty(k * batch_size, train_x.shape[1], dtype=train_x.dtype, device=device)
        self.index = torch.empty(k * batch_size, dtype=torch.int64, device=device)
        self.y = torch.empty(k * batch_size, dtype=train_y.dtype, device=device)

    def step(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.cat([order.batch(iteration) for order in self.orders], out=self.index)
        torch.index_select(self.train[0], 0, self.index, out=self.x)
        torch.index_select(self.train[1], 0, self.index, out=self.y)
        k, batch_size = self.networks, self.batch_size
        return self._step(self.x.view(k, batch_size, -1), self.y.view(k, batch_size))

    def models(self) -> list[nn.Module]:
        self.module.copy_into(self._models)
        return self._models


def engine_class(model: nn.Module) -> type[Engine]:
    """The batched engine for networks like `model`: the hand-written stacked step for
    fully-connected networks, torch.func's vmap for every other architecture (`batched_func`)."""
    if type(model) is FullyConnected:
        return BatchedEngine
    from lottery_ticket.batched_func import FuncBatchedEngine

    return FuncBatchedEngine


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
    would (same metric rows: validation/test at every evaluation, train_batch, the final full
    training split; same initial/final/rewind state dicts), bitwise on one thread. Like `train`,
    it applies the masks to the models and leaves them trained.

    With `checkpoint_dir`, the whole batched state (stacked weights, optimizer, metrics so far,
    rewind weights, loop buffers) is saved there at evaluation points every `checkpoint_seconds`,
    and a later call with the same networks resumes from it, bit for bit on the CPU. `identity`
    (JSON-able) names those networks; a checkpoint saved under another identity is refused.
    `stop_after` ends training early at that iteration, leaving a checkpoint (for tests).
    `callbacks` run at every evaluation for each network, as in `train`.
    """
    if not models:
        raise LotteryError("train_batched needs at least one model")
    masks = [None] * len(models) if masks is None else list(masks)
    if not len(models) == len(order_seeds) == len(masks):
        raise LotteryError(f"got {len(models)} models, {len(order_seeds)} order seeds and {len(masks)} masks")
    engine = engine_class(models[0])(models, splits, hp, order_seeds, masks, torch.device(device))
    total = total_iterations(hp.training, len(engine.train[1]), hp.dataset.batch_size)
    loop.check_iterations(hp.training, total, start_iteration)
    initial = [state_dict_copy(model) for model in models]
    return loop.train(engine, splits, hp, initial=initial, total=total, start_iteration=start_iteration,
                      checkpoint_dir=checkpoint_dir, checkpoint_seconds=checkpoint_seconds, identity=identity,
                      stop_after=stop_after, callbacks=callbacks)
