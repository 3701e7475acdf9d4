"""Conv nets on the CPU in channels-last (NHWC) memory format.

With NCHW activations, oneDNN (which runs torch's float32 CPU convolutions) reorders every
activation into its blocked layout and back, around every convolution and its two backward
passes, and `max_pool2d` runs a slow NCHW kernel; with NHWC activations it runs its brgemm
kernels directly and the pooling is vectorized (benchmarks/PROFILE.md, "Conv nets"). So the
training step and the evaluation of a model with 2-d convolutions give it its input batch in
channels-last format; every activation after it follows (torch propagates the memory format).

Parameters, gradients, optimizer state and masks stay in the ordinary (NCHW, contiguous) format,
so state dicts, checkpoints, masks and files are unchanged: torch hands oneDNN the weights in
its own blocked layout either way, and autograd returns each weight's gradient in the weight's
own layout.

Results: the same network, computed with other kernels. The NHWC kernels sum each output's
3x3xC products in another order than the blocked NCHW kernels, and float addition is not
associative, so outputs, gradients and losses agree to float rounding (relative ~1e-6 per
layer), not bitwise (tests/test_fast_conv.py). The choice depends on the model and device
only, so a run, its resume and its rerun all compute the same way: results stay reproducible.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Rows per evaluation chunk for conv nets on the CPU. 100 CIFAR images make ~26 MB activations
# (64 channels at 32x32): below glibc's 32 MB mmap threshold, so the buffers are reused instead of
# mapped, page-faulted and unmapped at every layer of every chunk as with 1,000 rows (~260 MB),
# and closer to the caches. Measured 2-3x faster evaluation (benchmarks/PROFILE.md, "Conv nets").
EVAL_ROWS = 100


def input_format(model: nn.Module, device: torch.device | str) -> torch.memory_format:
    """The memory format to give `model` its input in: channels-last for models with 2-d
    convolutions on the CPU, else the ordinary contiguous format."""
    if torch.device(device).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.channels_last
    return torch.contiguous_format


def eval_rows(memory_format: torch.memory_format, default: int) -> int:
    """Rows per evaluation chunk: `EVAL_ROWS` for the channels-last path, else `default`."""
    return EVAL_ROWS if memory_format == torch.channels_last else default


def as_input(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """`x` in `memory_format` (itself when it already is, or when it has no image dimensions)."""
    if x.dim() != 4:
        return x
    return x.contiguous(memory_format=memory_format)
