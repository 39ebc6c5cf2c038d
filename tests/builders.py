"""Small models shared by several test files (imported as ``builders``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

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


def random_pair_run(base: Path, name: str = "fixture") -> Path:
    """``base/runs/<name>`` holding random-weight ResNet-14 teacher and ResNet-8 student checkpoints and a summary,
    as ``make distill`` would leave them (seeded): the input of the export and bench-edge tests."""
    from toolkit.models.checkpoint import save_checkpoint
    from toolkit.models.profile import count_params

    root = Path(base) / "runs" / name
    torch.manual_seed(0)
    teacher, student = build_model("resnet14").eval(), build_model("resnet8").eval()
    save_checkpoint(teacher, "resnet14", root / "teacher.pt")
    save_checkpoint(student, "resnet8", root / "student.pt")
    summary = {"preset": "fixture", "seed": 0,
               "teacher": {"name": "resnet14", "params": count_params(teacher), "checkpoint": "teacher.pt"},
               "student": {"name": "resnet8", "params": count_params(student), "checkpoint": "student.pt"}}
    (root / "summary.json").write_text(json.dumps(summary))
    return root
