"""Shared fixtures. Integration tests need ../shared (CIFAR-10 copy, checkpoints) and skip without it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from toolkit.data.cifar10 import SHARED_CIFAR_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_CKPT_DIR = REPO_ROOT.parent / "shared" / "checkpoints" / "resnet-cifar10"
RESNET_CHECKPOINTS = {
    "resnet20": SHARED_CKPT_DIR / "resnet20-12fca82f.th",
    "resnet32": SHARED_CKPT_DIR / "resnet32-d509ac18.th",
    "resnet44": SHARED_CKPT_DIR / "resnet44-014dd654.th",
    "resnet56": SHARED_CKPT_DIR / "resnet56-4bfd9763.th",
}

requires_shared_data = pytest.mark.skipif(not SHARED_CIFAR_DIR.is_dir(), reason="../shared/datasets/cifar10 not present")
requires_shared_checkpoints = pytest.mark.skipif(not SHARED_CKPT_DIR.is_dir(), reason="../shared/checkpoints not present")


@pytest.fixture(autouse=True, scope="session")
def _deterministic_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def cifar10():
    if not SHARED_CIFAR_DIR.is_dir():
        pytest.skip("../shared/datasets/cifar10 not present")
    from toolkit.data import load_cifar10

    return load_cifar10()


@pytest.fixture
def pretrained_run(tmp_path):
    """A run folder whose teacher is the pretrained ResNet-20 and student a random-init ResNet-8.

    For export/bench tests that need the run-folder contract (toolkit/runs.py) without training.
    """
    if not SHARED_CKPT_DIR.is_dir():
        pytest.skip("../shared/checkpoints not present")
    from toolkit.models import build_model, load_model, save_checkpoint
    from toolkit.models.profile import count_params

    root = tmp_path / "runs" / "fixture"
    teacher = load_model("resnet20", RESNET_CHECKPOINTS["resnet20"])
    save_checkpoint(teacher, "resnet20", root / "teacher.pt")
    torch.manual_seed(0)
    student = build_model("resnet8")
    save_checkpoint(student, "resnet8", root / "student.pt")
    summary = {
        "preset": "fixture", "configuration": "KD_IG", "config": "KD_IG", "seed": 0,
        "data": "CIFAR-10 (JPEG q75 copy): 55,000 of 60,000 images JPEG-decoded, labels exact",
        "teacher": {"name": "resnet20", "params": count_params(teacher), "test_acc": None, "checkpoint": "teacher.pt"},
        "student": {"name": "resnet8", "params": count_params(student), "test_acc": None, "checkpoint": "student.pt"},
        "compression_factor": round(count_params(teacher) / count_params(student), 2),
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    return root
