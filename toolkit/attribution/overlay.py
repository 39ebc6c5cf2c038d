"""IG overlay augmentation (METHOD.md section 4), batched over samples.

The caller applies the same crop/flip to images and maps first
(``toolkit.data.augment.random_crop_flip(x, g, 4, extra=[maps])``) so each overlay lands on its own image's pixels.
"""

from __future__ import annotations

import math

import torch

from toolkit import ToolkitError
from toolkit.config import OverlayConfig


def normalised_power_maps(maps: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``m = maps ** s`` per sample, min-max normalised per sample to [0, 1]; float32 (B, H, W).

    ``maps``: (B, H, W) non-negative, any float dtype; ``exponents``: (B,). A constant map (max == min) gives zeros.
    """
    m = maps.float().clamp_min(0).pow(exponents.to(device=maps.device, dtype=torch.float32).view(-1, 1, 1))
    lo = m.amin(dim=(1, 2), keepdim=True)
    span = m.amax(dim=(1, 2), keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(m))


def apply_ig_overlay(
    x: torch.Tensor, maps: torch.Tensor, cfg: OverlayConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each image with its IG map with probability ``cfg.prob``.

    ``x``: float (B, 3, H, W) in [0, 1]; ``maps``: (B, H, W). Per sample: ``s = exp(U(ln min, ln max))``,
    ``m = minmax(map ** s)`` on 3 channels, ``x = (1 - w) * x + w * m`` when applied.
    Random draws (exponents then apply flags, both (B,)) come from ``generator`` on its own device, always the
    same count, so a seed fixes the outcome whatever ``cfg.prob`` is.
    Returns ``(x_out, applied)``: x_out has the shape and dtype of ``x``; applied is bool (B,) on x's device.
    """
    if x.dim() != 4 or maps.dim() != 3 or x.shape[0] != maps.shape[0] or x.shape[2:] != maps.shape[1:]:
        raise ToolkitError(f"overlay needs x (B, C, H, W) and maps (B, H, W) of the same B, H, W; got {tuple(x.shape)} and {tuple(maps.shape)}")
    if not 0 < cfg.exponent_min <= cfg.exponent_max:
        raise ToolkitError("overlay exponents need 0 < exponent_min <= exponent_max")
    b = x.shape[0]
    lo, hi = math.log(cfg.exponent_min), math.log(cfg.exponent_max)
    u = torch.rand(b, generator=generator, device=generator.device)
    exponents = torch.exp(lo + (hi - lo) * u).to(x.device)
    applied = (torch.rand(b, generator=generator, device=generator.device) < cfg.prob).to(x.device)
    m = normalised_power_maps(maps.to(x.device), exponents).unsqueeze(1)
    blended = (1.0 - cfg.weight) * x.float() + cfg.weight * m
    out = torch.where(applied.view(b, 1, 1, 1), blended.to(x.dtype), x)
    return out, applied
