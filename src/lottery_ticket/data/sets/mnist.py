"""MNIST (LeCun et al.): the paper's dataset for LeNet-300-100 (Frankle & Carbin 2019, Section 2)."""

from lottery_ticket.data.datasets import MIRRORS, read_idx_dataset
from lottery_ticket.data.registry import register_dataset


@register_dataset("mnist", input_shape=(1, 28, 28), train_size=60000, num_classes=10, mirrors=MIRRORS["mnist"])
def read_mnist(root, *, download, mirrors, quiet):
    return read_idx_dataset("mnist", root, download=download, mirrors=mirrors, quiet=quiet)
