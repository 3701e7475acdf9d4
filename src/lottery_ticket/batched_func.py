"""Train K networks of any one architecture (conv nets, VGG, ResNet) as one batched computation.

The fully-connected networks have their own hand-written batched step (`batched.StackedFC`);
every other architecture is batched here with torch.func: each parameter and buffer of the K
networks is stacked along a leading K axis, and `vmap(grad(loss))` over the stacks runs the K
forward and backward passes as one computation (vmap turns K convolutions into one grouped
convolution and K matrix products into one batched product), the approach of the torch.func
"model ensembling" recipe (`stack_module_state` + `functional_call` + `vmap`). The point is the
GPU: K small networks fill it as one large one; on a CPU it is no faster than K runs.

Per network it does what `trainer.SingleEngine` with the autograd step does: the batch of its own
order seed (augmented with its own seed, `data.augment_batches`), cross-entropy loss, gradients
multiplied by its masks (`masking.mask_gradients`), the optimizer of `trainer.make_optimizer`
over per-network views of the stacks (so its fused kernel rounds each network as a separate
optimizer would, as in `StackedFC`), batch norm running statistics updated in the stacked
buffers. Results equal K separate runs to float rounding, not bitwise: the grouped convolution
and the batched matrix products sum in another order than the one-network kernels (about 1e-7
relative on a step's gradients; tested in tests/test_batched_func.py). Dropout is refused (vmap
would draw other random numbers than K separate runs).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from lottery_ticket.errors import LotteryError
from lottery_ticket.fast_optim import make_update
from lottery_ticket.hparams import Hparams
from lottery_ticket.loop import Engine
from lottery_ticket.masking import Masks, mask_gradients, prepare_masks


def check_supported(model: nn.Module) -> None:
    """Refuse what the batched step cannot train like K separate runs (LotteryError)."""
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        raise LotteryError("--batched does not support --dropout (the K networks would draw other random "
                           "numbers than K separate runs)")


class StackedModule(nn.Module):
    """The parameters and buffers of K same-shaped networks, stacked along a leading K axis
    (`params[name]` [K, ...], `buffers[name]` [K, ...], `grads[name]` the gradient stacks). The
    optimizer's parameters, and what a checkpoint saves, are per-network views aliasing slice k
    of each stack (`networks`, with slice k of the gradient stacks as `.grad`); buffers are
    registered whole. Built on the models' device; do not move it with `.to()`."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        names = [name for name, _ in models[0].named_parameters()]
        self.params = {n: torch.stack([m.get_parameter(n).detach() for m in models]).contiguous() for n in names}
        self.grads = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.buffers = {}
        for i, (name, _) in enumerate(models[0].named_buffers()):
            self.buffers[name] = torch.stack([m.get_buffer(name).detach() for m in models]).contiguous()
            self.register_buffer(f"buffer_{i}", self.buffers[name])
        self.networks = nn.ParameterList()
        self._grads: list[torch.Tensor] = []
        for k in range(len(models)):
            for name in names:
                self.networks.append(nn.Parameter(self.params[name][k]))  # shares the stack's memory
                self._grads.append(self.grads[name][k])
        self.attach_grads()

    def attach_grads(self) -> None:
        """Point every per-network parameter's `.grad` at its slice of the gradient stacks."""
        for p, grad in zip(self.networks, self._grads, strict=True):
            if p.grad is None or p.grad.data_ptr() != grad.data_ptr():
                p.grad = grad

    @torch.no_grad()
    def copy_into(self, models: list[nn.Module]) -> None:
        """Write network k's slice of every stacked tensor into `models[k]`'s own tensors."""
        for k, model in enumerate(models):
            for name, stacked in self.params.items():
                model.get_parameter(name).copy_(stacked[k])
            for name, stacked in self.buffers.items():
                model.get_buffer(name).copy_(stacked[k])


def make_func_step(template: nn.Module, stacked: StackedModule, optimizer: torch.optim.Optimizer,
                   masks: dict[str, torch.Tensor]):
    """`step(x [K, B, ...], y [K, B]) -> (loss [K], correct [K])`: forward, backward, masked
    gradients and the optimizer update for all K networks. `masks[name]` is a stacked [K, ...] mask."""
    from torch.func import functional_call, grad, vmap

    def loss_and_stats(params, buffers, x, y):
        logits = functional_call(template, (params, buffers), (x,))
        loss = F.cross_entropy(logits, y)
        return loss, (loss.detach(), (logits.argmax(1) == y).sum())

    batched_grad = vmap(grad(loss_and_stats, has_aux=True))
    update = make_update(optimizer)
    pairs = [(stacked.grads[name], mask) for name, mask in masks.items()]

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grads, (loss, correct) = batched_grad(stacked.params, stacked.buffers, x, y)
        with torch.no_grad():
            for name, g in grads.items():
                stacked.grads[name].copy_(g)
            mask_gradients(pairs)
        stacked.attach_grads()
        update()
        return loss, correct

    return step


class FuncBatchedEngine(Engine):
    """K networks of one architecture, stacked (`StackedModule`) and stepped together by
    `make_func_step`: network k on the batch of `order_seeds[k]`. Per network, it does exactly
    what `trainer.SingleEngine` does before the first step (models moved, masks applied)."""

    def __init__(self, models: list[nn.Module], splits, hp: Hparams, order_seeds: list[int],
                 masks: list[Masks | None], device: torch.device):
        from lottery_ticket.data.order import TrainingOrder
        from lottery_ticket.trainer import make_optimizer

        shapes = [{n: p.shape for n, p in m.state_dict().items()} for m in models]
        if any(s != shapes[0] for s in shapes[1:]):
            raise LotteryError("batched training needs networks of one architecture")
        for model in models:
            check_supported(model)
        run_masks = [prepare_masks(model.to(device), mask, device) for model, mask in zip(models, masks, strict=True)]
        self.networks, self.batch_size, self._models, self.masks = len(models), hp.dataset.batch_size, models, run_masks
        self.train = (splits.train_x.to(device), splits.train_y.to(device))
        self.orders = [TrainingOrder(len(self.train[1]), self.batch_size, seed, device=device) for seed in order_seeds]
        self.order_seeds = order_seeds
        self.augment = hp.dataset.augment
        for model in models:
            model.train()
        template = copy.deepcopy(models[0]).to("meta")  # the architecture; the stacks hold the tensors
        self.module = StackedModule(models)
        self.optimizer = make_optimizer(self.module, hp.training)
        stacked_masks = {name: torch.stack([m[name] for m in run_masks]) for name in run_masks[0]}
        self._step = make_func_step(template, self.module, self.optimizer, stacked_masks)
        self.index = torch.empty(self.networks * self.batch_size, dtype=torch.int64, device=device)

    def step(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.cat([order.batch(iteration) for order in self.orders], out=self.index)
        x = torch.index_select(self.train[0], 0, self.index)
        y = torch.index_select(self.train[1], 0, self.index)
        if self.augment:
            from lottery_ticket.data.augment import augment_batches, augment_seed

            x = augment_batches(x, [augment_seed(seed, iteration) for seed in self.order_seeds])
        k = self.networks
        return self._step(x.view(k, self.batch_size, *x.shape[1:]), y.view(k, self.batch_size))

    def models(self) -> list[nn.Module]:
        self.module.copy_into(self._models)
        return self._models
