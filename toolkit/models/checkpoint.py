"""Checkpoints: our own format, the pretrained CIFAR ResNet files (``module.``-prefixed), or a bare state dict.

Our format is a dict ``{"format": CHECKPOINT_FORMAT, "model": name, "state_dict": ..., "meta": {...}}`` written
atomically, so a file that exists is always complete.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from toolkit import ToolkitError
from toolkit.io import atomic_torch_save
from toolkit.models.registry import build_model

CHECKPOINT_FORMAT = "edge-distill-checkpoint-v1"


def save_checkpoint(model: nn.Module, model_name: str, path: str | os.PathLike, meta: dict | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model_name, "state_dict": state, "meta": meta or {}}, path)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw checkpoint as ``{"model": name or None, "state_dict": ..., "meta": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ToolkitError(f"cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(raw, dict):
        raise ToolkitError(f"checkpoint {path} holds a {type(raw).__name__}, not a dict of weights")
    if raw.get("format") == CHECKPOINT_FORMAT:
        return {"model": raw.get("model"), "state_dict": raw["state_dict"], "meta": raw.get("meta", {})}
    state = raw.get("state_dict", raw)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ToolkitError(f"checkpoint {path} has no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    meta = {k: v for k, v in raw.items() if k != "state_dict" and isinstance(v, (int, float, str))}
    return {"model": None, "state_dict": state, "meta": meta}


def load_weights(model: nn.Module, model_name: str, path: str | os.PathLike) -> dict:
    """Load ``path`` into ``model`` strictly; a checkpoint of another model raises a one-line ToolkitError.

    Returns the checkpoint's ``meta``.
    """
    ckpt = read_checkpoint(path)
    if ckpt["model"] is not None and ckpt["model"] != model_name:
        raise ToolkitError(f"checkpoint {path} is for model '{ckpt['model']}', not '{model_name}'")
    target = _unwrap(model).state_dict()
    state = dict(ckpt["state_dict"])
    for key in target:  # files saved by old torch versions lack BatchNorm's step counter; it is not a weight
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong_shape = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} of wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)})")
        raise ToolkitError(f"checkpoint {path} does not fit model '{model_name}': " + "; ".join(parts))
    _unwrap(model).load_state_dict(state, strict=True)
    return ckpt["meta"]


def load_model(model_name: str, path: str | os.PathLike, num_classes: int = 10) -> nn.Module:
    """Build ``model_name`` and load ``path`` into it; returned in eval mode."""
    model = build_model(model_name, num_classes)
    load_weights(model, model_name, path)
    return model.eval()
