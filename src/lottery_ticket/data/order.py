"""The seeded training order: which examples form the batch at a given iteration.

The order is a pure function of (seed, iteration), so a resumed run needs no saved data-loader
state: epoch e is a fresh permutation drawn from a generator seeded with (seed, e), and each
epoch is cut into `len(train) // batch_size` full batches (the incomplete tail is dropped).
"""

import torch

from lottery_ticket.errors import LotteryError


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    if batch_size <= 0 or batch_size > num_examples:
        raise LotteryError(
            f"batch size {batch_size} must be between 1 and the training set size {num_examples}"
        )
    return num_examples // batch_size


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the training set used in `epoch` (0-based)."""
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    return torch.randperm(num_examples, generator=generator)


class TrainingOrder:
    """Yields the example indices of each iteration's batch, caching one epoch at a time.

    The permutation is drawn on the CPU (the same order on every device) and copied to `device`
    once per epoch, so indexing data that lives on a GPU needs no host-to-device copy (and no
    synchronization) per step.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, device: str | torch.device = "cpu"):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.per_epoch = batches_per_epoch(num_examples, batch_size)
        self._epoch = -1
        self._perm = None

    def batch(self, iteration: int) -> torch.Tensor:
        epoch, position = divmod(iteration, self.per_epoch)
        if epoch != self._epoch:
            self._perm = epoch_permutation(self.num_examples, self.seed, epoch).to(self.device)
            self._epoch = epoch
        start = position * self.batch_size
        return self._perm[start : start + self.batch_size]


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit generator seed from (seed, epoch); distinct pairs give distinct seeds in practice."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
    x ^= x >> 32
    return x & (2**63 - 1)
