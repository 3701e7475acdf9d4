"""Datasets: MNIST, Fashion-MNIST and CIFAR-10 as normalized in-memory tensors.

    splits = load_dataset("mnist", root=None, validation_size=5000, split_seed=0,
                          normalization="standard", permute_classes_seed=None,
                          random_labels_seed=None, download=True)

See `datasets.py` for where files are looked for and how they are verified, `augment.py` for the
batch augmentation and `order.py` for the seeded training order.
"""

from lottery_ticket.data.augment import augment_batch
from lottery_ticket.data.cifar import read_cifar10, read_cifar_batch
from lottery_ticket.data.datasets import (
    DATASETS,
    MIRRORS,
    NORMALIZATIONS,
    Splits,
    channel_stats,
    ensure_cifar10,
    load_dataset,
    make_splits,
    resolve_data_root,
)
from lottery_ticket.data.download import download_file, extract_tar
from lottery_ticket.data.idx import parse_idx, read_idx_gz

__all__ = [
    "DATASETS",
    "MIRRORS",
    "NORMALIZATIONS",
    "Splits",
    "augment_batch",
    "channel_stats",
    "download_file",
    "ensure_cifar10",
    "extract_tar",
    "load_dataset",
    "make_splits",
    "parse_idx",
    "read_cifar10",
    "read_cifar_batch",
    "read_idx_gz",
    "resolve_data_root",
]
