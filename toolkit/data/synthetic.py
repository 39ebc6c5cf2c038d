"""A tiny synthetic image dataset with learnable classes, for unit tests that must run in seconds."""

from __future__ import annotations

import torch

from toolkit.data.cifar10 import Cifar10, ImageSet


def make_synthetic(n_train_per_class: int = 40, n_test_per_class: int = 10, num_classes: int = 10, seed: int = 0) -> Cifar10:
    """Each class is a fixed random low-frequency colour pattern; samples add noise and a random shift.

    Images uint8 (N, 3, 32, 32); a small CNN separates the classes within a few epochs.
    """
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.nn.functional.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g), size=32, mode="bilinear")

    def draw(per_class: int) -> ImageSet:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        x = prototypes[labels] * 0.7 + 0.3 * torch.rand(len(labels), 3, 32, 32, generator=g)
        shifts = torch.randint(-3, 4, (len(labels), 2), generator=g)
        x = torch.stack([torch.roll(img, (int(s[0]), int(s[1])), dims=(1, 2)) for img, s in zip(x, shifts)])
        return ImageSet((x.clamp(0, 1) * 255).round().to(torch.uint8), labels)

    return Cifar10(draw(n_train_per_class), draw(n_test_per_class), "synthetic", f"synthetic ({num_classes} classes, seed {seed})",
                   tuple(f"class{i}" for i in range(num_classes)))
