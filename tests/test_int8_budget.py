"""int8 within an accuracy budget (deploy.fallback, deploy.sensitivity, deploy.export_data): decisions on validation
images only, per-node sensitivity with ONNX Runtime's QDQ debugging tools, automatic fallback to float nodes, and
the "int8 no faster than fp32 -> ship fp32" rule. Small random ResNet-8s on synthetic data, TorchScript exporter."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import deploy.export as export_mod
import deploy.fallback as fallback_mod
import deploy.teacher_int8 as teacher_int8_mod
from deploy.export import ExportConfig, Hooks, run_export
from deploy.export_data import as_export_data, split_source, validation_rows
from deploy.fallback import Int8Config, latency_summary, ship_decision
from deploy.manifest import DeployError, read_manifest
from deploy.sensitivity import node_sensitivity, quantized_nodes, write_report
from deploy.steps import ExportOnnxConfig, GateError, QuantizeConfig, export_onnx, onnx_logits, quantize_onnx, simplify_onnx
from toolkit.config import DataConfig, RunConfig
from toolkit.data import make_synthetic
from toolkit.models import build_model, save_checkpoint
from toolkit.pipeline import prepare_data

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = {"dataset": "synthetic", "synthetic_per_class": 12, "val_size": 20, "split_seed": 5}
HEAD = "/linear/Gemm"
QUICK = Int8Config(max_float_nodes=3, sensitivity_images=16, timing_warmup=2, timing_runs=10, timing_rounds=2)


def quick_config(**kw) -> ExportConfig:
    """Test-sized export: TorchScript, 32 calibration images, budget 5 points, a few timed calls."""
    base = {"export": ExportOnnxConfig(exporter="torchscript", opset=17), "quantize": QuantizeConfig(calib_size=32),
            "parity_images": 16, "parity_random": 8, "max_drop": 5.0, "int8": QUICK}
    return ExportConfig(**{**base, **kw})


def _student_run(tmp_path: Path):
    """A run folder (random ResNet-8 student and teacher, no config.yaml) and its synthetic splits with the validation
    and test rows labelled by the student's own fp32 predictions: fp32 scores 100%, and every int8 disagreement is a
    drop."""
    root = tmp_path / "runs" / "budget"
    root.mkdir(parents=True)
    torch.manual_seed(0)
    student, teacher = build_model("resnet8").eval(), build_model("resnet8").eval()
    save_checkpoint(student, "resnet8", root / "student.pt")
    save_checkpoint(teacher, "resnet8", root / "teacher.pt")
    (root / "summary.json").write_text(json.dumps({"preset": "fixture", "seed": 0,
                                                   "teacher": {"name": "resnet8", "checkpoint": "teacher.pt"},
                                                   "student": {"name": "resnet8", "checkpoint": "student.pt"}}))
    data = prepare_data(RunConfig(data=DataConfig(**SYNTHETIC), progress=False))
    with torch.no_grad():
        for split in (data.val, data.test):
            split.labels = student(split.images.float() / 255).argmax(1)
    return root, data


def scramble_head(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Roll the int8 weights of the classifier (``HEAD``) when it is quantized: a node int8 breaks, float repairs."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {i.name: i for i in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.name == HEAD)
    dq = producer.get(node.input[1])
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
        init = inits[dq.input[0]]
        w = onnx.numpy_helper.to_array(init)
        init.CopyFrom(onnx.numpy_helper.from_array(np.roll(w.reshape(-1), 7).reshape(w.shape), init.name))
    return proto


# ---------------------------------------------------------------- the run's splits


def test_cifar_like_split_is_prepare_datas_split():
    """``split_source`` (CIFAR-10, and ``run_export(data=Cifar10)``) splits as ``toolkit.pipeline.prepare_data`` does."""
    d = DataConfig(**SYNTHETIC, train_subset=0.5, test_subset=7)
    ours = split_source(make_synthetic(12, 3, seed=5), d)
    theirs = prepare_data(RunConfig(data=d, progress=False))
    for a, b in ((ours.train, theirs.train), (ours.val, theirs.val), (ours.test, theirs.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert (len(ours.train), len(ours.val), len(ours.test)) == (50, 20, 7)
    # a run without config.yaml whose train split cannot spare the default 5000 rows: a tenth is held out
    small = as_export_data(make_synthetic(2, 3), {})
    assert (len(small.train), len(small.val)) == (18, 2)
    assert len(as_export_data(theirs, {}).val) == 20  # PreparedData: its own validation rows


def test_validation_rows_stratified_and_required():
    val = make_synthetic(10, 1).train  # 100 rows, class by class
    idx, text = validation_rows(val, 20)
    assert len(idx) == 20 and np.bincount(val.labels[idx].numpy()).tolist() == [2] * 10 and "stratified" in text
    assert len(validation_rows(val, None)[0]) == 100
    with pytest.raises(DeployError, match="no validation images") as err:
        validation_rows(val.subset(torch.zeros(0, dtype=torch.long)), None)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- sensitivity


def test_sensitivity_table_one_row_per_quantized_node(tmp_path):
    torch.manual_seed(1)
    export_onnx(build_model("resnet8").eval(), tmp_path / "raw.onnx", ExportOnnxConfig(exporter="torchscript", opset=17))
    simplify_onnx(tmp_path / "raw.onnx", tmp_path / "fp32.onnx")
    data = make_synthetic(4, 1, seed=2)
    x = data.train.images.numpy().astype(np.float32) / 255
    pre = tmp_path / "pre.onnx"
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", QuantizeConfig(calib_size=32), x[:32], preprocessed=pre)
    rows = node_sensitivity(pre, tmp_path / "int8.onnx", x[:20], tmp_path, chunk=8)  # 20 images in chunks of 8, 8, 4
    nodes = quantized_nodes(onnx.load(str(tmp_path / "int8.onnx")))
    assert sorted(r.node for r in rows) == sorted(n.name for n in nodes) and len(rows) > 10
    assert {n.name for n in onnx.load(str(pre)).graph.node} >= {r.node for r in rows}  # names nodes_to_exclude takes
    assert all(math.isfinite(r.sqnr_db) and math.isfinite(r.added_db) for r in rows)
    assert [r.rank for r in rows] == list(range(1, len(rows) + 1))
    assert [r.added_db for r in rows] == sorted((r.added_db for r in rows), reverse=True)
    conv = next(r for r in rows if r.op_type == "Conv")
    assert conv.weight_sqnr_db is not None and conv.weight_sqnr_db > 20
    assert all(r.input_sqnr_db - r.sqnr_db == pytest.approx(r.added_db) for r in rows)
    files = write_report(rows, tmp_path, float_nodes=[rows[0].node])
    table = list(csv.DictReader(open(tmp_path / files[0])))
    assert [t["node"] for t in table] == [r.node for r in rows]
    assert [t["kept_float"] for t in table] == ["yes"] + ["no"] * (len(rows) - 1)
    assert (tmp_path / files[1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if "sensitivity" in p.name) == ["sensitivity.csv", "sensitivity.png"]


def test_preprocess_names_every_node(tmp_path):
    """``nodes_to_exclude`` addresses nodes by name: the pre-processed graph gets one for each unnamed node."""
    from onnx import TensorProto, helper

    from deploy.steps import preprocess_onnx

    nodes = [helper.make_node("Relu", ["input"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="Relu_2"),
             helper.make_node("Relu", ["b"], ["logits"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    preprocess_onnx(tmp_path / "m.onnx", tmp_path / "pre.onnx", optimize=False)
    assert [n.name for n in onnx.load(str(tmp_path / "pre.onnx")).graph.node] == ["Relu_0", "Relu_2", "Relu_2_"]


# ---------------------------------------------------------------- what ships


@pytest.mark.parametrize("budget_met, fp32, int8, min_speedup, ship, why", [
    (True, 1.0, 0.4, 1.05, "student.int8", "2.50x faster"),
    (True, 1.0, 1.0, 1.05, "student.fp32", "no faster than fp32 on this CPU: 1.00x"),
    (True, 1.0, 1.2, 1.0, "student.fp32", "no faster"),
    (True, 1.0, 0.96, 1.05, "student.fp32", "below the 1.05x required"),
    (True, 1.0, 0.96, 1.0, "student.int8", "1.04x faster"),
    (False, 1.0, 0.2, 1.05, "student.fp32", "misses the validation accuracy budget"),
])
def test_ship_decision_on_given_latencies(budget_met, fp32, int8, min_speedup, ship, why):
    key, reason = ship_decision(budget_met, fp32, int8, min_speedup)
    assert key == ship and why in reason


def test_latency_summary_prices_the_fallback():
    s = latency_summary({"student.fp32": 1.0, "student.int8.full": 0.4, "student.int8": 0.5}, QUICK, fallback=True)
    assert s["int8_speedup_vs_fp32"] == 2.0 and s["full_int8_speedup_vs_fp32"] == 2.5
    assert s["fallback_cost_vs_full_int8"] == 1.25 and s["batch"] == 1 and s["threads"] == 1
    s = latency_summary({"student.fp32": 1.0, "student.int8.full": 0.4}, QUICK, fallback=False)
    assert s["int8_speedup_vs_fp32"] == 2.5 and s["fallback_cost_vs_full_int8"] is None


# ---------------------------------------------------------------- fallback through run_export


def test_fallback_keeps_the_broken_node_in_float_and_meets_the_budget(tmp_path):
    root, data = _student_run(tmp_path)
    lines: list[str] = []
    m = run_export(root, quick_config(), data=data, hooks=Hooks(after_quantize=scramble_head), log=lines.append)
    int8 = m.int8
    fb = int8["fallback"]
    assert fb["needed"] and fb["budget_met"] and fb["float_nodes"] == [HEAD] and len(fb["steps"]) == 1
    assert fb["full_int8"]["drop_points"] > 50 and fb["steps"][0]["drop_points"] <= 5.0
    assert int8["sensitivity"]["most_sensitive"][0]["node"] == HEAD and int8["sensitivity"]["float_nodes"] == [HEAD]
    table = list(csv.DictReader(open(root / "export" / "sensitivity.csv")))
    assert table[0]["node"] == HEAD and table[0]["kept_float"] == "yes"
    assert len(table) == int8["sensitivity"]["nodes"] > 10
    # the head is float in the shipped int8 file: its weight is a float initializer, not a DequantizeLinear output
    proto = onnx.load(str(root / "export" / "student.int8.onnx"))
    head = next(n for n in proto.graph.node if n.name == HEAD)
    assert head.input[1] in {i.name for i in proto.graph.initializer}
    assert m.models["student.int8"].quantization["nodes_to_exclude"] == [HEAD]
    # validation figures recomputed here from the run's validation rows; test figures reported beside them
    x, y = data.val.images.numpy(), data.val.labels.numpy()
    acc = float((onnx_logits(root / "export" / "student.int8.onnx", x).argmax(1) == y).mean() * 100)
    val = m.models["student.int8"].accuracy["validation"]
    assert val["top1"] == pytest.approx(acc) and val["fp32_top1"] == 100.0 and val["n"] == 20
    assert int8["accuracy"]["validation"]["int8_full"] < 50 and int8["accuracy"]["test"]["n"] == 30
    lat = int8["latency"]
    assert set(lat["p50_ms"]) == {"student.fp32", "student.int8.full", "student.int8"}
    p50 = lat["p50_ms"]
    assert lat["fallback_cost_vs_full_int8"] == pytest.approx(p50["student.int8"] / p50["student.int8.full"], abs=1e-3)
    assert m.ship["model"] in ("student.int8", "student.fp32") and m.shipped_student == m.ship["model"]
    assert any(f"fallback step 1: {HEAD}" in s for s in lines)


def test_budget_missed_fails_in_one_line_unless_allowed(tmp_path):
    root, data = _student_run(tmp_path)
    hooks = Hooks(after_quantize=scramble_head)
    no_fallback = replace(QUICK, max_float_nodes=0)
    with pytest.raises(GateError, match=r"^int8 misses the validation budget: best drop [\d.]+ points > allowed 5 ") as err:
        run_export(root, quick_config(int8=no_fallback), data=data, hooks=hooks, log=lambda s: None)
    assert "\n" not in str(err.value) and "--allow-budget-miss" in str(err.value)
    assert list((root / "export").iterdir()) == []  # nothing committed
    rejected = root / "export.rejected"
    assert sorted(p.name for p in rejected.iterdir()) == ["int8.json", "sensitivity.csv", "sensitivity.png"]
    assert json.loads((rejected / "int8.json").read_text())["fallback"]["budget_met"] is False

    m = run_export(root, quick_config(int8=replace(no_fallback, allow_budget_miss=True)), data=data, hooks=hooks,
                   log=lambda s: None)
    assert m.ship == {"model": "student.fp32", "reason": "int8 misses the validation accuracy budget"}
    assert m.int8["fallback"]["budget_met"] is False
    assert m.models["student.int8"].accuracy["validation"]["within_budget"] is False
    assert read_manifest(root / "export").shipped_student == "student.fp32"
    assert not rejected.exists()  # the earlier failure's report is gone once an export succeeds


# ---------------------------------------------------------------- no decision reads the test split


def test_test_split_is_read_only_after_every_decision(tmp_path, monkeypatch):
    root, data = _student_run(tmp_path)
    val_x, test_x = data.val.images.numpy(), data.test.images.numpy()

    def kind(x: np.ndarray) -> str:
        x = np.asarray(x)
        scaled = (x * 255).round().astype(np.uint8) if x.dtype == np.float32 else x
        for name, ref in (("val", val_x), ("test", test_x)):
            if len(scaled) and any(np.array_equal(scaled[0], r) for r in ref):
                return name
        return "other"  # random parity inputs, calibration (training) images

    events: list[tuple[str, str]] = []

    def spy(name, fn, arg):
        def wrapped(*a, **kw):
            events.append((name, kind(a[arg]) if arg is not None else "-"))
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(export_mod, "onnx_logits", spy("logits", export_mod.onnx_logits, 1))
    monkeypatch.setattr(fallback_mod, "onnx_logits", spy("logits", fallback_mod.onnx_logits, 1))
    monkeypatch.setattr(fallback_mod, "quantize_onnx", spy("quantize", fallback_mod.quantize_onnx, None))
    monkeypatch.setattr(teacher_int8_mod, "onnx_logits", spy("logits", teacher_int8_mod.onnx_logits, 1))
    monkeypatch.setattr(teacher_int8_mod, "quantize_onnx", spy("quantize", teacher_int8_mod.quantize_onnx, None))
    monkeypatch.setattr(fallback_mod, "node_sensitivity", spy("sensitivity", fallback_mod.node_sensitivity, 2))
    monkeypatch.setattr(export_mod, "time_students", spy("latency", export_mod.time_students, None))
    check_parity = export_mod.check_parity
    monkeypatch.setattr(export_mod, "check_parity", lambda path, ref, inputs, *a, **kw: (
        events.extend(("parity", kind(x)) for x in inputs.values()), check_parity(path, ref, inputs, *a, **kw))[1])
    cfg = quick_config(quantize=QuantizeConfig(calib_size=32, calibration="auto"), max_drop=-1.0,
                       int8=replace(QUICK, max_float_nodes=2, allow_budget_miss=True))  # every decision path runs
    run_export(root, cfg, data=data, hooks=Hooks(after_quantize=scramble_head), log=lambda s: None)
    first_test = next(i for i, e in enumerate(events) if e[1] == "test")
    before, after = events[:first_test], events[first_test:]
    assert {e[0] for e in before} == {"parity", "logits", "quantize", "sensitivity", "latency"}
    assert {e[1] for e in before} <= {"val", "other", "-"} and ("logits", "val") in before
    # three calibration methods, two fallback steps, the teacher int8 baseline (its figures on validation images)
    assert sum(e[0] == "quantize" for e in before) == 3 + 2 + 1
    assert after == [("logits", "test")] * 4  # student fp32, student int8, teacher fp32 and int8: measured only


def test_decisions_follow_validation_whatever_the_test_labels(tmp_path):
    """Same validation rows, test labels scrambled: every decision and validation figure is unchanged."""
    root, data = _student_run(tmp_path)
    cfg = quick_config(quantize=QuantizeConfig(calib_size=32, calibration="auto"))
    hooks = Hooks(after_quantize=scramble_head)
    a = run_export(root, cfg, data=data, hooks=hooks, log=lambda s: None).int8
    data.test.labels = (data.test.labels + 1) % 10
    b = run_export(root, cfg, data=data, hooks=hooks, log=lambda s: None).int8
    for key in ("calibration", "fallback", "sensitivity"):
        assert a[key] == b[key]
    assert a["accuracy"]["validation"] == b["accuracy"]["validation"]
    assert a["accuracy"]["test"]["fp32"] == 100.0 and b["accuracy"]["test"]["fp32"] == 0.0


@pytest.mark.slow
def test_export_cli_budget_miss_and_allowance(tmp_path):
    """``python -m deploy.export`` on a synthetic run (config.yaml): one error line and exit 1 on a missed budget;
    exit 0 and fp32 shipped with --allow-budget-miss."""
    from toolkit.config import save_config

    root = tmp_path / "runs" / "cli"
    save_config(RunConfig(data=DataConfig(**SYNTHETIC)), root / "config.yaml")
    torch.manual_seed(0)
    for role in ("student", "teacher"):
        save_checkpoint(build_model("resnet8").eval(), "resnet8", root / f"{role}.pt")
    (root / "summary.json").write_text(json.dumps({"teacher": {"name": "resnet8"}, "student": {"name": "resnet8"}}))
    base = [sys.executable, "-m", "deploy.export", "--run", str(root), "--exporter", "torchscript", "--opset", "17",
            "--calib-size", "32", "--max-drop", "-1", "--max-float-nodes", "1", "--sensitivity-images", "8"]
    r = subprocess.run(base, cwd=REPO_ROOT, capture_output=True, text=True)
    errors = [s for s in r.stderr.splitlines() if s.startswith("error")]
    assert r.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: int8 misses the validation budget")
    assert (root / "export.rejected" / "sensitivity.csv").is_file() and not (root / "export" / "manifest.json").exists()
    r = subprocess.run(base + ["--allow-budget-miss"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ship: student.fp32 (int8 misses the validation accuracy budget)" in r.stdout
    assert read_manifest(root / "export").int8["max_drop"] == -1.0
