"""deploy.export's teacher int8 baseline: the teacher quantized with the student's PTQ recipe, recorded, never gated."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from deploy import export as export_mod
from deploy.export import ExportConfig, run_export
from deploy.manifest import read_manifest
from deploy.steps import ExportOnnxConfig, QuantizeConfig

from builders import random_pair_run
from test_bench_edge import _write_synthetic_cifar

pytestmark = pytest.mark.slow  # two to three small exports (~10-40 s on a busy 2-core CPU)


def _run(base, name="fixture"):
    return random_pair_run(base, name)


def _cfg(data, **kw) -> ExportConfig:
    return ExportConfig(export=ExportOnnxConfig(exporter="torchscript", opset=17), quantize=QuantizeConfig(calib_size=32),
                        max_drop=2.5, data_dir=str(data), **kw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("t8")
    data = _write_synthetic_cifar(base / "data")
    root = _run(base)
    run_export(root, _cfg(data), log=lambda s: None)
    return root, data


def _logits(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


def test_teacher_int8_is_recorded_with_the_students_recipe(exported):
    root, data = exported
    export_dir = root / "export"
    raw = json.loads((export_dir / "manifest.json").read_text())
    m = read_manifest(export_dir)
    assert list(m.models) == ["student.fp32", "student.int8", "teacher.fp32", "teacher.int8"]
    e, s8 = m.models["teacher.int8"], m.models["student.int8"]
    assert (e.role, e.precision, e.architecture, e.file) == ("teacher", "int8", "resnet14", "teacher.int8.onnx")
    assert e.source_checkpoint == m.models["teacher.fp32"].source_checkpoint
    q, qs = e.quantization, s8.quantization
    for k in ("mode", "activation_type", "weight_type", "per_channel", "calibration", "calib_size", "calib_seed",
              "preprocess", "reduce_range"):
        assert q[k] == qs[k], k  # the same recipe, method and calibration images (indices) as the student's
    assert q["baseline"] is True and q["nodes_to_exclude"] == []  # no fallback search
    ops = {n.op_type for n in onnx.load(str(export_dir / e.file)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # test accuracy, agreement and logit diff recomputed here on the export's test images
    test = np.load(data / "cifar10_test.npz")
    n = e.accuracy["n"]
    x = test["x"][:n].transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    y = test["y"][:n]
    l32, l8 = _logits(export_dir / "teacher.fp32.onnx", x), _logits(export_dir / e.file, x)
    assert e.accuracy["top1"] == pytest.approx(float((l8.argmax(1) == y).mean() * 100), abs=1e-4)
    assert e.accuracy["fp32_top1"] == m.models["teacher.fp32"].accuracy["top1"]
    assert e.accuracy["agreement"] == pytest.approx(float((l8.argmax(1) == l32.argmax(1)).mean() * 100), abs=1e-4)
    assert e.parity["vs_fp32_max_abs_logit_diff"] == pytest.approx(float(np.abs(l8 - l32).max()), rel=1e-4, abs=1e-5)
    assert e.accuracy["split"] == "test" and e.accuracy["gates_export"] is False
    assert e.accuracy["validation"]["n"] == s8.accuracy["validation"]["n"]
    steps = [s["step"] for s in raw["pipeline"]]
    assert steps.index("teacher_int8") > steps.index("latency") and steps[-1] == "test_accuracy"  # test read last
    assert "teacher.int8.onnx" in raw["pipeline"][-1]["inputs"]


def test_teacher_int8_never_gates_and_can_be_skipped(exported, tmp_path, monkeypatch):
    _, data = exported
    from deploy import teacher_int8
    from deploy.steps import StepError

    def broken(*a, **k):
        raise StepError("int8 quantization failed: boom")

    root = _run(tmp_path, "broken")
    monkeypatch.setattr(teacher_int8, "quantize_onnx", broken)
    lines = []
    m = run_export(root, _cfg(data), log=lines.append)  # the student's export still finishes
    assert "teacher.int8" not in m.models and any("teacher int8 baseline skipped" in s for s in lines)
    monkeypatch.undo()
    assert "--no-teacher-int8" in export_mod.build_parser().format_help()
    assert export_mod.build_parser().parse_args(["--run", "x", "--no-teacher-int8"]).teacher_int8 is False
    root = _run(tmp_path, "skipped")
    m = run_export(root, _cfg(data, teacher_int8=False), log=lambda s: None)
    assert "teacher.int8" not in m.models and not (root / "export" / "teacher.int8.onnx").exists()
    assert "teacher_int8" not in [s["step"] for s in json.loads((root / "export" / "manifest.json").read_text())["pipeline"]]
