"""deploy.targets.executorch on a tiny run (a 2k-parameter MobileNetV2 student, a ResNet-8 teacher, random images):
fp32 and int8 .pte are built with XNNPACK, delegation is recorded, parity holds, the programs run through
``open_runner`` and ``deploy.runtime.Classifier`` (batch-1 chunks), and the manifest validates."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("executorch.runtime")
torch = pytest.importorskip("torch")

from deploy.manifest import read_manifest  # noqa: E402
from deploy.runtime import Classifier  # noqa: E402
from deploy.targets import executorch as et  # noqa: E402
from deploy.targets.runtimes import open_runner  # noqa: E402
from edgecommon.hashing import sha256_file  # noqa: E402

SIZE, CLASSES = 32, 5
MODELS = {"student": "mobilenetv2_cifar_L17", "teacher": "resnet8"}


def _entry(file, role):
    return {"file": file.name, "sha256": sha256_file(file), "size_bytes": file.stat().st_size, "role": role,
            "precision": "fp32", "architecture": MODELS[role], "opset": 18,
            "input": {"name": "input", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32", "layout": "NCHW"},
            "output": {"name": "logits", "shape": ["batch", CLASSES], "dtype": "float32", "layout": None},
            "preprocessing": {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3, "in_graph": True},
                              "image_size": [SIZE, SIZE]},
            "source_checkpoint": {"path": f"{role}.pt", "sha256": "0" * 64}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from toolkit.models import build_model, save_checkpoint

    run = tmp_path_factory.mktemp("run")
    export = run / "export"
    export.mkdir()
    models = {}
    for role, name in MODELS.items():
        torch.manual_seed(0)
        models[role] = build_model(name, CLASSES).eval()
        save_checkpoint(models[role], name, run / f"{role}.pt")
        (export / f"{role}.fp32.onnx").write_bytes(b"placeholder: the .pte is built from the checkpoint")
    (run / "summary.json").write_text(json.dumps({r: {"name": n, "checkpoint": f"{r}.pt"} for r, n in MODELS.items()}))
    manifest = {"schema": "edge-distill-export-manifest", "schema_version": 1, "schema_minor": 1,
                "models": {f"{r}.fp32": _entry(export / f"{r}.fp32.onnx", r) for r in MODELS},
                "classes": [f"c{i}" for i in range(CLASSES)], "toolkit_version": "test", "run": "tiny",
                "ship": {"model": "student.fp32", "reason": "test"}}
    (export / "manifest.json").write_text(json.dumps(manifest))
    rng = np.random.default_rng(0)
    data = {"calib": rng.random((16, 3, SIZE, SIZE), dtype=np.float32),
            "test": rng.random((24, 3, SIZE, SIZE), dtype=np.float32), "labels": rng.integers(0, CLASSES, 24)}
    block = et.build(run, data=data, log=lambda s: None)
    return run, export, models, data, block


@pytest.mark.slow
def test_pte_entries_delegation_and_parity(built):
    _, export, _, _, block = built
    keys = [f"{r}.{p}.pte" for r in MODELS for p in ("fp32", "int8")]
    assert block["models"] == keys
    m = read_manifest(export)
    raw = json.loads((export / "manifest.json").read_text())["models"]
    for key in keys:
        e = m.entry(key)
        assert (e.runtime, e.format, e.file) == ("executorch", "pte", key)
        assert e.sha256 == sha256_file(export / key) and e.size_bytes == (export / key).stat().st_size
        assert e.input.shape == [1, 3, SIZE, SIZE] and e.output.shape == [1, CLASSES]
        assert e.parity["passed"] and e.parity["n"] == 24
        d = raw[key]["executorch"]["delegation"]
        assert d["delegated_nodes"] > 0 and d["delegated_subgraphs"] >= 1
    assert m.entry("student.fp32.pte").parity["max_abs_diff"] <= et.FP32_ATOL
    assert m.entry("student.int8.pte").quantization["calibration_images"] == 16
    assert (export / "student.int8.pte").stat().st_size < (export / "student.fp32.pte").stat().st_size * 1.5
    assert not [p for p in export.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_pte_runs_like_eager(built):
    _, export, models, data, _ = built
    x = data["test"][:3]
    with torch.no_grad():
        want = models["teacher"](torch.from_numpy(x)).numpy()
    run = open_runner(export / "teacher.fp32.pte", "executorch", 1)
    got = np.concatenate([run(x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    clf = Classifier(export, "teacher.fp32.pte", threads=1)  # fixed batch 1: the classifier chunks
    np.testing.assert_allclose(clf.logits(x), want, atol=1e-3, rtol=0)
    q = Classifier(export, "student.int8.pte", threads=1).logits(x)
    assert q.shape == (3, CLASSES) and np.isfinite(q).all()
