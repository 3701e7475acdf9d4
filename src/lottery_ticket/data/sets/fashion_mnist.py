"""Fashion-MNIST (Xiao et al. 2017): MNIST's format and sizes, harder images (not in the paper)."""

from lottery_ticket.data.datasets import MIRRORS, read_idx_dataset
from lottery_ticket.data.registry import register_dataset


@register_dataset("fashion_mnist", input_shape=(1, 28, 28), train_size=60000, num_classes=10, mirrors=MIRRORS["fashion_mnist"])
def read_fashion_mnist(root, *, download, mirrors, quiet):
    return read_idx_dataset("fashion_mnist", root, download=download, mirrors=mirrors, quiet=quiet)
