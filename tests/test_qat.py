"""Quantization-aware distillation (toolkit.distill.qat, deploy.qat): a tiny synthetic run with a torchvision
MobileNetV3 student (hard-swish, squeeze-excite), QAT-KD with the IG overlay, interrupted and resumed, exported to a
QDQ ONNX model that ONNX Runtime runs with integer kernels."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

pytest.importorskip("torchao", reason="the qat extra (torchao) is not installed")

from toolkit import ToolkitError  # noqa: E402
from toolkit.config import build_config  # noqa: E402

OVERRIDES = ["data.dataset=synthetic", "data.synthetic_per_class=24", "data.val_size=30", "data.test_subset=null",
             "data.train_subset=null",
             "teacher.model=resnet8", "teacher.mode=scratch", "teacher.checkpoint=null", "teacher.epochs=1",
             "teacher.batch_size=32", "student.model=torchvision:mobilenet_v3_small", "student.epochs=1",
             "student.batch_size=32", "ig.steps=2", "ig.batch_size=16", "precision=fp32", "progress=false",
             "baseline=false", "configuration=KD_IG"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from toolkit.pipeline import run_distill

    tmp = tmp_path_factory.mktemp("qat")
    run_distill(build_config("smoke", overrides=OVERRIDES), "tiny", runs_dir=tmp)
    return tmp / "tiny"


@pytest.mark.slow
def test_qat_resumes_exports_qdq_and_runs_integer_kernels(tiny_run):
    from deploy.qat import QAT_FILE, REPORT_FILE, main, qat_artifact

    root = tiny_run
    # interrupted after one of two epochs: the epoch checkpoint stays, nothing is exported yet
    assert main(["--run", str(root), "--epochs", "2", "--max-epochs-this-call", "1", "--repeats", "5",
                 "--rounds", "1"]) == 0
    assert (root / "qat_student.ckpt").is_file() and not (root / "qat_student.pt").exists()
    assert not (root / "export" / QAT_FILE).exists()
    saved = torch.load(root / "qat_student.ckpt", weights_only=True)
    assert saved["epoch"] == 1
    # the rerun continues at epoch 2 and finishes
    assert main(["--run", str(root), "--epochs", "2", "--repeats", "5", "--rounds", "1"]) == 0
    assert (root / "qat_student.pt").is_file() and not (root / "qat_student.ckpt").exists()
    history = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history if r["stage"] == "qat_student"] == [1, 2]
    qat_rows = [r for r in history if r["stage"] == "qat_student"]
    assert set(qat_rows[0]["losses"]) == {"ce", "kd"} and qat_rows[0]["overlay_fraction"] >= 0

    path = root / "export" / QAT_FILE
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Clip" not in ops
    report = json.loads((root / "export" / REPORT_FILE).read_text())
    parity = report["parity_vs_fake_quant"]
    assert parity["val"]["top1_agreement"] >= 90 and parity["test"]["top1_agreement"] >= 90
    kernels = report["models"]["qat_int8"]["optimized_ops"]
    assert kernels["qlinearconv"] > 0 and kernels["float_convs"] == 0, kernels
    assert report["qat"]["epochs"] == 2 and report["threads"] == 1 and report["cpu"]
    entry = qat_artifact(root)
    assert entry["file"] == QAT_FILE and entry["size_bytes"] == path.stat().st_size
    assert entry["accuracy"]["test_top1"] == report["models"]["qat_int8"]["test_top1"]


@pytest.mark.slow
def test_finished_qat_stage_is_reused_and_other_settings_refused(tiny_run):
    from toolkit.distill.qat import train_qat_student
    from toolkit.pipeline import prepare_data, prepare_ig_maps, prepare_teacher
    from toolkit.runs import RunFolder

    if not (tiny_run / "qat_student.pt").is_file():
        pytest.skip("needs the finished QAT stage of the test above")
    cfg = build_config("smoke", overrides=OVERRIDES)
    data = prepare_data(cfg)
    run = RunFolder(tiny_run)
    teacher = prepare_teacher(cfg, run, data, torch.device("cpu"), progress=False)
    maps = prepare_ig_maps(cfg, run, teacher, data, torch.device("cpu"), progress=False)
    model, result = train_qat_student(cfg, data, teacher, maps, tiny_run, tiny_run / "student.pt", epochs=2)
    assert result["finished"] and result["epochs"] == 2  # loaded, not retrained
    x = data.test.images[:8].float() / 255
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    with pytest.raises(ToolkitError, match="fingerprint"):
        train_qat_student(cfg, data, teacher, maps, tiny_run, tiny_run / "student.pt", epochs=3)


def test_full_range_clips_after_quantize_are_dropped():
    from onnx import TensorProto, helper, numpy_helper

    from deploy.qat import drop_full_range_clips

    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.array(0, np.uint8), "lo"), numpy_helper.from_array(np.array(255, np.uint8), "hi"),
             numpy_helper.from_array(np.array(10, np.uint8), "lo2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("Clip", ["q", "lo", "hi"], ["c"]),
             helper.make_node("Clip", ["c", "lo2", "hi"], ["c2"]),  # not full range: kept
             helper.make_node("DequantizeLinear", ["c2", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    proto = helper.make_model(graph)
    assert drop_full_range_clips(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["QuantizeLinear", "Clip", "DequantizeLinear"]
    assert proto.graph.node[1].input[0] == "q"


def test_qat_settings_are_checked_in_one_line():
    from toolkit.distill.qat import qat_optim

    cfg = build_config("smoke", overrides=OVERRIDES)
    assert qat_optim(cfg, 3, None).lr == pytest.approx(cfg.student.lr / 50)
    assert qat_optim(cfg, 3, 1e-3).schedule == "cosine"
    for epochs, lr in ((0, None), (2, 0.0)):
        with pytest.raises(ToolkitError) as err:
            qat_optim(cfg, epochs, lr)
        assert "\n" not in str(err.value)


def test_missing_torchao_names_the_extra(monkeypatch):
    import builtins

    from toolkit.distill.qat_quantizer import require_torchao

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError("No module named 'torchao'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ToolkitError, match=r"\.\[qat\]") as err:
        require_torchao()
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_export_runs_qat_when_the_budget_is_missed(tiny_run, capsys):
    """deploy.export --qat on-miss (make export's default): a missed budget exports with fp32 shipped, runs QAT,
    records it in the manifest, and still fails in one line when QAT cannot meet the budget either."""
    from deploy.export import main
    from deploy.manifest import read_manifest

    rc = main(["--run", str(tiny_run), "--max-drop", "-100", "--max-float-nodes", "0", "--exporter", "torchscript",
               "--opset", "17", "--qat", "on-miss", "--qat-epochs", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "trying quantization-aware distillation" in err
    assert err.strip().splitlines()[-1].startswith("error: int8 misses the validation budget even after QAT")
    manifest = read_manifest(tiny_run / "export" / "manifest.json")
    assert "student.qat.int8" in manifest.models and manifest.shipped_student == "student.fp32"
    entry = manifest.models["student.qat.int8"]
    assert entry.preprocessing.image_size == manifest.models["student.fp32"].preprocessing.image_size
    assert entry.accuracy["validation"]["top1"] is not None
