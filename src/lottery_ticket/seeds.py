"""Seed derivation: every seed of a run comes from names and numbers through one hash.

A seed is the first 8 bytes (little-endian) of the SHA-256 of a key, cut to 63 bits (a
non-negative int64, valid for torch generators), so it is stable across runs, machines,
processes and Python versions, and independent of worker count or job order.
"""

from __future__ import annotations

import hashlib


def seed_from_key(key: str) -> int:
    """The 63-bit seed of the text `key` (the one hash behind every derived seed)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any tuple of names and numbers (the key is the tuple's repr)."""
    return seed_from_key(repr(parts))


def tensor_seed(seed: int, name: str) -> int:
    """The seed of tensor `name` under `seed` (random masks: one generator per tensor, so a
    result does not depend on dict order). The key `"<seed>:<name>"` predates `derive_seed` and
    is kept so that existing random-pruning controls stay bitwise the same."""
    return seed_from_key(f"{seed}:{name}")
