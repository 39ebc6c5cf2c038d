"""Models by name, so configs say ``teacher: resnet56`` or ``student: mobilenetv2_cifar_L5``.

Every registered model takes RGB in [0, 1] as (N, 3, 32, 32) float and returns logits (N, num_classes);
its normalisation is inside (see ``InputNormalize``), so teacher and student never disagree on preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from toolkit import ToolkitError
from toolkit.models.mobilenetv2_cifar import NUM_FEATURE_CHILDREN, MobileNetV2Cifar
from toolkit.models.resnet_cifar import ResNetCifar

MOBILENET_REMOVED = (3, 5, 7, 9, 11, 13, 15, 17)
RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


@dataclass(frozen=True)
class ModelSpec:
    """A buildable model: ``family`` groups it with its family's teacher for compression factors."""

    name: str
    family: str
    family_teacher: str
    build: Callable[[int], nn.Module]
    at_layers: tuple[str, ...]
    """Module names whose outputs feed attention transfer, the same names in teacher and student."""
    description: str


def _mobilenet_at_layer(removed: int) -> str:
    # METHOD.md section 2: features[len(teacher.features) // d], d = 2 (L <= 7), 4 (L 9-13), 8 (L 15), 20 (L 17).
    if removed <= 7:
        d = 2
    elif removed <= 13:
        d = 4
    elif removed <= 15:
        d = 8
    else:
        d = 20
    return f"features.{NUM_FEATURE_CHILDREN // d}"


def _build_registry() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    specs["mobilenetv2_cifar"] = ModelSpec(
        "mobilenetv2_cifar", "mobilenetv2_cifar", "mobilenetv2_cifar",
        lambda nc: MobileNetV2Cifar(nc, removed=0), (_mobilenet_at_layer(5),),
        "MobileNetV2-CIFAR teacher (stride-1 stem, 19 feature children)",
    )
    for removed in MOBILENET_REMOVED:
        name = f"mobilenetv2_cifar_L{removed}"
        specs[name] = ModelSpec(
            name, "mobilenetv2_cifar", "mobilenetv2_cifar",
            (lambda r: (lambda nc: MobileNetV2Cifar(nc, removed=r)))(removed), (_mobilenet_at_layer(removed),),
            f"MobileNetV2-CIFAR with the last {removed} feature children removed",
        )
    for depth in RESNET_DEPTHS:
        name = f"resnet{depth}"
        specs[name] = ModelSpec(
            name, "resnet_cifar", "resnet56",
            (lambda d: (lambda nc: ResNetCifar(d, nc)))(depth), ("layer1", "layer2", "layer3"),
            f"CIFAR ResNet-{depth} (option-A shortcuts)",
        )
    return specs


MODEL_REGISTRY: dict[str, ModelSpec] = _build_registry()


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise ToolkitError(f"unknown model '{name}'; known: {', '.join(MODEL_REGISTRY)}") from None


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model of the registered ``name``."""
    return get_spec(name).build(num_classes)


def list_models() -> list[str]:
    return list(MODEL_REGISTRY)
