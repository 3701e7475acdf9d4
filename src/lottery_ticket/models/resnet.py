"""The CIFAR ResNet of He et al. (2016) that the lottery ticket paper calls "Resnet-18" (depth 20).

A 3x3 convolution to 16 channels, then three stages of three basic blocks with 16, 32 and 64
channels; the first block of stages 2 and 3 has stride 2 and a 1x1 convolution + batch norm
shortcut (all other shortcuts are the identity). Batch norm follows every convolution; then a
global average pool and a Linear 64 -> num_classes.

Choices: convolutions have no bias (each is followed by batch norm, as in the common LTH/OpenLTH
CIFAR ResNet). 270,896 weights in all: 267,696 in the 3x3 convolutions, 2,560 in the two 1x1
shortcut convolutions and 640 in fc. The paper prunes the 3x3 convolutions only (Frankle & Carbin
2019, Figure 2 "conv 20%, fc 0%"; issue 12: the 1x1 downsample shortcuts are not pruned either), so
the `resnet18` preset lists fc and both shortcuts in --never-prune (they stay masks of ones);
`lth models` shows 267,696 prunable weights.

Module names: `conv` / `bn` (the first convolution), `blocks.<i>.conv1`, `.bn1`, `.conv2`, `.bn2`,
`.shortcut` (an `nn.Sequential` of 1x1 conv and batch norm, or `nn.Identity`), and `fc` for the
output layer, the only (hence last) `nn.Linear`, as the pruning code expects.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lottery_ticket.models.conv import check_image_shape, check_options
from lottery_ticket.models.registry import ModelEntry, register

STAGES = (16, 32, 64)
BLOCKS_PER_STAGE = 3


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, stages=STAGES, blocks=BLOCKS_PER_STAGE):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, stages[0], 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(stages[0])
        layers = []
        channels = stages[0]
        for stage, width in enumerate(stages):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)  # registered last: the output layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def build_resnet(
    name: str, num_classes: int, input_shape: tuple[int, ...], **options
) -> CifarResNet:
    check_options(name, options)
    channels, _, _ = check_image_shape(name, input_shape)
    return CifarResNet(channels, num_classes)


register(
    ModelEntry(
        pattern="resnet18",
        build=build_resnet,
        examples=("resnet18",),
        default_preset="resnet18",
        dataset="cifar10",
        description=("the paper's Resnet-18: CIFAR ResNet (He et al.) 16-32-64, 3 blocks per stage; 271K weights, "
                     "prunable: the 3x3 convolutions (not the 1x1 shortcuts, not fc)"),
    )
)
