"""Students derived from a teacher: ``truncate:<L>:<base>`` removes the last L blocks of the base's feature extractor.

Truncatable bases and what a block is:

- ``mobilenetv2_cifar`` (and its registered truncations): the 19 children of ``features``; the result is the same
  network as the built-in ``mobilenetv2_cifar_L<n>`` (``truncate:5:mobilenetv2_cifar`` = ``mobilenetv2_cifar_L5``);
- ``torchvision:<builder>`` with a ``features`` sequence (mobilenet_v2, mobilenet_v3_small/large, efficientnet_b0..b7,
  efficientnet_v2_*, densenet*, vgg*, convnext_*, ...): the children of ``features``;
- ``timm:<name>`` of a CNN with feature stages: the stages of timm's ``feature_info`` (built ``features_only``).

After the kept blocks come global average pooling and a fresh ``Linear`` for the data's classes (no dropout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from toolkit import ToolkitError
from toolkit.models.foreign import TIMM_PREFIX, TORCHVISION_PREFIX, build_truncated_foreign, feature_blocks
from toolkit.models.mobilenetv2_cifar import NUM_FEATURE_CHILDREN, MobileNetV2Cifar

TRUNCATE_PREFIX = "truncate:"
TRUNCATABLE = ("mobilenetv2_cifar (and mobilenetv2_cifar_L<n>), torchvision models with a `features` block sequence "
               "(mobilenet_v2, mobilenet_v3_small/large, efficientnet_b0..b7, ...), timm CNNs with feature stages")
_CIFAR_MOBILENET = re.compile(r"mobilenetv2_cifar(?:_L(\d+))?")


@dataclass(frozen=True)
class Truncation:
    """A parsed ``truncate:<L>:<base>``: ``blocks`` = how many blocks the base has, ``removed`` = L."""

    base: str
    removed: int
    blocks: int

    @property
    def name(self) -> str:
        return f"{TRUNCATE_PREFIX}{self.removed}:{self.base}"

    @property
    def kept(self) -> int:
        return self.blocks - self.removed


def _cifar_removed(base: str) -> int | None:
    """How many blocks a built-in MobileNetV2-CIFAR base already lacks, or None for another base."""
    from toolkit.models.registry import MODEL_REGISTRY

    m = _CIFAR_MOBILENET.fullmatch(base)
    return (int(m.group(1) or 0)) if m and base in MODEL_REGISTRY else None


def block_count(base: str) -> int:
    """Number of removable blocks of ``base`` (0 when it cannot be truncated); ``base`` must be a known model."""
    removed = _cifar_removed(base)
    if removed is not None:
        return NUM_FEATURE_CHILDREN - removed
    if base.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)):
        return len(feature_blocks(base))
    return 0


def parse_truncation(name: str) -> Truncation:
    """Check ``truncate:<L>:<base>``: a known base with a block sequence and 1 <= L < its number of blocks."""
    from toolkit.models.registry import get_spec

    parts = name.split(":", 2)
    if len(parts) < 3 or not parts[2]:
        raise ToolkitError(f"'{name}' names no base: write truncate:<L>:<base>, e.g. truncate:5:mobilenetv2_cifar "
                           "(a run's student truncate:<L> takes the teacher as base)")
    if not re.fullmatch(r"\d+", parts[1]):
        raise ToolkitError(f"'{name}': L in truncate:<L>:<base> must be a whole number of blocks, got '{parts[1]}'")
    removed, base = int(parts[1]), parts[2]
    if base.startswith(TRUNCATE_PREFIX):
        raise ToolkitError(f"'{name}': truncate a network, not a truncation (add the two L's instead)")
    get_spec(base)  # an unknown base is an unknown model
    blocks = block_count(base)
    if blocks < 2:
        raise ToolkitError(f"'{base}' cannot be truncated: it has no sequence of feature blocks; truncatable bases: "
                           f"{TRUNCATABLE}")
    if not 1 <= removed < blocks:
        raise ToolkitError(f"'{name}': L must be 1 to {blocks - 1} ({base} has {blocks} blocks and keeps at least one)")
    return Truncation(base, removed, blocks)


def truncated_at_layers(t: Truncation) -> tuple[str, ...]:
    """Default AT layer of a truncation, the same path in the base: METHOD.md's rule for MobileNetV2-CIFAR; for
    foreign bases the middle block ``N // 2``, or the last kept block when that one is removed."""
    removed = _cifar_removed(t.base)
    if removed is not None:
        from toolkit.models.registry import mobilenet_at_layer

        return (mobilenet_at_layer(removed + t.removed),)
    path, _ = feature_blocks(t.base)[min(t.blocks // 2, t.kept - 1)]
    return (path,)


def build_truncated(t: Truncation, num_classes: int = 10, pretrained: bool = False) -> nn.Module:
    """The network of ``t``; ``pretrained``: the kept blocks start from the base's published weights."""
    removed = _cifar_removed(t.base)
    if removed is not None:
        if pretrained:
            raise ToolkitError(f"'{t.base}' has no published pretrained weights; pretrained=true is for torchvision: "
                               "and timm: bases")
        return MobileNetV2Cifar(num_classes, removed=removed + t.removed)
    return build_truncated_foreign(t.base, t.kept, num_classes, pretrained)


def derivable_students(teacher_name: str) -> list[str]:
    """``truncate:<L>:<teacher>`` for L = 1 .. blocks - 1, or [] when the teacher has no block sequence."""
    from toolkit.models.registry import get_spec

    if teacher_name.startswith(TRUNCATE_PREFIX):
        return []
    get_spec(teacher_name)
    blocks = block_count(teacher_name)
    return [f"{TRUNCATE_PREFIX}{k}:{teacher_name}" for k in range(1, blocks)] if blocks >= 2 else []


def canonical_student_name(student: str, teacher: str) -> str:
    """``truncate:<L>`` (no base) -> ``truncate:<L>:<teacher>``; every other name unchanged."""
    parts = student.split(":")
    if len(parts) == 2 and parts[0] + ":" == TRUNCATE_PREFIX:
        return f"{student}:{teacher}"
    return student
