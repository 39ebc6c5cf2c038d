"""Small models shared by several test files (imported as ``builders``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch

from toolkit.models import build_model


def bn_perturbed_model(seed: int = 0, name: str = "resnet8") -> torch.nn.Module:
    """A random model (ResNet-8 by default) in eval mode whose BatchNorm is not the identity: BN folding is really
    exercised, and the network is far enough from linear that IG needs more than a few steps."""
    torch.manual_seed(seed)
    model = build_model(name).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model
