"""MobileNetV2 adapted to 32x32 CIFAR images, and its truncated students (METHOD.md section 1).

The teacher's ``features`` has 19 children: a stride-1 stem, 17 inverted-residual blocks and a 1x1 conv to 1280
channels. A student is the same network with the last ``L`` children of ``features`` removed, followed by global
average pooling and ``Linear(C -> num_classes)`` without dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from toolkit.models.normalize import InputNormalize

# (expansion t, output channels c, repeats n, first stride s); the 24-channel stage has stride 1 on CIFAR.
CIFAR_INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NUM_FEATURE_CHILDREN = 19


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear project (1x1); identity shortcut when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        self.use_shortcut = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(in_ch, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_shortcut else out


def _all_feature_children() -> list[nn.Module]:
    children: list[nn.Module] = [ConvBNReLU6(3, 32, stride=1)]
    in_ch = 32
    for t, c, n, s in CIFAR_INVERTED_RESIDUAL_SETTINGS:
        for i in range(n):
            children.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
            in_ch = c
    children.append(ConvBNReLU6(in_ch, 1280, kernel=1))
    assert len(children) == NUM_FEATURE_CHILDREN
    return children


def _feature_out_channels(child: nn.Module) -> int:
    convs = [m for m in child.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2-CIFAR with ``removed`` trailing feature children cut off (0 = the teacher).

    Input: float tensor (N, 3, 32, 32), RGB in [0, 1]; normalisation (CIFAR mean/std) happens inside.
    Output: logits (N, num_classes).
    """

    def __init__(self, num_classes: int = 10, removed: int = 0, dropout: float | None = None):
        super().__init__()
        if not 0 <= removed < NUM_FEATURE_CHILDREN:
            raise ValueError(f"removed must be in [0, {NUM_FEATURE_CHILDREN - 1}], got {removed}")
        self.removed = removed
        self.normalize = InputNormalize(CIFAR_MEAN, CIFAR_STD)
        kept = _all_feature_children()[: NUM_FEATURE_CHILDREN - removed]
        self.features = nn.Sequential(*kept)
        last_channels = _feature_out_channels(kept[-1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        if dropout is None:
            dropout = 0.2 if removed == 0 else 0.0
        head: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        head.append(nn.Linear(last_channels, num_classes))
        self.classifier = nn.Sequential(*head)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(torch.flatten(self.pool(x), 1))
