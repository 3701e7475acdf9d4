"""Reading a network's per-layer activations (`lth activations`, the `activations` callback),
outside training: eval mode, no gradients, hooks removed afterwards.

Two kinds of layer, named as `lth activations --list-layers` shows them:

* `relu<i>`: the output of the i-th ReLU the forward pass applies (`relu0` is the first hidden
  layer's). The models apply ReLU as a function (`torch.relu`, `F.relu`), which no module hook can
  see, so these are recorded by intercepting those calls (a `TorchFunctionMode`) during the pass:
  every model family is covered without per-model code.
* any named module (`hidden.0`, `convs.1`, `layers.3.bn`, `output`): its output, through a forward
  hook (`register_forward_hook`).

Nothing here runs during training steps: the training loop calls the callback only at evaluations,
and `lth activations` reads saved networks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lottery_ticket.errors import LotteryError

BATCH = 1_000  # examples per forward pass, as the trainer's evaluation
RELUS = {torch.relu, torch.relu_, F.relu, F.relu_}
_RELU_NAME = re.compile(r"relu(\d+)")


class ReluCalls(TorchFunctionMode):
    """Calls `on_output(i, output)` for the i-th ReLU call of each forward pass run under it."""

    def __init__(self, on_output: Callable[[int, torch.Tensor], None]):
        super().__init__()
        self.on_output = on_output
        self.index = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in RELUS:
            self.on_output(self.index, out)
            self.index += 1
        return out


def layer_names(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Every layer `capture` can read: `relu0`, `relu1`, ... (one forward pass of a zero example
    counts them), then the named modules in registration order."""
    count = [0]

    def seen(index, output):
        count[0] = max(count[0], index + 1)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), ReluCalls(seen):
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return [f"relu{i}" for i in range(count[0])] + [name for name, _ in model.named_modules() if name]


def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str], batch: int = BATCH) -> dict[str, torch.Tensor]:
    """`{layer: activations of the examples x}` (first dimension: the examples, in order) for each
    name in `layers`, in eval mode without gradients; the model's mode is restored and its hooks
    removed. An unknown layer name is a LotteryError listing the known ones."""
    modules = dict(model.named_modules())
    relus = {int(m.group(1)): name for name in layers if (m := _RELU_NAME.fullmatch(name))}
    unknown = [name for name in layers if name not in modules and not _RELU_NAME.fullmatch(name) or name == ""]
    if unknown:
        known = layer_names(model, tuple(x.shape[1:]))
        raise LotteryError(f"unknown layer(s) {unknown}; this model has: {', '.join(known)}")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}

    def keep(name):
        return lambda module, inputs, output: parts[name].append(output.detach().to("cpu", copy=True))

    def keep_relu(index, output):
        if index in relus:
            parts[relus[index]].append(output.detach().to("cpu", copy=True))

    hooks = [modules[name].register_forward_hook(keep(name)) for name in layers if name in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch):
                with ReluCalls(keep_relu):
                    model(x[start : start + batch])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    missing = [name for name in layers if not parts[name]]
    if missing:
        raise LotteryError(f"layer(s) {missing} produced no output (this model applies "
                           f"{len(layer_names(model, tuple(x.shape[1:])))} layers; see --list-layers)")
    return {name: torch.cat(parts[name]) for name in layers}
