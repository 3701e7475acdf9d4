"""VGG-19 for CIFAR-10 with batch norm, as used for the lottery ticket experiments on VGG.

Configuration 64,64,M, 128,128,M, 256x4,M, 512x4,M, 512x4: every number is a 3x3 convolution
(padding 1) followed by batch norm and ReLU, every M a 2x2 max pool. After the last block a
global average pool (on 32x32 inputs the last feature map is 2x2, so this is the 2x2 average
pool of the usual CIFAR VGG) and a single Linear 512 -> num_classes.

Choices: the convolutions keep their bias, as in the common LTH/OpenLTH CIFAR VGG (it is zero at
initialization, not prunable, and redundant with batch norm's shift, so it changes nothing about
the pruned weights). Global average pooling (rather than a fixed 2x2 pool) lets the model accept
other input sizes of at least 16x16.

Module names: `layers.<i>.conv` / `layers.<i>.bn` for the 16 conv blocks and `fc` for the output
layer, the only (hence last) `nn.Linear`, as the pruning code expects.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lottery_ticket.models.conv import check_image_shape, check_options
from lottery_ticket.models.registry import ModelEntry, register

VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512)  # fmt: skip


class ConvBlock(nn.Module):
    """Conv 3x3 (padding 1) -> batch norm -> ReLU, then optionally a 2x2 max pool."""

    def __init__(self, in_channels: int, out_channels: int, pool: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        return F.max_pool2d(x, 2) if self.pool else x


class VGG(nn.Module):
    def __init__(self, config: tuple, in_channels: int, num_classes: int):
        super().__init__()
        blocks: list[ConvBlock] = []
        channels = in_channels
        for item in config:
            if item == "M":
                blocks[-1].pool = True
                continue
            blocks.append(ConvBlock(channels, item, pool=False))
            channels = item
        self.layers = nn.ModuleList(blocks)
        self.fc = nn.Linear(channels, num_classes)  # registered last: the output layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def build_vgg(name: str, num_classes: int, input_shape: tuple[int, ...], **options) -> VGG:
    check_options(name, options)
    pools = VGG19.count("M")
    channels, _, _ = check_image_shape(name, input_shape, min_size=2**pools)
    return VGG(VGG19, channels, num_classes)


register(
    ModelEntry(
        pattern="vgg19",
        build=build_vgg,
        examples=("vgg19",),
        default_preset="vgg19",
        dataset="cifar10",
        description="VGG-19 for CIFAR-10 with batch norm, global average pool, Linear 512-10; 20.0M weights",
    )
)
