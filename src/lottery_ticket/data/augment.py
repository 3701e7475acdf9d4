"""Batch data augmentation: random crop after zero padding, and random horizontal flip.

Done on the whole batch tensor with one advanced-indexing gather (no per-image Python loop), so it
is cheap on CPU and stays on the GPU for CUDA batches. The random draws come from a CPU
`torch.Generator` seeded with `seed`, so the same (batch, seed) gives the same result on any
device, and a resumed run can recompute the augmentation of any iteration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, seed: int, *, padding: int = 4) -> torch.Tensor:
    """Per image: pad `padding` zeros on each side, crop back to H x W at a random offset, and
    flip left-right with probability 1/2. `x` is [N, C, H, W]; the result has the same shape,
    dtype and device.

    Draw order (part of the contract, for reproducibility): row offsets [N], column offsets [N],
    then flips [N], each from the same generator. Zero padding is applied to `x` as given, so for
    normalized inputs the border is 0 in normalized units (the mean pixel, not black).
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects [N, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    n, c, h, w = x.shape
    generator = torch.Generator().manual_seed(seed)
    row_offsets = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    col_offsets = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()

    rows = row_offsets[:, None] + torch.arange(h)  # [N, H] rows of the padded image to take
    cols = col_offsets[:, None] + torch.arange(w)  # [N, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the window backwards

    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    batch_index = torch.arange(n, device=device)[:, None, None, None]
    channel_index = torch.arange(c, device=device)[None, :, None, None]
    return padded[
        batch_index,
        channel_index,
        rows.to(device)[:, None, :, None],
        cols.to(device)[:, None, None, :],
    ]
