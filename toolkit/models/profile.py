"""Size and cost of a model: parameters, forward FLOPs on one S x S image, fp32 size.

Models are profiled on the ``meta`` device (shapes only: no memory, no arithmetic), falling back to the CPU for a
network whose forward pass needs real values.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from toolkit import ToolkitError
from toolkit.models.registry import build_model, get_spec


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_mflops(model: nn.Module, image_size: int = 32) -> float:
    """Forward FLOPs (a multiply-add counts 2) of one (1, 3, S, S) image, in millions."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e6


@functools.lru_cache(maxsize=128)
def _size_and_cost(name: str, num_classes: int, image_size: int) -> tuple[int, float]:
    get_spec(name)  # checks the name and imports torchvision/timm outside the meta context
    try:
        with torch.device("meta"):
            model = build_model(name, num_classes)
        return count_params(model), forward_mflops(model, image_size)
    except Exception:  # noqa: BLE001 - needs real values (or fails for real: then the CPU build says why)
        model = build_model(name, num_classes)
        try:
            return count_params(model), forward_mflops(model, image_size)
        except Exception as exc:  # noqa: BLE001 - e.g. a transformer built for one input size
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ToolkitError(f"cannot run {name} on a {image_size}x{image_size} image ({type(exc).__name__}: "
                               f"{first}); a model with a fixed input size needs that size (--image-size)") from None


@dataclass
class ModelProfile:
    name: str
    family: str
    params: int
    compression_factor: float
    """family teacher params / this model's params (1.0 for the teacher)."""
    mflops: float
    """Forward MFLOPs of one ``image_size`` x ``image_size`` image."""
    fp32_mb: float
    """fp32 parameter size in MB (10^6 bytes)."""
    description: str
    image_size: int = 32
    family_teacher: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def profile_model(name: str, num_classes: int = 10, image_size: int = 32, teacher: str | None = None) -> ModelProfile:
    """Params, compression factor (vs ``teacher``, default the family's teacher) and MFLOPs at ``image_size``."""
    spec = get_spec(name)
    teacher = teacher or spec.family_teacher
    params, mflops = _size_and_cost(name, num_classes, image_size)
    teacher_params = params if teacher == name else _size_and_cost(teacher, num_classes, image_size)[0]
    return ModelProfile(
        name=name,
        family=spec.family,
        params=params,
        compression_factor=round(teacher_params / params, 2),
        mflops=round(mflops, 2),
        fp32_mb=round(params * 4 / 1e6, 3),
        description=spec.description,
        image_size=image_size,
        family_teacher=teacher,
    )
