"""Checkpoints: our own format, the pretrained CIFAR ResNet files, plain state dicts (``.pt``/``.pth``/``.th``) and
``.safetensors`` files, of our models or of the bare torchvision/timm network inside a wrapper.

Our format is a dict ``{"format": CHECKPOINT_FORMAT, "model": name, "state_dict": ..., "meta": {...}}`` written
atomically, so a file that exists is always complete. Everything is read as data (``torch.load(weights_only=True)``,
safetensors); a pickled whole model is loaded only with ``trust_pickle=True``, since unpickling runs code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from toolkit import ToolkitError
from toolkit.io import atomic_torch_save
from toolkit.models.foreign import classifier_name
from toolkit.models.registry import build_model

CHECKPOINT_FORMAT = "edge-distill-checkpoint-v1"
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
"""Keys under which training scripts commonly keep the weights (the first that holds them is used)."""
STRIPPED_PREFIXES = ("module.", "model.")


def save_checkpoint(model: nn.Module, model_name: str, path: str | os.PathLike, meta: dict | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model_name, "state_dict": state, "meta": meta or {}}, path)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _torch_load(path: Path, trust_pickle: bool) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint" or "not plain data"
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if not found:
            raise ToolkitError(f"cannot read checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}") from None
        if not trust_pickle:
            raise ToolkitError(
                f"checkpoint {path} is a pickled model or object ({found.group(1)}), not a state dict of tensors: "
                "unpickling it can run code from the file; save the weights with "
                "torch.save(model.state_dict(), path) instead, or set teacher.trust_pickle=true to load it if you "
                "trust the file") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - e.g. the pickled model's class cannot be imported here
        raise ToolkitError(f"cannot unpickle checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}") from None


def _tensor_dict(obj: object) -> dict | None:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    return None


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict:
    """The raw checkpoint as ``{"model": name or None, "state_dict": ..., "meta": ...}``.

    ``.safetensors`` is read with safetensors; anything else with ``torch.load(weights_only=True)``, falling back to
    full unpickling only for ``trust_pickle``. DataParallel's ``module.`` prefix is removed here."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
            raise ToolkitError(f"cannot read checkpoint {path}: {type(exc).__name__}: {_first_line(exc)}") from None
        return {"model": None, "state_dict": {k.removeprefix("module."): v for k, v in state.items()}, "meta": {}}
    raw = _torch_load(path, trust_pickle)
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        return {"model": raw.get("model"), "state_dict": raw["state_dict"], "meta": raw.get("meta", {})}
    state = _tensor_dict(raw)
    if state is None and isinstance(raw, dict):
        state = next((s for s in (_tensor_dict(raw.get(k)) for k in STATE_KEYS) if s is not None), None)
    if state is None:
        raise ToolkitError(f"checkpoint {path} holds a {type(raw).__name__} without a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    meta = {k: v for k, v in raw.items() if isinstance(v, (int, float, str))} if isinstance(raw, dict) else {}
    return {"model": None, "state_dict": state, "meta": meta}


def _align_keys(state: dict, target: dict) -> dict:
    """``state`` renamed to fit ``target`` best: ``module.``/``model.`` prefixes stripped, and the bare network's keys
    put under a wrapper's ``net.`` (a torchvision or timm state dict loads into ``torchvision:``/``timm:`` models)."""
    stripped = dict(state)
    changed = True
    while changed and stripped:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in stripped) and not any(k.startswith(prefix) for k in target):
                stripped = {k[len(prefix):]: v for k, v in stripped.items()}
                changed = True
    candidates = [state, stripped]
    if target and all(k.startswith("net.") for k in target):
        candidates += [{f"net.{k}": v for k, v in c.items()} for c in (state, stripped)]
    return max(candidates, key=lambda c: len(c.keys() & target.keys()))


def _listing(keys: list[str], what: str) -> str:
    more = ", ..." if len(keys) > 3 else ""
    return f"{len(keys)} {what} ({', '.join(keys[:3])}{more})"


def load_weights(model: nn.Module, model_name: str, path: str | os.PathLike, reset_head: bool = False,
                 trust_pickle: bool = False) -> dict:
    """Load ``path`` into ``model`` strictly; a checkpoint that does not fit raises a one-line ToolkitError.

    A classifier (:func:`classifier_name`) with another number of classes is refused, or with ``reset_head`` left
    out: ``model`` keeps its own classifier (fresh from ``build_model``) and everything else is loaded.
    ``trust_pickle``: also accept a pickled whole model (unpickling can run code from the file).
    Returns the checkpoint's ``meta``.
    """
    ckpt = read_checkpoint(path, trust_pickle=trust_pickle)
    if ckpt["model"] is not None and ckpt["model"] != model_name:
        raise ToolkitError(f"checkpoint {path} is for model '{ckpt['model']}', not '{model_name}'")
    target = _unwrap(model).state_dict()
    state = _align_keys(dict(ckpt["state_dict"]), target)
    for key in target:  # files saved by old torch versions lack BatchNorm's step counter; it is not a weight
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    head = classifier_name(model)
    head_keys = [k for k in target if k.rsplit(".", 1)[0] == head]
    for k in head_keys:
        if k in state and tuple(state[k].shape) != tuple(target[k].shape) and not reset_head:
            raise ToolkitError(
                f"checkpoint {path} has classifier {k} of shape {tuple(state[k].shape)}, model '{model_name}' needs "
                f"{tuple(target[k].shape)} ({target[k].shape[0]} classes): it was trained for other classes; set "
                "teacher.reset_head=true to load everything else with a fresh classifier")
    if reset_head and any(k in state and tuple(state[k].shape) != tuple(target[k].shape) for k in head_keys):
        for k in head_keys:
            state[k] = target[k]
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong_shape = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(_listing(missing, "missing"))
        if unexpected:
            parts.append(_listing(unexpected, "unexpected"))
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"{len(wrong_shape)} of wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(target[k].shape)})")
        raise ToolkitError(f"checkpoint {path} does not fit model '{model_name}': " + "; ".join(parts))
    _unwrap(model).load_state_dict(state, strict=True)
    return ckpt["meta"]


def load_model(model_name: str, path: str | os.PathLike, num_classes: int = 10, reset_head: bool = False,
               trust_pickle: bool = False) -> nn.Module:
    """Build ``model_name`` and load ``path`` into it (see :func:`load_weights`); returned in eval mode."""
    model = build_model(model_name, num_classes)
    load_weights(model, model_name, path, reset_head=reset_head, trust_pickle=trust_pickle)
    return model.eval()
