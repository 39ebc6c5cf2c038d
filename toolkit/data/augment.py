"""Batch-wise, seeded augmentation on tensors: pad-and-crop + flip (CIFAR), random resized crop + flip (larger images).

The same crop and flip can be applied to extra per-sample maps (IG maps, METHOD.md section 7 defect 2),
so an overlay always lands on the pixels it was computed for. ``augment_batch`` dispatches on an ``AugmentSpec``
(``resolve_augment`` turns ``data.augment`` into one for an image size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from toolkit import ToolkitError


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


def sample_resized_crop(batch: int, generator: torch.Generator, scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), aspect: float = 1.0, attempts: int = 10
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop boxes as fractions of the image: (top, left, height, width) float64 (B,) in [0, 1], flip bool (B,).

    As torchvision's RandomResizedCrop: area fraction ~ U(scale), log aspect (box width/height in pixels) ~ U(log
    ratio), the first of ``attempts`` draws that fits inside the image, else the whole image; the box position is
    uniform. ``aspect``: the image's width/height. Boxes are continuous (no rounding to whole pixels). A fixed number
    of draws per call, so the generator stays in step.
    """
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise ToolkitError(f"random resized crop needs 0 < scale min <= max <= 1 and 0 < ratio min <= max, got {scale}, {ratio}")
    area = torch.empty(batch, attempts, dtype=torch.float64).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(batch, attempts, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w = torch.sqrt(area * torch.exp(log_r) / aspect)  # fractions of the image's width and height
    h = torch.sqrt(area / torch.exp(log_r) * aspect)
    fits = (w <= 1) & (h <= 1)
    first = torch.argmax(fits.to(torch.int8), dim=1)  # index of the first fitting draw (0 when none fits)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first[:, None])[:, 0], torch.ones(batch, dtype=torch.float64))
    h = torch.where(any_fit, h.gather(1, first[:, None])[:, 0], torch.ones(batch, dtype=torch.float64))
    top = torch.rand(batch, generator=generator, dtype=torch.float64) * (1 - h)
    left = torch.rand(batch, generator=generator, dtype=torch.float64) * (1 - w)
    flip = torch.rand(batch, generator=generator) < 0.5
    return top, left, h, w, flip


def crop_theta(top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Affine matrices (B, 2, 3) for ``F.affine_grid`` (align_corners=False) that sample each box, flipped where asked."""
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(top.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = 2 * left + w - 1  # box centre in [-1, 1] coordinates
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * top + h - 1
    return theta


def _resample(t: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of float (B, C, H, W) through ``theta`` at the input size (edges replicated)."""
    if not t.is_floating_point():
        raise ToolkitError(f"random resized crop needs float tensors, got {t.dtype}")
    grid = F.affine_grid(theta.to(device=t.device, dtype=t.dtype), list(t.shape), align_corners=False)
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_flip(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    extra: list[torch.Tensor] | tuple[torch.Tensor, ...] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """RandomResizedCrop(H x W, scale, ratio) + RandomHorizontalFlip on a batch, bilinear, output size = input size.

    ``x``: float (B, C, H, W); each extra: float (B, H', W') or (B, K, H', W'), given the same per-sample box and flip
    (boxes are fractions of the image, so maps at another resolution stay aligned). Returns (augmented x, extras).
    One batched ``grid_sample`` per tensor (no antialiasing needed: a box is never larger than the image).
    """
    top, left, h, w, flip = sample_resized_crop(x.shape[0], generator, scale, ratio, x.shape[3] / x.shape[2])
    theta = crop_theta(top, left, h, w, flip)
    out = _resample(x, theta)
    extras = []
    for e in extra:
        squeeze = e.dim() == 3
        r = _resample(e.unsqueeze(1) if squeeze else e, theta)
        extras.append(r.squeeze(1) if squeeze else r)
    return out, extras


AUGMENT_KINDS = ("padcrop", "rrc", "none")


@dataclass(frozen=True)
class AugmentSpec:
    """A training crop/flip policy. ``kind``: padcrop (zero-pad ``padding`` px, random crop, flip), rrc (random
    resized crop with area fraction in [``scale_min``, 1], aspect 3/4..4/3, flip) or none."""

    kind: str = "padcrop"
    padding: int = 4
    scale_min: float = 0.25


def resolve_augment(augment: str, image_size: int, padding: int | None = None, scale_min: float = 0.25) -> AugmentSpec:
    """``data.augment`` for images of ``image_size`` px: ``auto`` is padcrop up to 64 px, rrc above; padding None =
    image_size // 8 (4 at 32 px)."""
    kind = str(augment).lower()
    if kind == "auto":
        kind = "padcrop" if image_size <= 64 else "rrc"
    if kind not in AUGMENT_KINDS:
        raise ToolkitError(f"data.augment must be auto, padcrop, rrc or none, got '{augment}'")
    pad = image_size // 8 if padding is None else padding
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ToolkitError(f"data.padding must be a whole number >= 0 or null, got {padding!r}")
    if isinstance(scale_min, bool) or not isinstance(scale_min, (int, float)) or not 0 < scale_min <= 1:
        raise ToolkitError(f"data.rrc_scale_min must be in (0, 1], got {scale_min!r}")
    return AugmentSpec(kind, pad, float(scale_min))


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    spec: AugmentSpec,
    extra: list[torch.Tensor] | tuple[torch.Tensor, ...] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Apply ``spec`` to float ``x`` (B, C, H, W) and the same draw to each extra ((B, H, W) or (B, K, H, W))."""
    if spec.kind == "padcrop":
        return random_crop_flip(x, generator, spec.padding, extra)
    if spec.kind == "rrc":
        return random_resized_crop_flip(x, generator, (spec.scale_min, 1.0), extra=extra)
    if spec.kind == "none":
        return x, list(extra)
    raise ToolkitError(f"unknown augmentation kind '{spec.kind}'; known: {', '.join(AUGMENT_KINDS)}")
