"""Models by name, so configs say ``teacher: resnet56``, ``student: mobilenetv2_cifar_L5`` or ``torchvision:resnet18``.

Every model takes RGB in [0, 1] as (N, 3, H, W) float and returns logits (N, num_classes); its normalisation is
inside (``model.normalize``, an ``InputNormalize``), so teacher and student never disagree on preprocessing.

Names: the built-in ones (:func:`list_models`; CIFAR-sized, 32x32), ``torchvision:<builder>`` (a classification
builder of ``torchvision.models``), ``timm:<name>`` (``timm.create_model``) and ``truncate:<L>:<base>`` (the base
without the last L blocks of its feature extractor, toolkit.models.derive).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from torch import nn

from toolkit import ToolkitError
from toolkit.models.mobilenetv2_cifar import NUM_FEATURE_CHILDREN, MobileNetV2Cifar
from toolkit.models.resnet_cifar import ResNetCifar

MOBILENET_REMOVED = (3, 5, 7, 9, 11, 13, 15, 17)
RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
PREFIXES = ("torchvision:", "timm:", "truncate:")


@dataclass(frozen=True)
class ModelSpec:
    """A buildable model: ``family`` groups it with its family's teacher for compression factors."""

    name: str
    family: str
    family_teacher: str
    build: Callable[[int], nn.Module]
    at_layers: tuple[str, ...]
    """Module paths whose outputs feed attention transfer, the same paths in teacher and student of one family
    (empty: none known, name them with ``loss.at_layers``)."""
    description: str
    build_pretrained: Callable[[int], nn.Module] | None = None
    """Build from the library's published weights with a fresh head for ``num_classes``; None: no such weights."""


def mobilenet_at_layer(removed: int) -> str:
    """METHOD.md section 2: ``features[len(teacher.features) // d]``, d = 2 (L <= 7), 4 (L 9-13), 8 (L 15),
    20 (L 17)."""
    if removed <= 7:
        d = 2
    elif removed <= 13:
        d = 4
    elif removed <= 15:
        d = 8
    else:
        d = 20
    return f"features.{NUM_FEATURE_CHILDREN // d}"


_mobilenet_at_layer = mobilenet_at_layer


def _build_registry() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    specs["mobilenetv2_cifar"] = ModelSpec(
        "mobilenetv2_cifar", "mobilenetv2_cifar", "mobilenetv2_cifar",
        lambda nc: MobileNetV2Cifar(nc, removed=0), (mobilenet_at_layer(5),),
        "MobileNetV2-CIFAR teacher (stride-1 stem, 19 feature children)",
    )
    for removed in MOBILENET_REMOVED:
        name = f"mobilenetv2_cifar_L{removed}"
        specs[name] = ModelSpec(
            name, "mobilenetv2_cifar", "mobilenetv2_cifar",
            (lambda r: (lambda nc: MobileNetV2Cifar(nc, removed=r)))(removed), (mobilenet_at_layer(removed),),
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


@functools.lru_cache(maxsize=256)
def _prefixed_spec(name: str) -> ModelSpec:
    from toolkit.models import foreign

    kind, _, rest = name.partition(":")
    if kind == "torchvision":
        foreign.check_torchvision(rest)
        return ModelSpec(
            name, name, name, lambda nc: foreign.build_torchvision(rest, nc),
            foreign.torchvision_default_at_layers(rest),
            f"torchvision {rest} (ImageNet mean/std inside)",
            lambda nc: foreign.build_torchvision(rest, nc, pretrained=True),
        )
    if kind == "timm":
        foreign.check_timm(rest)
        return ModelSpec(
            name, name, name, lambda nc: foreign.build_timm(rest, nc), foreign.timm_default_at_layers(rest),
            f"timm {rest} (its pretrained config's mean/std inside)",
            lambda nc: foreign.build_timm(rest, nc, pretrained=True),
        )
    from toolkit.models import derive

    t = derive.parse_truncation(name)
    base = get_spec(t.base)
    return ModelSpec(
        t.name, base.family, t.base, lambda nc: derive.build_truncated(t, nc), derive.truncated_at_layers(t),
        f"{t.base} without the last {t.removed} of its {t.blocks} feature blocks, new pooling + linear head",
        (lambda nc: derive.build_truncated(t, nc, pretrained=True)) if base.build_pretrained else None,
    )


def get_spec(name: str) -> ModelSpec:
    """The spec of a built-in or prefixed name; an unknown name is a one-line ToolkitError."""
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name]
    if isinstance(name, str) and name.startswith(PREFIXES):
        return _prefixed_spec(name)
    raise ToolkitError(f"unknown model '{name}'; known: {', '.join(MODEL_REGISTRY)}, or torchvision:<builder>, "
                       "timm:<name>, truncate:<L>:<base>")


def build_model(name: str, num_classes: int = 10, pretrained: bool = False) -> nn.Module:
    """A model of ``name`` for ``num_classes``: freshly initialised, or (``pretrained``, torchvision:/timm: and their
    truncations only) from the library's published weights (downloaded) with a fresh classifier."""
    spec = get_spec(name)
    if not pretrained:
        return spec.build(num_classes)
    if spec.build_pretrained is None:
        raise ToolkitError(f"model '{name}' has no published pretrained weights (pretrained=true is for torchvision:, "
                           "timm: and their truncations); start from a checkpoint instead")
    return spec.build_pretrained(num_classes)


def list_models() -> list[str]:
    """The built-in names (prefixed names are open-ended: see the module docstring)."""
    return list(MODEL_REGISTRY)
