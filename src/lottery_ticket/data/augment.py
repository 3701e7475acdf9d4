"""Batch data augmentation: random crop after zero padding, and random horizontal flip.

Done on the whole batch tensor with one advanced-indexing gather (no per-image Python loop), so it
is cheap on CPU and stays on the GPU for CUDA batches. The random draws come from a CPU
`torch.Generator` seeded with `seed`, so the same (batch, seed) gives the same result on any
device, and a resumed run can recompute the augmentation of any iteration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment_seed(order_seed: int, iteration: int) -> int:
    """The augmentation seed of a run's batch at `iteration` (modulo 2**64: torch.Generator seeds
    are 64-bit, the runner's order seeds 63-bit)."""
    return (order_seed * 1_000_003 + iteration) % 2**64


def augment_batch(x: torch.Tensor, seed: int, *, padding: int = 4) -> torch.Tensor:
    """Per image: pad `padding` zeros on each side, crop back to H x W at a random offset, and
    flip left-right with probability 1/2. `x` is [N, C, H, W]; the result has the same shape,
    dtype and device.

    Draw order (part of the contract, for reproducibility): row offsets [N], column offsets [N],
    then flips [N], each from the same generator. Zero padding is applied to `x` as given, so for
    normalized inputs the border is 0 in normalized units (the mean pixel, not black).
    """
    return augment_batches(x, [seed], padding=padding)


def augment_batches(x: torch.Tensor, seeds: list[int], *, padding: int = 4) -> torch.Tensor:
    """The batches of K runs at once: `x` is K equal batches [K * N, C, H, W] one after the other,
    batch k augmented as `augment_batch(x_k, seeds[k])` (the same draws, the same values) by one
    gather on x's device for all of them -- a batched step (`batched_func`) copies its K networks'
    images once per step, not K times."""
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects [N, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    total, c, h, w = x.shape
    if not seeds or total % len(seeds):
        raise ValueError(f"{total} images do not split into {len(seeds)} equal batches")
    n = total // len(seeds)
    rows, cols = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        row_offsets = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        col_offsets = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator).bool()
        rows.append(row_offsets[:, None] + torch.arange(h))  # [N, H] rows of the padded image to take
        window = col_offsets[:, None] + torch.arange(w)  # [N, W]
        cols.append(torch.where(flips[:, None], window.flip(1), window))  # a flip reads the window backwards

    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    batch_index = torch.arange(total, device=device)[:, None, None, None]
    channel_index = torch.arange(c, device=device)[None, :, None, None]
    return padded[
        batch_index,
        channel_index,
        torch.cat(rows).to(device)[:, None, :, None],
        torch.cat(cols).to(device)[:, None, None, :],
    ]
