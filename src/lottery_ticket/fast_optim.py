"""`optimizer.step()` for fused Adam and SGD on the CPU, without `Optimizer.step`'s Python.

On LeNet-300-100 at batch 60 the fused Adam kernel itself takes ~115 us per step, but
`torch.optim.Adam.step` spends another ~55 us around it (hooks, profiler labels, `_init_group`,
grouping tensors by device and dtype) -- 5% of a whole training step (benchmarks/PROFILE.md).
`make_update` returns a function that calls the same kernels (`torch._fused_adam_`,
`torch._fused_sgd_`) with the same arguments `torch.optim` passes them, on the optimizer's own
state tensors, so the result, the state dict, checkpoints and resume are bitwise those of
`optimizer.step()` (tests/test_fast_optim.py).

It applies only where that equivalence is plain: `torch.optim.Adam`/`AdamW`/`SGD` built with
`fused=True` (as `trainer.make_optimizer` builds them), CPU float32 parameters, float
hyperparameters, no amsgrad/maximize/capturable/differentiable, no optimizer hooks. Anything
else -- and the first step, which creates the optimizer state -- goes through `optimizer.step()`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

try:  # torch's registries of global optimizer hooks (private; if a release moves them, stay safe)
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
except ImportError:  # pragma: no cover - depends on the torch release
    _global_optimizer_pre_hooks = _global_optimizer_post_hooks = None

_FLAGS_OFF = ("maximize", "capturable", "differentiable")
_ADAMS = (torch.optim.Adam, torch.optim.AdamW)  # AdamW is Adam with decoupled_weight_decay=True


def _plain_fused_group(group: dict) -> bool:
    if not group.get("fused") or any(group.get(flag) for flag in _FLAGS_OFF):
        return False
    params = group["params"]
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return False
    scalars = [group["lr"], group["weight_decay"], *group.get("betas", ()), group.get("eps", 0.0),
               group.get("momentum", 0.0), group.get("dampening", 0.0)]
    return all(isinstance(v, float | int) and not isinstance(v, bool) for v in scalars)


def supports(optimizer: torch.optim.Optimizer) -> bool:
    """True where `make_update` calls the fused kernel directly."""
    if _global_optimizer_pre_hooks is None or not hasattr(torch, "_fused_adam_"):
        return False
    kind = type(optimizer)
    if kind in _ADAMS:
        if any(g["amsgrad"] for g in optimizer.param_groups):
            return False
    elif kind is not torch.optim.SGD:
        return False
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return False
    return all(_plain_fused_group(g) for g in optimizer.param_groups)


def _hooked(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or _global_optimizer_pre_hooks or _global_optimizer_post_hooks)


def _adam_kernel_call(optimizer: torch.optim.Adam, group: dict) -> Callable[[], None] | None:
    """The kernel call that updates one group, or None while its state does not exist yet."""
    params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        state = optimizer.state.get(p)
        if not state:
            return None
        params.append(p)
        grads.append(p.grad)
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        steps.append(state["step"])
    beta1, beta2 = group["betas"]
    # (AdamW: a subclass with decoupled_weight_decay=True in recent torch, its own class before)
    decoupled = type(optimizer) is torch.optim.AdamW or group.get("decoupled_weight_decay", False)
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_

    def call() -> None:
        if not params:
            return
        torch._foreach_add_(steps, 1)
        kernel(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
               beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
               grad_scale=None, found_inf=None)

    return call


def _sgd_kernel_call(optimizer: torch.optim.SGD, group: dict) -> Callable[[], None] | None:
    params = [p for p in group["params"] if p.grad is not None]
    momentum = group["momentum"]
    buffers = []
    if momentum != 0:
        buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]
        if any(b is None for b in buffers):
            return None

    def call() -> None:
        if not params:
            return
        torch._fused_sgd_(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
                          momentum=momentum, lr=group["lr"], dampening=group["dampening"],
                          nesterov=group["nesterov"], maximize=False, is_first_step=False, grad_scale=None,
                          found_inf=None)

    return call


def make_update(optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """A no-argument function with the effect of `optimizer.step()`."""
    if not supports(optimizer):
        return optimizer.step
    kernel_call = _adam_kernel_call if type(optimizer) in _ADAMS else _sgd_kernel_call

    @torch.no_grad()
    def update() -> None:
        # State is looked up on every call: load_state_dict (resume) replaces the state tensors.
        calls = [kernel_call(optimizer, group) for group in optimizer.param_groups]
        if _hooked(optimizer) or any(call is None for call in calls):
            optimizer.step()  # hooks to run, or the first step, which creates the state
            return
        for call in calls:
            call()

    return update
