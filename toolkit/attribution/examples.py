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


def save_overlay_examples(images: torch.Tensor, maps: torch.Tensor, cfg: OverlayConfig, path: Path, seed: int = 0) -> None:
    """Write a PNG grid to ``path`` (atomically): columns are samples; rows are the original image, the IG map
    (heat colormap) and the overlay forced on (prob 1, exponent drawn from ``seed``).

    ``images``: uint8 (K, 3, H, W); ``maps``: (K, H, W) any float dtype.
    """
    if images.dim() != 4 or images.dtype != torch.uint8 or maps.shape != (images.shape[0], *images.shape[2:]):
        raise ToolkitError(f"examples need uint8 images (K, 3, H, W) and maps (K, H, W); got {tuple(images.shape)} "
                           f"{images.dtype} and {tuple(maps.shape)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = images.shape[0]
    x = images.float() / 255.0
    g = torch.Generator().manual_seed(seed)
    overlaid, _ = apply_ig_overlay(x, maps, dataclasses.replace(cfg, prob=1.0), g)
    fig, axes = plt.subplots(3, k, figsize=(1.2 * k + 0.8, 3.9), squeeze=False)
    rows = [("image", x), ("IG map", maps.float()), (f"overlay (w={cfg.weight})", overlaid)]
    for r, (title, data) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            if data.dim() == 4:
                ax.imshow(data[c].permute(1, 2, 0).clamp(0, 1).numpy())
            else:
                ax.imshow(data[c].numpy(), cmap="inferno")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
