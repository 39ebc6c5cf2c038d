"""The ImageNet-derived set aligned with 8 CIFAR-10 classes (no airplane, no horse): zero-shot generalisation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from toolkit import ToolkitError
from toolkit.data.cifar10 import REPO_ROOT, ImageSet

SHARED_ALIGNED_DIR = REPO_ROOT.parent / "shared" / "datasets" / "imagenet-cifar10-aligned"
ALIGNED_CLASSES_PRESENT = (1, 2, 3, 4, 5, 6, 8, 9)  # CIFAR-10 ids present (no 0 airplane, no 7 horse)


def load_imagenet_aligned(split: str = "val", strict: bool = False, data_dir: str | os.PathLike | None = None) -> ImageSet:
    """uint8 (N, 3, 32, 32) images with CIFAR-10 label ids; ``strict`` keeps only strict synset groups."""
    if split not in ("train", "val"):
        raise ToolkitError(f"split must be 'train' or 'val', got '{split}'")
    folder = Path(data_dir) if data_dir else SHARED_ALIGNED_DIR
    path = folder / f"tinyimagenet_cifar10aligned_{split}.npz"
    if not path.is_file():
        raise ToolkitError(f"ImageNet-aligned set not found: {path}")
    with np.load(path) as z:
        x, y, keep = z["x"], z["y"].astype(np.int64), z["strict"].astype(bool)
    if strict:
        x, y = x[keep], y[keep]
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y))
