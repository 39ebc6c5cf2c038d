"""Top-1 accuracy of a model on in-memory uint8 images."""

from __future__ import annotations

import torch
from torch import nn

from toolkit.data.augment import to_float
from toolkit.device import autocast


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 500, device: torch.device | None = None,
                   precision: str = "fp32", channels_last: bool = False) -> torch.Tensor:
    """Logits (N, classes) in fp32 on CPU for uint8 images (N, 3, H, W), model in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == labels.cpu()).float().mean() * 100) if len(labels) else float("nan")


def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, **kwargs) -> float:
    return accuracy(predict_logits(model, images, **kwargs), labels)
