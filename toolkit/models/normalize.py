"""Input normalisation carried inside every model, so teacher and student both take RGB in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn


class InputNormalize(nn.Module):
    """``(x - mean) / std`` per channel. Buffers are not persistent: checkpoints hold only learnt weights."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
