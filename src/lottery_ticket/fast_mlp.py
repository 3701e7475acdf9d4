"""Hand-written forward/backward for fully-connected networks (the hot path of LeNet experiments).

For a `FullyConnected` model (Linear+ReLU hidden layers, then a Linear output layer) one training
step is a handful of matrix products. Autograd's graph building, module calls and per-op
allocations are a large share of a step at batch 60 (see benchmarks/PROFILE.md), so this module
runs the same kernels by hand:

* forward with `torch.addmm(..., out=)` into preallocated activation buffers, ReLU in place;
* the cross-entropy gradient w.r.t. the logits, (softmax - onehot) / batch, through the same
  aten backward functions autograd calls for F.cross_entropy;
* weight and bias gradients written straight into each parameter's `.grad` (`out=` variants),
  in autograd's formulation (g^T h for weights, g W for activations, threshold_backward for
  ReLU); no gradient is computed for the input (the data needs none);
* `masking.mask_gradients` on (grad, mask) pairs -- the one place masks touch gradients;
* the caller's own torch optimizer, stepped through `fast_optim.make_update` (its fused kernel
  called directly, bitwise `optimizer.step()`), so its state dict, checkpoints and resume stay
  exactly those of the general path.

Because every kernel and its operands match autograd's, a step is bitwise identical to
`trainer.autograd_step` (tests/test_fast_mlp.py). The weights stay the model's own Parameters
(state dicts, checkpoints and evaluation keep working). The step never synchronizes with the
host: loss and correct count are returned as device tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lottery_ticket.fast_optim import make_update
from lottery_ticket.masking import Masks, gradient_mask_pairs, mask_gradients
from lottery_ticket.models.fc import FullyConnected

SUPPORTED_OPTIMIZERS = (torch.optim.Adam, torch.optim.SGD)
_relu_backward = torch.ops.aten.threshold_backward.grad_input
_nll_forward = torch.ops.aten.nll_loss_forward.default
_nll_backward = torch.ops.aten.nll_loss_backward.default
_log_softmax_backward = torch.ops.aten._log_softmax_backward_data.default


def has_hooks(model: nn.Module) -> bool:
    """Module or parameter hooks would run under autograd but not in a hand-written or rewritten
    computation: such models take the general path."""
    for module in model.modules():
        if (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks):
            return True
    return any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None)
               for p in model.parameters())


def supports(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """True for exactly a `FullyConnected` model (not a subclass, which may change `forward`) with
    float32 parameters on one device, no hooks, trained by torch.optim.Adam or SGD."""
    if type(model) is not FullyConnected or not isinstance(optimizer, SUPPORTED_OPTIMIZERS):
        return False
    params = list(model.parameters())
    if len(params) != 2 * len(model.linears()) or any(layer.bias is None for layer in model.linears()):
        return False
    device = params[0].device
    if any(p.dtype != torch.float32 or p.device != device or not p.requires_grad for p in params):
        return False
    return not has_hooks(model)


class _Buffers:
    """Activation and gradient scratch tensors for one batch size, allocated once."""

    def __init__(self, batch: int, widths: list[int], device: torch.device):
        def new(cols: int) -> torch.Tensor:
            return torch.empty(batch, cols, dtype=torch.float32, device=device)

        self.hidden = [new(w) for w in widths[1:-1]]  # post-ReLU activations, one per hidden layer
        self.logits = new(widths[-1])
        self.grads = [new(w) for w in widths[1:-1]]  # gradient w.r.t. each hidden activation
        self.one = torch.ones((), dtype=torch.float32, device=device)  # d loss / d loss


def make_step(model: FullyConnected, optimizer: torch.optim.Optimizer, masks: Masks):
    """A `step(x, y) -> (mean loss, number correct)` doing what `trainer.autograd_step` does."""
    layers = model.linears()
    widths = [layers[0].in_features] + [layer.out_features for layer in layers]
    weights = [layer.weight for layer in layers]
    biases = [layer.bias for layer in layers]
    params = [p for layer in layers for p in (layer.weight, layer.bias)]
    masked = gradient_mask_pairs(model, masks)  # (parameter, mask)
    buffers: dict[int, _Buffers] = {}
    update = make_update(optimizer)

    def grad_of(p: nn.Parameter) -> torch.Tensor:
        # Created once; recreated if someone set it to None (e.g. optimizer.zero_grad()).
        if p.grad is None:
            p.grad = torch.empty_like(p, memory_format=torch.contiguous_format)
        return p.grad

    @torch.no_grad()
    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        b = buffers.get(batch)
        if b is None:
            b = buffers[batch] = _Buffers(batch, widths, x.device)
        h = x.reshape(batch, -1)
        inputs = [h]  # the input of each layer
        for W, bias, out in zip(weights[:-1], biases[:-1], b.hidden, strict=True):
            h = torch.relu_(torch.addmm(bias, h, W.t(), out=out))
            inputs.append(h)
        logits = torch.addmm(biases[-1], h, weights[-1].t(), out=b.logits)

        # Mean cross-entropy and its gradient w.r.t. the logits with the very kernels autograd
        # runs for F.cross_entropy (log_softmax + nll_loss and their backward functions), so the
        # gradient is bitwise autograd's, (softmax - onehot) / batch.
        log_probs = torch.log_softmax(logits, 1)
        loss, total_weight = _nll_forward(log_probs, y, None, 1, -100)  # 1: mean reduction
        correct = (logits.argmax(1) == y).sum()
        g = _log_softmax_backward(_nll_backward(b.one, log_probs, y, None, 1, -100, total_weight),
                                  log_probs, 1, torch.float32)

        grads = [grad_of(p) for p in params]
        for i in range(len(layers) - 1, -1, -1):
            torch.mm(g.t(), inputs[i], out=grads[2 * i])
            torch.sum(g, 0, out=grads[2 * i + 1])
            if i == 0:
                break
            # Gradient w.r.t. the previous hidden activation, through its ReLU: the op autograd's
            # ReLU backward uses (grad where output > 0, else 0), in place; 6x faster than
            # multiplying by the bool tensor (h > 0).
            gh = torch.mm(g, weights[i], out=b.grads[i - 1])
            g = _relu_backward(gh, inputs[i], 0, grad_input=gh)
        mask_gradients([(p.grad, mask) for p, mask in masked])
        update()
        return loss, correct

    return step
