"""deploy.targets.ort_format on a tiny hand-made export: .ort files load and match their source ONNX, the batch-1
variant has a fixed input shape, the mobile usability figures are recorded (NNAPI coverage of the fixed variant at
least the dynamic one's), the reduced-operator config is written, and the rewritten manifest validates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime.tools.convert_onnx_models_to_ort")

from deploy.manifest import read_manifest  # noqa: E402
from deploy.runtime import create_session  # noqa: E402
from deploy.targets import ort_format  # noqa: E402
from edgecommon.hashing import sha256_file  # noqa: E402

SIZE, CLASSES = 8, 5


def _tiny_fp32(path: Path) -> None:
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w1", rng.normal(0, 0.3, (4, 3, 3, 3))), ("b1", rng.normal(0, 0.1, 4)),
        ("w2", rng.normal(0, 0.3, (6, 4, 3, 3))), ("b2", rng.normal(0, 0.1, 6)),
        ("wf", rng.normal(0, 0.3, (CLASSES, 6))), ("bf", rng.normal(0, 0.1, CLASSES)))]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c2"], ["hs"], alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c2", "hs"], ["hw"]),
             helper.make_node("GlobalAveragePool", ["hw"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tiny_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            x = np.random.default_rng(1).random((16, 3, SIZE, SIZE), dtype=np.float32)
            self.items = iter([{"input": x[i:i + 4]} for i in range(0, 16, 4)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def _entry(file: Path, precision: str) -> dict:
    return {"file": file.name, "sha256": sha256_file(file), "size_bytes": file.stat().st_size, "role": "student",
            "precision": precision, "architecture": "tiny", "opset": 17,
            "input": {"name": "input", "shape": ["batch", 3, SIZE, SIZE], "dtype": "float32", "layout": "NCHW"},
            "output": {"name": "logits", "shape": ["batch", CLASSES], "dtype": "float32", "layout": None},
            "preprocessing": {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3, "in_graph": True},
                              "image_size": [SIZE, SIZE]},
            "source_checkpoint": {"path": "student.pt", "sha256": "0" * 64}}


def make_export(run, image_hw=(12, 10)):
    """``run/export/manifest.json`` listing a tiny fp32 ONNX and its QDQ int8 model, plus 5 seeded ``image_hw``
    images in ``run/images``; returns (export folder, images folder). Shared with the OpenVINO target's tests."""
    from PIL import Image

    export = run / "export"
    export.mkdir(parents=True)
    _tiny_fp32(export / "student.fp32.onnx")
    _tiny_int8(export / "student.fp32.onnx", export / "student.int8.onnx")
    images = run / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    manifest = {"schema": "edge-distill-export-manifest", "schema_version": 1, "schema_minor": 1,
                "models": {"student.fp32": _entry(export / "student.fp32.onnx", "fp32"),
                           "student.int8": _entry(export / "student.int8.onnx", "int8")},
                "classes": [f"c{i}" for i in range(CLASSES)], "toolkit_version": "test", "run": "tiny",
                "ship": {"model": "student.int8", "reason": "test"}}
    (export / "manifest.json").write_text(json.dumps(manifest))
    return export, images


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    export, images = make_export(run)
    block = ort_format.build(run, images=str(images), log=lambda s: None)
    return run, export, block


KEYS = ("student.fp32.ort", "student.fp32.b1.ort", "student.int8.ort", "student.int8.b1.ort")


def test_ort_files_written_and_manifest_validates(converted):
    run, export, block = converted
    m = read_manifest(export)
    raw = json.loads((export / "manifest.json").read_text())
    assert set(KEYS) <= set(m.models) and {"student.fp32", "student.int8"} <= set(m.models)
    assert m.ship["model"] == "student.int8"  # shipping decision untouched
    for key in KEYS:
        e = m.entry(key)
        assert (export / "ort" / key).is_file() and (export / e.file).is_file()
        assert e.sha256 == sha256_file(export / "ort" / key) == sha256_file(export / e.file)
        assert e.size_bytes == (export / e.file).stat().st_size
        assert e.parity["passed"] and e.parity["top1_mismatches"] == 0
        assert set(e.parity["sets"]) == {"random", "images"}
        assert raw["models"][key]["ort_format"]["path"] == f"ort/{key}"
    config = export / block["reduced_operator_config"]["file"]
    assert config.is_file() and block["reduced_operator_config"]["sha256"] == sha256_file(config)
    assert any("Conv" in line for line in block["reduced_operator_config"]["lines"])
    assert not [p for p in export.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_ort_files_load_and_match_source(converted):
    _, export, _ = converted
    x = np.random.default_rng(5).random((4, 3, SIZE, SIZE), dtype=np.float32)
    for base in ("student.fp32", "student.int8"):
        want = create_session(export / f"{base}.onnx", threads=1).run(None, {"input": x})[0]
        dyn = create_session(export / "ort" / f"{base}.ort", threads=1)
        np.testing.assert_allclose(dyn.run(None, {"input": x})[0], want, atol=1e-4, rtol=0)
        fixed = create_session(export / "ort" / f"{base}.b1.ort", threads=1)
        assert fixed.get_inputs()[0].shape == [1, 3, SIZE, SIZE]
        got = np.concatenate([fixed.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_fixed_variant_shape_and_coverage(converted):
    _, export, _ = converted
    m = read_manifest(export)
    raw = json.loads((export / "manifest.json").read_text())["models"]
    for base in ("student.fp32", "student.int8"):
        dyn, fixed = raw[f"{base}.ort"], raw[f"{base}.b1.ort"]
        assert m.entry(f"{base}.b1.ort").input.shape == [1, 3, SIZE, SIZE]
        assert m.entry(f"{base}.ort").input.shape[0] == "batch"
        assert fixed["mobile_usability"]["dynamic_inputs"] == [] and dyn["mobile_usability"]["dynamic_inputs"] == ["input"]
        for ep in ("nnapi", "coreml_neuralnetwork", "coreml_mlprogram"):
            for e in (dyn, fixed):
                f = e["mobile_usability"][ep]
                assert 0 <= f["supported_nodes"] <= f["nodes"] and f["nodes"] > 0 and f["partitions"] >= 0
        assert fixed["mobile_usability"]["nnapi"]["supported_nodes"] >= dyn["mobile_usability"]["nnapi"]["supported_nodes"]
        assert fixed["mobile_usability"]["nnapi"]["supported_nodes"] > 0


def test_fix_batch_fixes_input_and_output_shapes(tmp_path):
    _tiny_fp32(tmp_path / "m.onnx")
    assert ort_format.fix_batch(tmp_path / "m.onnx", tmp_path / "b1.onnx") == [1, 3, SIZE, SIZE]
    out = onnx.load(str(tmp_path / "b1.onnx")).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in out] == [1, CLASSES]


def test_cli_reports_missing_export(tmp_path, capsys):
    assert ort_format.main(["--run", str(tmp_path)]) == 2  # a folder without export/: one line, exit 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "manifest.json missing" in err and err.count("\n") == 1
    assert ort_format.main(["--run", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err
