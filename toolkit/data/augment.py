"""Batch-wise, seeded augmentation on tensors: random crop with zero padding and horizontal flip.

The same crop and flip can be applied to extra per-sample maps (IG maps, METHOD.md section 7 defect 2),
so an overlay always lands on the pixels it was computed for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_crop_flip(batch: int, padding: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-sample parameters: (top offsets, left offsets) in [0, 2*padding], flip flags; all (B,) on CPU."""
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    return top, left, flip


def apply_crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each sample of ``x`` (B, C, H, W) (any dtype) from its zero-padded copy at (top, left), then flip.

    Output has the shape and dtype of ``x``. Offsets are in padded coordinates: ``padding`` means no shift.
    """
    b, c, h, w = x.shape
    device = x.device
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = top[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = left[:, None] + torch.arange(w, device=device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bidx = torch.arange(b, device=device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    padding: int = 4,
    extra: list[torch.Tensor] | tuple[torch.Tensor, ...] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """RandomCrop(H, padding) + RandomHorizontalFlip on a batch, the same draw applied to each ``extra`` tensor.

    ``x``: (B, C, H, W); each extra: (B, H, W) or (B, K, H, W). Returns (augmented x, augmented extras).
    """
    top, left, flip = sample_crop_flip(x.shape[0], padding, generator)
    out = apply_crop_flip(x, top, left, flip, padding)
    extras = []
    for e in extra:
        squeeze = e.dim() == 3
        e4 = e.unsqueeze(1) if squeeze else e
        r = apply_crop_flip(e4, top, left, flip, padding)
        extras.append(r.squeeze(1) if squeeze else r)
    return out, extras


def to_float(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 RGB (any shape) -> float in [0, 1]."""
    return images_uint8.to(dtype).div_(255.0)
