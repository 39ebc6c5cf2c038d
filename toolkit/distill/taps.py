"""Which layers attention transfer taps, and the forward hooks that capture them.

``loss.at_layers`` items are a module path present in both networks (``layer3``) or a ``[teacher_path, student_path]``
pair (``[layer4, features.12]``). Paths are written as in the network itself: for a wrapped ``torchvision:``/``timm:``
model (``ImageClassifier``) they are looked up under the wrapper too (``layer3`` -> ``net.layer3``), and for a
truncation inside its kept blocks (``features.6`` -> ``net.features.6``), so a base's paths fit its truncations.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from toolkit import ToolkitError
from toolkit.models.foreign import find_module, top_level_modules


def _root(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel


class FeatureTap:
    """Forward hooks that keep the outputs of named modules from the latest forward pass."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        model = _root(model)
        modules = dict(model.named_modules())
        found = [find_module(model, n) for n in names]
        missing = [n for n, f in zip(names, found) if f is None]
        if missing:
            raise ValueError(f"model has no module named {missing[0]!r} for attention transfer")
        self.names = tuple(names)
        self.paths = tuple(found)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[p].register_forward_hook(self._hook(n)) for n, p in zip(self.names, self.paths)]

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            self.outputs[name] = output
        return hook

    def take(self) -> list[torch.Tensor]:
        out = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.outputs = {}


def as_pairs(at_layers: Sequence[str | Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """``at_layers`` items as (teacher path, student path): a string names the same path in both networks."""
    pairs = []
    for item in at_layers:
        if isinstance(item, str):
            pairs.append((item, item))
        elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(p, str) for p in item):
            pairs.append((item[0], item[1]))
        else:
            raise ToolkitError(f"loss.at_layers: {item!r} is neither a module path nor a [teacher_path, student_path] "
                               "pair")
    return tuple(pairs)


def _resolve(model: nn.Module, path: str, role: str, name: str) -> str:
    found = find_module(model, path)
    if found is None:
        top = ", ".join(top_level_modules(model))
        raise ToolkitError(f"loss.at_layers: {role} {name} has no module named '{path}' (its top-level modules: {top}; "
                           "dotted paths reach deeper, e.g. layer3.0 or features.6)")
    return found


def resolve_at_pairs(teacher: nn.Module, student: nn.Module, at_layers: list | tuple | None, teacher_name: str,
                     student_name: str) -> tuple[tuple[str, str], ...]:
    """The (teacher module path, student module path) pairs attention transfer taps, as found in the networks.

    ``at_layers`` None (or empty): the student's family rule (``ModelSpec.at_layers``, the same paths in both) when
    teacher and student are of one family; networks of different families need explicit pairs.
    """
    from toolkit.models.derive import canonical_student_name
    from toolkit.models.registry import get_spec

    student_name = canonical_student_name(student_name, teacher_name)
    if not at_layers:
        t_spec, s_spec = get_spec(teacher_name), get_spec(student_name)
        if t_spec.family != s_spec.family:
            t_rule, s_rule = ",".join(t_spec.at_layers) or "none", ",".join(s_spec.at_layers) or "none"
            raise ToolkitError(
                f"attention transfer pairs layers by name: {student_name} and {teacher_name} are of different "
                "families; name the pairs with loss.at_layers=[[teacher_layer, student_layer]] (their own defaults: "
                f"teacher {t_rule}; student {s_rule})")
        if not s_spec.at_layers:
            raise ToolkitError(f"no default attention-transfer layers are known for {student_name}: name them with "
                               "loss.at_layers=[layer] or [[teacher_layer, student_layer]]")
        at_layers = s_spec.at_layers
    pairs = as_pairs(at_layers)
    students = [_resolve(student, s, "student", student_name) for _, s in pairs]  # the student's paths checked first
    teachers = [_resolve(teacher, t, "teacher", teacher_name) for t, _ in pairs]
    return tuple(zip(teachers, students))
