"""Evaluation of conv nets on the CPU in channels-last (NHWC) memory format.

With NCHW activations, oneDNN (which runs torch's float32 CPU convolutions) reorders every
activation into its blocked layout and back around every convolution, and `max_pool2d` runs a
slow NCHW kernel; with NHWC activations it runs its brgemm kernels directly and the pooling is
vectorized. `loop.evaluate` gives a model with 2-d convolutions its input chunks in channels-last
format (every activation after it follows: torch propagates the memory format), in chunks of
`EVAL_ROWS` rows. Measured 1.1-1.8x the plain NCHW evaluation (benchmarks/PROFILE.md, "Conv nets").

Batch norm that directly follows a convolution is folded into the convolution's weights and bias
for evaluation (`folded_batch_norm`): ResNet-18's evaluation spent 17% of its time in batch norm.

The training step stays NCHW: channels-last steps measured 0.82-1.24x the NCHW step on this
machine (side by side, loads 10-25), no reliable gain, and NCHW keeps training bitwise what it
was. Evaluation does not feed back into training, so the weights, masks and files of a run are
unchanged; only the evaluation rows can differ, by float rounding: the NHWC kernels sum each
output's 3x3xC products in another order than the blocked NCHW kernels, and a chunk's float32 loss
sum is split differently (relative ~1e-7, tests/test_fast_conv.py). The choice depends on the
model and device only, so runs, resumes and reruns all evaluate the same way.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn as nn

from lottery_ticket.fast_mlp import has_hooks

# Rows per evaluation chunk for conv nets on the CPU. 100 CIFAR images make ~26 MB activations
# (64 channels at 32x32): below glibc's 32 MB mmap threshold, so the buffers are reused instead of
# mapped, page-faulted and unmapped at every layer of every chunk as with 1,000 rows (~260 MB),
# and closer to the caches. 3x faster than NCHW in 1,000-row chunks (benchmarks/PROFILE.md, "Conv nets").
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


def folded_batch_norm(model: nn.Module) -> nn.Module:
    """For evaluation: a copy of `model` (in eval mode) with every batch norm that directly follows
    a convolution folded into it -- weight * gamma / sqrt(var + eps), and (bias - mean) * gamma /
    sqrt(var + eps) + beta -- by torch.fx's `fuse`; `model` itself where there is no batch norm, in
    training mode, with hooks (they would not run on the copy) or where torch.fx cannot trace it.

    Measured on the CPU (1 thread, channels-last, 100-row chunks, median of 5 interleaved): ResNet-18
    1.04 s -> 0.84 s per 1,000 examples (1.24x); VGG-19 unchanged (0.98x: its convolutions dwarf its
    batch norm). The numbers change by float rounding only: one multiplication of
    the weights replaces normalizing each output (3e-8 to 1.5e-7 on the logits; tested with the
    NCHW evaluation in tests/test_fast_conv.py). The weights of the model are not touched.
    """
    if model.training or has_hooks(model) or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                      for m in model.modules()):
        return model
    fuse = _fx_fuse()
    if fuse is None:
        return model
    try:
        return fuse(model)
    except Exception:  # a model torch.fx cannot trace (e.g. data-dependent control flow): as it is
        return model


@functools.cache
def _fx_fuse():
    """torch.fx's conv/batch-norm `fuse`, imported once (None in a torch without it)."""
    try:
        with warnings.catch_warnings():  # (it imports torch.utils.mkldnn, which warns that TorchScript is deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.fx.experimental.optimization import fuse
    except ImportError:
        return None
    return fuse
