"""Size and cost of a model: parameters, forward FLOPs on one 32x32 image, fp32 size."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from toolkit.models.registry import build_model, get_spec


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_mflops(model: nn.Module, image_size: int = 32) -> float:
    """Forward FLOPs (a multiply-add counts 2) of one (1, 3, S, S) image, in millions."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size))
    model.train(was_training)
    return counter.get_total_flops() / 1e6


@dataclass
class ModelProfile:
    name: str
    family: str
    params: int
    compression_factor: float
    """family teacher params / this model's params (1.0 for the teacher)."""
    mflops: float
    fp32_mb: float
    """fp32 parameter size in MB (10^6 bytes)."""
    description: str

    def to_dict(self) -> dict:
        return asdict(self)


def profile_model(name: str, num_classes: int = 10) -> ModelProfile:
    spec = get_spec(name)
    model = build_model(name, num_classes)
    params = count_params(model)
    teacher_params = count_params(build_model(spec.family_teacher, num_classes))
    return ModelProfile(
        name=name,
        family=spec.family,
        params=params,
        compression_factor=round(teacher_params / params, 2),
        mflops=round(forward_mflops(model), 2),
        fp32_mb=round(params * 4 / 1e6, 3),
        description=spec.description,
    )
