"""The device side installs and runs on its own: ``pip install ./device`` in a fresh venv without torch, then
``python -m deploy.predict`` and ``python -m deploy.latency`` on a tiny hand-made ONNX classifier and manifest."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from deploy.manifest import MANIFEST_NAME, Manifest, ModelEntry, Normalization, Preprocessing, TensorSpec, sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["red", "green", "blue"]


def tiny_export(folder: Path) -> Path:
    """An ONNX model (mean colour per channel -> 3 logits, identity) and a manifest that ships it."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 10.0, "W")
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "W"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [weight, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "student.fp32.onnx"
    onnx.save(model, str(path))
    entry = ModelEntry(file=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size, role="student",
                       precision="fp32", architecture="tiny-mean-colour", opset=18,
                       input=TensorSpec("input", ["batch", 3, 32, 32], layout="NCHW"),
                       output=TensorSpec("logits", ["batch", 3]),
                       preprocessing=Preprocessing(Normalization([0.0] * 3, [1.0] * 3)),
                       source_checkpoint={"path": "none", "sha256": ""})
    manifest = Manifest(models={"student.fp32": entry}, classes=CLASSES, toolkit_version="test", run="tiny",
                        ship={"model": "student.fp32", "reason": "test"})
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2))
    assert dataclasses.is_dataclass(manifest)
    return folder / MANIFEST_NAME


@pytest.mark.slow
def test_device_package_installs_and_runs_without_torch(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(REPO_ROOT / "device")], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    outside = tmp_path / "elsewhere"  # run away from the checkout: the installed copy must be the one imported
    outside.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(py), *args], cwd=outside, env=env, capture_output=True, text=True, timeout=300)

    r = run("-c", "import deploy.runtime, deploy.predict, deploy.latency, edgecommon, deploy; print(deploy.__file__)")
    assert r.returncode == 0, r.stderr
    assert str(env_dir) in r.stdout, r.stdout
    for missing in ("torch", "toolkit", "deploy.export"):
        r = run("-c", f"import {missing}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (missing, r.stderr)

    manifest = tiny_export(tmp_path / "export")
    Image.new("RGB", (32, 32), (250, 10, 10)).save(outside / "red.png")
    Image.new("RGB", (640, 480), (10, 10, 250)).save(outside / "photo.jpg")
    Image.new("L", (32, 32), 200).save(outside / "gray.png")
    r = run("-m", "deploy.predict", str(manifest), "red.png", "photo.jpg", "gray.png", "--top-k", "1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("red.png: red ") and lines[1].startswith("photo.jpg: blue "), lines
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "640x480" in notes[0] and "32x32" in notes[0], r.stderr

    r = run("-m", "deploy.latency", str(manifest), "--repeats", "20", "--warmup", "5", "--rounds", "2")
    assert r.returncode == 0, r.stderr
    assert "student.fp32" in r.stdout and " ms" in r.stdout, r.stdout


def test_predict_notes_resize_once(tmp_path, capsys):
    """In-process (fast): the first resized image gets one stderr note; same-size images get none."""
    from deploy import predict

    manifest = tiny_export(tmp_path / "export")
    Image.new("RGB", (32, 32), (10, 250, 10)).save(tmp_path / "green.png")
    assert predict.main([str(manifest), str(tmp_path / "green.png"), "--top-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith(": green 1.000") or ": green " in out
    assert "note:" not in err
    Image.new("RGB", (640, 480), (250, 10, 10)).save(tmp_path / "a.jpg")
    Image.new("RGB", (480, 640), (250, 10, 10)).save(tmp_path / "b.jpg")
    assert predict.main([str(manifest), str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]) == 0
    out, err = capsys.readouterr()
    assert [line.split(": ")[1].split()[0] for line in out.strip().splitlines()] == ["red", "red"]
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "640x480 px" in notes[0] and "32x32" in notes[0], err
    assert predict.main([str(manifest), str(tmp_path / "a.jpg"), "--strict"]) != 0  # strict refuses, no note
    assert "note:" not in capsys.readouterr().err
