"""CIFAR-10 (Krizhevsky 2009): the paper's dataset for Conv-2/4/6, VGG-19 and ResNet-18 (Sections 3-4)."""

from lottery_ticket.data.cifar import read_cifar10
from lottery_ticket.data.datasets import MIRRORS, ensure_cifar10
from lottery_ticket.data.registry import register_dataset


@register_dataset("cifar10", input_shape=(3, 32, 32), train_size=50000, num_classes=10, mirrors=MIRRORS["cifar10"])
def read_cifar(root, *, download, mirrors, quiet):
    return read_cifar10(ensure_cifar10(root, download=download, mirrors=mirrors, quiet=quiet))
