"""benchmarks.bench_edge: timing statistics, export verification, the full harness on a small real export."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecommon.hashing import sha256_file
from edgecommon.timing import TimingPlan, fixed_input, percentile, summarize, time_callable, time_interleaved
from benchmarks import bench_edge
from benchmarks.edge_export import export_info, load_export
from deploy.export import ExportConfig, run_export
from deploy.manifest import manifest_from_dict
from deploy.steps import ExportOnnxConfig, QuantizeConfig
from toolkit import ToolkitError
from builders import random_pair_run

TINY = ["--batches", "1,2", "--threads", "1", "--runs", "3", "--warmup", "1", "--no-memory"]
CORE = {"teacher.fp32.eager", "teacher.fp32", "student.fp32", "student.int8"}
GATE = 2.5  # the fixture export's int8 gate (points of top-1), as written into its manifest


# ---------------------------------------------------------------- statistics and timing


def test_percentile_linear_interpolation():
    values = list(range(1, 11))  # 1..10
    assert percentile(values, 0) == 1 and percentile(values, 100) == 10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 90) == pytest.approx(9.1)
    assert percentile(values, 99) == pytest.approx(9.91)
    assert percentile([7.0], 99) == 7.0
    assert percentile([3, 1, 2], 50) == 2  # order of the sample does not matter
    with pytest.raises(ToolkitError):
        percentile([], 50)
    with pytest.raises(ToolkitError):
        percentile([1, 2], 101)


def test_summarize_orders_percentiles_and_throughput():
    rng = np.random.default_rng(0)
    times = rng.lognormal(0.0, 0.5, size=500)
    s = summarize(times, batch=8)
    assert s.runs == 500
    assert s.min_ms <= s.p50_ms <= s.p90_ms <= s.p99_ms <= s.max_ms
    assert s.mean_ms == pytest.approx(times.mean())
    assert s.images_per_s == pytest.approx(8 * 1000 / times.mean())
    with pytest.raises(ToolkitError):
        summarize([], batch=1)


class _FakeClock:
    """Stands in for ``time.perf_counter_ns``: only the timed callables advance it, so times are known exactly."""

    def __init__(self) -> None:
        self.ns = 10**12

    def __call__(self) -> int:
        return self.ns


def test_time_callable_counts_warmup_and_runs(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(time, "perf_counter_ns", clock)
    calls = []

    def work():  # call k takes 1.5 * k ms
        calls.append(1)
        clock.ns += 1_500_000 * len(calls)

    times = time_callable(work, TimingPlan(warmup=4, runs=7))
    assert len(calls) == 11 and times == pytest.approx([1.5 * k for k in range(5, 12)])  # warm-up calls not timed

    def step():  # every call takes 1 ms
        calls.append(1)
        clock.ns += 1_000_000

    calls.clear()
    times = time_callable(step, TimingPlan(warmup=0, runs=0, duration_s=0.0055, min_runs=2))
    assert times == pytest.approx([1.0] * 6)  # the 6th call ends 6 ms in, past the 5.5 ms deadline
    times = time_callable(step, TimingPlan(warmup=0, runs=0, duration_s=0.0055, min_runs=9))
    assert len(times) == 9  # past the deadline, the floor keeps it going
    times = time_callable(step, TimingPlan(warmup=0, runs=0, duration_s=1.0, min_runs=2, max_runs=4))
    assert len(times) == 4  # the cap stops it long before the deadline
    with pytest.raises(ToolkitError):
        TimingPlan(runs=0, duration_s=0)


def test_time_interleaved_alternates_models():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b")}
    times = time_interleaved(fns, TimingPlan(warmup=2, runs=6), rounds=3)
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6}
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up of each first
    timed = calls[4:]
    assert timed == ["a", "a", "b", "b"] * 3  # then rounds alternate between the models
    with pytest.raises(ToolkitError):
        time_interleaved(fns, TimingPlan(runs=1), rounds=0)


def test_fixed_input_is_seeded():
    a, b = fixed_input(4, seed=3), fixed_input(4, seed=3)
    assert a.dtype == np.float32 and a.shape == (4, 3, 32, 32)
    assert np.array_equal(a, b) and not np.array_equal(a, fixed_input(4, seed=4))
    assert 0.0 <= a.min() and a.max() < 1.0
    # the same values on every machine: numpy's PCG64 stream for seed 3, pinned
    np.testing.assert_array_equal(a[0, 0, 0, :3], np.float32([0.8115044832229614, 0.08564913272857666, 0.1794406771659851]))
    np.testing.assert_array_equal(a[3, 2, 31, 29:], np.float32([0.23250919580459595, 0.46773606538772583, 0.9764154553413391]))


# ---------------------------------------------------------------- fixtures: a small real export


def _write_synthetic_cifar(folder: Path) -> Path:
    from toolkit.data import make_synthetic

    data = make_synthetic(n_train_per_class=2, n_test_per_class=20)
    folder.mkdir(parents=True, exist_ok=True)
    for split, s in (("train", data.train), ("test", data.test)):
        np.savez(folder / f"cifar10_{split}.npz", x=s.images.numpy().transpose(0, 2, 3, 1), y=s.labels.numpy())
    return folder


@pytest.fixture(scope="module")
def export_run(tmp_path_factory):
    """runs/fixture with random-weight ResNet-14 teacher / ResNet-8 student, their ONNX export and a data folder."""
    base = tmp_path_factory.mktemp("bench")
    root = random_pair_run(base)
    data = _write_synthetic_cifar(base / "data")
    cfg = ExportConfig(export=ExportOnnxConfig(exporter="torchscript", opset=17), quantize=QuantizeConfig(calib_size=32),
                       max_drop=GATE, data_dir=str(data))
    run_export(root, cfg, log=lambda s: None)  # deploy.export itself (random weights: every image one class, drop 0)
    return root, data


def _independent_predictions(export_run) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Top-1 predictions of the four models recomputed here, without the harness: the data folder's test npz,
    ONNX Runtime sessions opened here and PyTorch eager for the teacher checkpoint."""
    import onnxruntime as ort

    from toolkit.models import load_model

    root, data = export_run
    test = np.load(data / "cifar10_test.npz")
    images, labels = test["x"].transpose(0, 3, 1, 2), test["y"]
    x = images.astype(np.float32) * np.float32(1 / 255)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    preds = {}
    for role in ("teacher.fp32", "student.fp32", "student.int8"):
        session = ort.InferenceSession(str(root / "export" / f"{role}.onnx"), opts, providers=["CPUExecutionProvider"])
        preds[role] = session.run(None, {"input": x})[0].argmax(1)
    with torch.no_grad():
        preds["teacher.fp32.eager"] = load_model("resnet14", root / "teacher.pt")(torch.from_numpy(images).float() / 255).argmax(1).numpy()
    return preds, labels


def _top1(pred: np.ndarray, labels: np.ndarray) -> float:
    return float((pred == labels).mean() * 100)


def _copy_run(export_run, tmp_path) -> Path:
    root, _ = export_run
    dst = tmp_path / "runs" / "copy"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("bench"))
    return dst


def _main(run: Path, data: Path, *extra: str) -> int:
    return bench_edge.main(["--run", str(run), "--data-dir", str(data), *TINY, "--no-aarch64", *extra])


# ---------------------------------------------------------------- the harness end to end


def test_harness_writes_report_with_sane_values(export_run, capsys):
    root, data = export_run
    assert _main(root, data) == 0
    bench = root / "bench"
    report = json.loads((bench / "report.json").read_text())
    for key in ("machine", "settings", "models", "latency", "speedups", "accuracy", "aarch64", "plots", "export"):
        assert key in report
    assert report["machine"]["onnxruntime"] and "avx512_vnni" in report["machine"]["cpu_flags"]
    assert set(report["machine"]["load_average_1min"]) == {"start", "end"}
    assert CORE | {"teacher.int8"} <= set(report["models"])  # + the ONNX files on other runtimes (tests/test_bench_runtimes.py)
    assert report["schema_version"] == 2 and report["memory"] is None
    rows = report["latency"]
    assert {(r["model"], r["batch"]) for r in rows if r["model"] in CORE} == {(k, b) for k in CORE for b in (1, 2)}
    assert len(rows) == len(report["models"]) * 2 * 1
    for r in rows:
        assert r["runs"] == 3
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["images_per_s"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])
    assert {(s["batch"], s["threads"]) for s in report["speedups"]} == {(1, 1), (2, 1)}
    p50 = {(r["model"], r["batch"], r["threads"]): r["p50_ms"] for r in rows}
    for s in report["speedups"]:  # ratios of the p50s in the latency table
        k = (s["batch"], s["threads"])
        assert s["int8_vs_teacher_ort_fp32"] == pytest.approx(p50[("teacher.fp32", *k)] / p50[("student.int8", *k)])
        assert s["int8_vs_teacher_eager"] == pytest.approx(p50[("teacher.fp32.eager", *k)] / p50[("student.int8", *k)])
        assert s["int8_vs_student_fp32"] == pytest.approx(p50[("student.fp32", *k)] / p50[("student.int8", *k)])

    acc = report["accuracy"]
    assert acc["n"] == 200 and acc["data"].startswith("CIFAR-10")
    preds, labels = _independent_predictions(export_run)
    classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert CORE <= set(acc["models"])
    for key, m in acc["models"].items():
        if key not in preds:
            continue
        p = preds[key]
        assert m["top1"] == pytest.approx(_top1(p, labels)), key
        assert m["per_class"] == pytest.approx({c: _top1(p[labels == i], i) for i, c in enumerate(classes)}), key
    assert set(acc["agreement"]) >= {"student.int8 vs student.fp32", "student.int8 vs teacher.fp32"}
    for pair, value in acc["agreement"].items():
        a, b = pair.split(" vs ")
        assert value == pytest.approx(_top1(preds[a], preds[b])), pair
    # ONNX Runtime fp32 and PyTorch eager compute the same teacher
    assert acc["agreement"]["teacher.fp32 vs teacher.fp32.eager"] == 100.0
    assert acc["max_abs_logit_diff"]["teacher.fp32 vs teacher.fp32.eager"] < 1e-3
    drop = _top1(preds["student.fp32"], labels) - _top1(preds["student.int8"], labels)
    assert acc["int8"]["drop_points"] == pytest.approx(drop)
    assert acc["int8"]["max_drop"] == GATE and acc["int8"]["within_gate"] is (drop <= GATE)
    assert report["aarch64"]["status"] == "skipped"

    md = (bench / "report.md").read_text()
    assert "## Latency (ms per batch)" in md and "student ORT int8" in md and "Per-class" in md
    assert report["plots"] == ["latency_by_model.png", "accuracy_vs_latency.png", "pareto.png"]
    for name in report["plots"]:
        assert (bench / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out


def test_int8_gate_verdict_on_both_sides_of_the_measured_drop(export_run):
    """Gates just above, at and just below the drop recomputed here: within, within, outside; no gate: None."""
    import dataclasses

    from toolkit.models import load_model

    root, data = export_run
    preds, labels = _independent_predictions(export_run)
    drop = _top1(preds["student.fp32"], labels) - _top1(preds["student.int8"], labels)
    info = load_export(root / "export")
    teacher = load_model("resnet14", root / "teacher.pt")
    cfg = bench_edge.BenchConfig(run=root, threads=(1,), data_dir=str(data))
    verdicts = []
    for gate in (drop + 0.5, drop, drop - 0.5, None):
        acc = bench_edge.measure_accuracy(cfg, dataclasses.replace(info, max_int8_drop=gate), teacher)[0]
        assert acc["int8"]["drop_points"] == pytest.approx(drop) and acc["int8"]["max_drop"] == gate
        verdicts.append(acc["int8"]["within_gate"])
    assert verdicts == [True, True, False, None]


def test_test_subset_and_duration_mode(export_run, tmp_path):
    run = _copy_run(export_run, tmp_path)
    _, data = export_run
    args = ["--run", str(run), "--data-dir", str(data), "--batches", "1", "--threads", "1", "--duration", "0.01",
            "--min-runs", "4", "--warmup", "0", "--test-subset", "50", "--no-aarch64"]
    assert bench_edge.main(args) == 0
    report = json.loads((run / "bench" / "report.json").read_text())
    assert report["accuracy"]["n"] == 50 and report["accuracy"]["subset"] is True
    assert all(r["runs"] >= 4 for r in report["latency"])
    assert report["settings"]["timing"]["duration_s"] == 0.01


def test_smoke_preset_gets_quick_settings(export_run, tmp_path):
    run = _copy_run(export_run, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "preset": "smoke"}))
    cfg = bench_edge.config_from_args(["--run", str(run)])
    assert cfg.quick and cfg.batches == (1, 8) and cfg.threads == (1,) and cfg.test_subset == 1000
    assert cfg.aarch64_openvino_images == 8
    assert bench_edge.config_from_args(["--run", str(run), "--aarch64-openvino-images", "0"]).aarch64_openvino_images == 0
    cfg = bench_edge.config_from_args(["--run", str(run), "--batches", "4", "--test-subset", "10"])
    assert cfg.batches == (4,) and cfg.test_subset == 10


def test_aarch64_flag_skips_cleanly_when_not_set_up(export_run, tmp_path, monkeypatch, capsys):
    run = _copy_run(export_run, tmp_path)
    _, data = export_run
    monkeypatch.setenv("AARCH64_ROOT", str(tmp_path / "no-aarch64-here"))
    assert bench_edge.main(["--run", str(run), "--data-dir", str(data), *TINY, "--aarch64", "--batches", "1"]) == 0
    report = json.loads((run / "bench" / "report.json").read_text())
    assert report["aarch64"]["status"] == "skipped" and "setup.sh" in report["aarch64"]["message"]
    assert "aarch64 check skipped" in capsys.readouterr().err


# ---------------------------------------------------------------- bad exports: one line, exit 2


def _expect_error(capsys, run: Path, data: Path, fragment: str) -> None:
    assert _main(run, data) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and fragment in err, err


def test_missing_manifest(export_run, tmp_path, capsys):
    run = _copy_run(export_run, tmp_path)
    (run / "export" / "manifest.json").unlink()
    _expect_error(capsys, run, export_run[1], "manifest missing")


def test_missing_export_and_run(export_run, tmp_path, capsys):
    run = _copy_run(export_run, tmp_path)
    shutil.rmtree(run / "export")
    _expect_error(capsys, run, export_run[1], "export folder not found")
    _expect_error(capsys, tmp_path / "nope", export_run[1], "run folder not found")


def test_corrupt_manifest_json(export_run, tmp_path, capsys):
    run = _copy_run(export_run, tmp_path)
    (run / "export" / "manifest.json").write_text("{not json")
    _expect_error(capsys, run, export_run[1], "not valid JSON")


def test_manifest_missing_role(export_run, tmp_path, capsys):
    run = _copy_run(export_run, tmp_path)
    path = run / "export" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["models"]["student.int8"]
    path.write_text(json.dumps(manifest))
    _expect_error(capsys, run, export_run[1], "lacks model(s) student.int8")


def test_sha256_mismatch(export_run, tmp_path, capsys):
    run = _copy_run(export_run, tmp_path)
    with open(run / "export" / "student.int8.onnx", "ab") as f:
        f.write(b"\0")
    _expect_error(capsys, run, export_run[1], "fails its sha256 check")


def test_not_an_onnx_file(export_run, tmp_path, capsys):
    run = _copy_run(export_run, tmp_path)
    bad = run / "export" / "teacher.fp32.onnx"
    bad.write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    path = run / "export" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["models"]["teacher.fp32"]["sha256"] = sha256_file(bad)  # hash matches: the content itself is bad
    path.write_text(json.dumps(manifest))
    _expect_error(capsys, run, export_run[1], "not a valid ONNX model")


def test_bad_cli_values(export_run, capsys):
    root, data = export_run
    assert bench_edge.main(["--run", str(root), "--data-dir", str(data), "--batches", "1,x"]) == 2
    assert "error: --batches" in capsys.readouterr().err
    assert bench_edge.main(["--run", str(root), "--data-dir", str(data), "--threads", "0"]) == 2
    assert "thread counts" in capsys.readouterr().err


# ---------------------------------------------------------------- manifest coupling


def test_export_info_reads_deploy_schema(tmp_path):
    """The keys deploy.manifest writes (schema, models.*.file/sha256/input/output/architecture/accuracy)."""
    entry = {"file": "x.onnx", "sha256": "AB" * 32, "size_bytes": 1, "role": "student", "precision": "int8",
             "architecture": "resnet8", "opset": 17, "input": {"name": "input", "shape": ["batch", 3, 32, 32]},
             "output": {"name": "logits", "shape": ["batch", 10]}, "source_checkpoint": {},
             "preprocessing": {"normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}},
             "accuracy": {"top1": 91.5, "n": 10000, "max_drop": 0.5, "drop_points": 0.1}}
    raw = {"schema": "edge-distill-export-manifest", "schema_version": 1, "classes": [], "toolkit_version": "0",
           "run": "r", "models": {"teacher.fp32": {**entry, "precision": "fp32", "accuracy": {"top1": 93.0}},
                      "student.fp32": {**entry, "precision": "fp32", "accuracy": {"top1": 91.6}},
                      "student.int8": entry}}
    info = export_info(manifest_from_dict(raw), tmp_path)
    assert info.max_int8_drop == 0.5 and info.schema == "edge-distill-export-manifest"
    assert info.models["student.int8"].path == tmp_path / "x.onnx"
    assert info.models["student.int8"].sha256 == "ab" * 32 and info.models["teacher.fp32"].export_top1 == 93.0
    with pytest.raises(ToolkitError, match="lacks model.s. student.int8"):
        export_info(manifest_from_dict({**raw, "models": {k: raw["models"][k] for k in ("teacher.fp32", "student.fp32")}}),
                    tmp_path)


def test_load_export_of_deploy_export(export_run):
    info = load_export(export_run[0] / "export")
    assert set(info.models) == {"teacher.fp32", "student.fp32", "student.int8"}
    assert info.models["student.int8"].architecture == "resnet8" and info.max_int8_drop == GATE


# ---------------------------------------------------------------- aarch64 under emulation (when set up)


@pytest.mark.integration
def test_aarch64_parity_under_qemu(export_run, tmp_path):
    from benchmarks.edge_aarch64 import onnx_roles, run_aarch64, target
    from benchmarks.bench_edge import ORT_ROLES, ort_logits
    from benchmarks.edge_latency import ort_session

    tgt = target()
    if tgt.missing():
        pytest.skip(tgt.missing())
    root, _ = export_run
    info = load_export(root / "export")
    images = (fixed_input(6, seed=5) * 255).astype(np.uint8)
    labels = np.arange(6) % 10
    x86 = {r: ort_logits(ort_session(str(info.models[r].path), 1), images, 6) for r in ORT_ROLES}
    ov_counts = {role: 2 for role in onnx_roles(info)}
    result = run_aarch64(info, images, labels, x86, tmp_path / "a64",
                         {"teacher.fp32": 2, "student.fp32": 2, "student.int8": 6}, tgt, latency_runs=1,
                         openvino_counts=ov_counts)
    assert result["status"] == "ok", result
    assert result["guest"]["machine"] == "aarch64"
    assert result["models"]["student.int8"]["n"] == 6 and result["models"]["teacher.fp32"]["n"] == 2
    assert set(result["models"]) == set(ORT_ROLES) | {f"{r}@openvino" for r in ov_counts}
    for role, r in result["models"].items():
        if role.endswith("@openvino") and r["status"] == "skipped":  # OpenVINO not set up / failing under qemu
            assert r["message"] and result["openvino"]["status"] in ("skipped", "partial"), (role, r)
            continue
        assert r["status"] == "ok" and r["passed"], (role, r)
        assert r["emulated_batch1_p50_ms"] > 0
    if tgt.openvino_missing() is None:
        assert result["openvino"]["status"] == "ok", result["openvino"]
        assert result["models"]["student.int8@openvino"]["runtime"] == "openvino"


def test_aarch64_openvino_rows_skip_without_failing_the_check(export_run, tmp_path):
    """OpenVINO not set up for the guest: every ``<role>@openvino`` row is skipped with the reason, nothing runs."""
    from benchmarks.edge_aarch64 import Aarch64Target, onnx_roles, run_openvino

    info = load_export(export_run[0] / "export")
    roles = onnx_roles(info)
    assert {"teacher.fp32", "student.fp32", "student.int8"} <= set(roles)
    assert all(p.suffix == ".onnx" and p.is_file() for p in roles.values())
    root = tmp_path / "a64root"
    root.mkdir()
    (root / "READY").write_text("qemu: x\nguest: y\nopenvino: no aarch64 wheel of openvino==9.9 for cp311: none\n")
    tgt = Aarch64Target(root)
    assert "no aarch64 wheel" in tgt.openvino_missing()
    images = np.zeros((2, 3, 32, 32), np.uint8)
    rows, summary = run_openvino(info, images, np.zeros(2, int), tmp_path, {r: 2 for r in roles}, tgt,
                                 ["/nonexistent-guest"], {}, 1)
    assert summary["status"] == "skipped" and "no aarch64 wheel" in summary["message"]
    assert set(rows) == {f"{r}@openvino" for r in roles}
    assert all(r["status"] == "skipped" and "no aarch64 wheel" in r["message"] for r in rows.values())
    (root / "READY").write_text("qemu: x\nguest: y\n")  # set up before OpenVINO was an option
    assert "re-run" in tgt.openvino_missing()
