"""Seeded, stratified index splits: a validation hold-out and class-balanced subsets."""

from __future__ import annotations

import numpy as np
import torch

from toolkit import ToolkitError


def _per_class_counts(labels: np.ndarray, total: int) -> dict[int, int]:
    """Allocate ``total`` over classes in proportion to their frequency (largest remainders)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * total
    alloc = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - alloc), kind="stable")[: total - alloc.sum()]:
        alloc[i] += 1
    return {int(c): int(a) for c, a in zip(classes, alloc)}


def stratified_sample(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """``size`` indices drawn without replacement, class proportions kept, sorted ascending; seeded."""
    y = labels.cpu().numpy()
    if not 0 < size <= len(y):
        raise ToolkitError(f"cannot draw {size} samples from {len(y)}")
    rng = np.random.default_rng(seed)
    picked = []
    for cls, k in _per_class_counts(y, size).items():
        members = np.flatnonzero(y == cls)
        picked.append(rng.choice(members, size=k, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(picked))).long()


def train_val_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified hold-out: (train indices, validation indices), disjoint, both sorted. ``val_size`` 0 allowed."""
    n = int(labels.shape[0])
    if val_size == 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    if not 0 < val_size < n:
        raise ToolkitError(f"validation size must be in [0, {n}), got {val_size}")
    val = stratified_sample(labels, val_size, seed)
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


def subset_size(n: int, size: int | float | None) -> int:
    """``size`` as a count: None keeps all; a number in (0, 1] is a fraction of ``n`` (so ``1`` and ``1.0`` both keep
    all, never one image); a whole number above 1 is a count."""
    if size is None:
        return n
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ToolkitError(f"subset size must be a fraction in (0, 1] or a count in [2, {n}], got {size!r}")
    if 0 < size <= 1:
        return max(1, round(n * size))
    if int(size) != size or not 1 < int(size) <= n:
        raise ToolkitError(f"subset size must be a fraction in (0, 1] or a count in [2, {n}], got {size}")
    return int(size)


def holdout_size(n: int, size: int | float, what: str = "hold-out size") -> int:
    """A hold-out of ``n`` rows as a count: a number in (0, 1) is a fraction of ``n`` (at least 1 row), a whole
    number >= 0 a count; it must leave at least one row behind. ``what`` names the setting in the error."""
    if isinstance(size, bool) or not isinstance(size, (int, float)) or size < 0 or (size >= 1 and int(size) != size):
        raise ToolkitError(f"{what} must be a count >= 0 or a fraction in (0, 1), got {size!r}")
    count = max(1, round(n * size)) if 0 < size < 1 else int(size)
    if count and count >= n:
        raise ToolkitError(f"{what}={size!r} takes {count} of only {n} images, leaving none to train on: "
                           f"use a smaller count or a fraction such as 0.1")
    return count
