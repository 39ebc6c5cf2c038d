"""The one image rule: how a picture file becomes the uint8 RGB square a model sees.

Used by the training side (``toolkit.data.folder`` decodes image folders with it), the device runtime
(``deploy.runtime.load_image``/``prepare_image``) and the export manifest (``resize_rule``), so what a model is trained
on and what it is fed on a device are the same pixels. Standard library, numpy and Pillow only.

- colour (``to_rgb``): any Pillow mode in ``CONVERTIBLE_MODES`` becomes 8-bit RGB with Pillow's ``convert``: grayscale
  replicated to 3 channels, palette looked up, CMYK/YCbCr/LAB/HSV converted (no ICC colour management). Alpha is
  dropped: the colour stored under each pixel is kept as is, not composited over any background (what the runtime has
  always done). 16-bit, 32-bit integer and float modes (``I;16``, ``I``, ``F``) are refused rather than clipped.
- size (``fit_image``): shorter side scaled to the target with Pillow's bilinear filter (antialiased when shrinking),
  then the centre crop; an image already of the target size is returned as is (bit-identical).
- files (``open_image``): fully decoded on open, so a truncated or corrupt file fails here, not later. EXIF
  orientation is not applied (the stored pixel grid is used, as torchvision's ImageFolder loader does).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgecommon import ToolkitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
"""File suffixes (lower case) treated as images when a folder is listed (device runtime and image-folder datasets)."""
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
"""Pillow modes ``to_rgb`` converts; anything else (16-bit, float) is refused."""
COLOR_RULE = "any Pillow mode convertible to RGB (grayscale replicated to 3 channels, alpha and palette dropped)"


def resize_rule(size: int) -> str:
    """The rule as text (written into manifests and cache keys), e.g. for ``size`` 32 px."""
    return f"RGB; shorter side to {size} px (Pillow bilinear, antialiased), then centre crop {size}x{size}"


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file (first frame); one-line ToolkitError when missing, not an image or broken."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except UnidentifiedImageError:
        raise ToolkitError(f"{path} is not an image Pillow can read") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise OSError, ValueError, SyntaxError, EOFError, ...
        text = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ToolkitError(f"cannot decode image {path}: {text}") from None


def to_rgb(img: Image.Image, name: str = "image") -> Image.Image:
    """``img`` as 8-bit RGB (the module's colour rule); the same object when it is RGB already."""
    if img.mode == "RGB":
        return img
    if img.mode not in CONVERTIBLE_MODES:
        raise ToolkitError(f"{name} has mode {img.mode}, which cannot be converted to 8-bit RGB without loss")
    # a palette may hold transparency: expand it through RGBA so every palette entry maps the same way, then drop alpha
    return img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA") else img.convert("RGB")


def fit_image(img: Image.Image, size: int | tuple[int, int], name: str = "image") -> np.ndarray:
    """Pillow image -> uint8 RGB (H, W, 3): ``to_rgb``, shorter side to the target, centre crop.

    ``size``: side in pixels, or (height, width). An RGB image of exactly that size comes back bit-identical.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ToolkitError(f"target image size must be positive, got {h}x{w}")
    img = to_rgb(img, name)
    if img.size != (w, h):
        scale = max(w / img.size[0], h / img.size[1])
        new = (max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale)))
        img = img.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - w) // 2, (new[1] - h) // 2
        img = img.crop((left, top, left + w, top + h))
    return np.asarray(img, dtype=np.uint8)


def load_fitted(path: str | os.PathLike, size: int | tuple[int, int]) -> np.ndarray:
    """``open_image`` then ``fit_image``: an image file as uint8 RGB (H, W, 3) under the rule."""
    return fit_image(open_image(path), size, name=str(path))
