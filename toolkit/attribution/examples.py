"""A PNG grid showing images, their IG maps and the overlay, for eyeballing that maps sit on their images."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch

from toolkit import ToolkitError
from toolkit.attribution.overlay import apply_ig_overlay
from toolkit.config import OverlayConfig
from toolkit.io import atomic_write_bytes


def save_overlay_examples(images: torch.Tensor, maps: torch.Tensor, cfg: OverlayConfig, path: Path, seed: int = 0,
                          labels: list[str] | None = None) -> None:
    """Write a PNG grid to ``path`` (atomically): columns are samples, titled with their class name (``labels``, one
    per sample, when given); rows are the original image, the IG map (one shared colour scale, with a colour bar) and
    the overlay forced on (prob 1, exponent drawn from ``seed``).

    ``images``: uint8 (K, 3, H, W); ``maps``: (K, H, W) any float dtype.
    """
    if images.dim() != 4 or images.dtype != torch.uint8 or maps.shape != (images.shape[0], *images.shape[2:]):
        raise ToolkitError(f"examples need uint8 images (K, 3, H, W) and maps (K, H, W); got {tuple(images.shape)} "
                           f"{images.dtype} and {tuple(maps.shape)}")
    if labels is not None and len(labels) != images.shape[0]:
        raise ToolkitError(f"examples need one label per image; got {len(labels)} for {images.shape[0]}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = images.shape[0]
    x = images.float() / 255.0
    g = torch.Generator().manual_seed(seed)
    overlaid, _ = apply_ig_overlay(x, maps, dataclasses.replace(cfg, prob=1.0), g)
    m = maps.float()
    vmin, vmax = float(m.min()), float(m.max())
    if vmax <= vmin:
        vmax = vmin + 1e-6
    fig, axes = plt.subplots(3, k, figsize=(1.25 * k + 1.6, 4.4), squeeze=False, layout="constrained")
    rows = [("image", x), ("IG map", m), (f"overlay\n(weight {cfg.weight})", overlaid)]
    heat = None
    for r, (title, data) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            if data.dim() == 4:
                ax.imshow(data[c].permute(1, 2, 0).clamp(0, 1).numpy())
            else:
                heat = ax.imshow(data[c].numpy(), cmap="inferno", vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and labels is not None:
                ax.set_title(str(labels[c]), fontsize=8)
        axes[r][0].set_ylabel(title, fontsize=8)
    if heat is not None:
        bar = fig.colorbar(heat, ax=list(axes[1]), shrink=0.9, pad=0.02)
        bar.set_label("IG attribution\n(map value)", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle("Integrated-gradients overlay: originals, their IG maps, and the overlay the student trains on",
                 fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
