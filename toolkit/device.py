"""Device and precision chosen at run time: CUDA with AMP where present, else CPU with bf16 autocast."""

from __future__ import annotations

import contextlib
import os

import torch

from toolkit import ToolkitError


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cpu``/``cuda`` force one."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ToolkitError("device 'cuda' requested but CUDA is not available")
        if preference == "cuda":
            preference = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    elif preference != "cpu":
        raise ToolkitError(f"unknown device '{preference}' (use auto, cpu or cuda[:N])")
    return torch.device(preference)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` in {fp32, bf16, fp16}; fp16 only on CUDA."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise ToolkitError(f"unknown precision '{precision}' (use fp32, bf16 or fp16)")
    if precision == "fp16" and device.type != "cuda":
        raise ToolkitError("fp16 autocast needs CUDA; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 (CPU and CUDA with bf16 support), else fp16 on older CUDA."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"
