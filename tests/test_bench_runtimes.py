"""bench-edge across runtimes: artifact rows per runtime, skip lines, peak memory, the Pareto frontier, speed-ups."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import bench_edge, edge_runtimes
from benchmarks.edge_pareto import budget_lines, common_accuracy, pareto_frontier
from deploy.manifest import read_manifest
from deploy.targets import runtimes

from test_bench_edge import export_run  # noqa: F401 - the module-scoped fixture: a small real export

QUICK = ["--quick", "--runs", "3", "--warmup", "1", "--no-aarch64", "--test-subset", "60", "--fixed-batch-images", "7"]


def _pt(key, ms, top1):
    return {"key": key, "latency_ms": ms, "top1": top1}


# ---------------------------------------------------------------- the frontier, on hand-made points


def test_pareto_frontier_ties_and_dominated_points():
    pts = [_pt("slow_best", 10.0, 90.0), _pt("fast_poor", 1.0, 60.0), _pt("mid", 4.0, 80.0),
           _pt("dominated", 5.0, 75.0),            # slower and less accurate than mid
           _pt("same_speed_worse", 4.0, 79.0),     # as fast as mid, less accurate: dominated
           _pt("same_acc_slower", 12.0, 90.0),     # as accurate as slow_best, slower: dominated
           _pt("twin_a", 2.0, 70.0), _pt("twin_b", 2.0, 70.0)]  # exact tie: both stay
    assert pareto_frontier(pts) == ["fast_poor", "twin_a", "twin_b", "mid", "slow_best"]
    lines = budget_lines(pts, pareto_frontier(pts))
    assert [(ln["budget_ms"], ln["ship"], ln["top1"]) for ln in lines] == [
        (1.0, ["fast_poor"], 60.0), (2.0, ["twin_a", "twin_b"], 70.0), (4.0, ["mid"], 80.0), (10.0, ["slow_best"], 90.0)]
    assert pareto_frontier([]) == [] and pareto_frontier([_pt("only", 3.0, 50.0)]) == ["only"]
    # the fastest point is on the frontier even when it is the least accurate; the most accurate one too
    assert pareto_frontier([_pt("a", 1.0, 10.0), _pt("b", 2.0, 20.0), _pt("c", 3.0, 15.0)]) == ["a", "b"]


# ---------------------------------------------------------------- enumeration and skip lines


@pytest.mark.slow
def test_pareto_accuracies_use_the_images_every_model_saw():
    """A model scored on a prefix (a fixed-batch artifact) must not be compared with others on different images."""
    import numpy as np

    labels = np.array([0, 1, 0, 1])
    right = np.eye(2, dtype=np.float32)[labels]  # always right
    prefix = right[:2].copy()  # scored on the first 2 images only: right on both
    wrong_late = right.copy()
    wrong_late[2:] = right[2:, ::-1]  # right on the first 2, wrong on the last 2
    acc = common_accuracy({"all": right, "prefix": prefix, "late": wrong_late}, labels)
    assert {k: v["n"] for k, v in acc.items()} == {"all": 2, "prefix": 2, "late": 2}
    assert acc["late"]["top1"] == 100.0 == acc["all"]["top1"]  # on all 4 images it would be 50%


def test_enumerate_artifacts_rows_and_missing_runtimes(export_run, monkeypatch):
    root, _ = export_run
    m = read_manifest(root / "export")
    arts, skipped = edge_runtimes.enumerate_artifacts(m, root / "export", missing=lambda r: None)
    keys = {a.key: a for a in arts}
    for k in ("teacher.fp32", "teacher.int8", "student.fp32", "student.int8"):
        assert keys[k].runtime == "onnxruntime" and keys[f"{k}@openvino"].runtime == "openvino"
        assert keys[k].format == keys[f"{k}@openvino"].format == "onnx" and keys[k].fixed_batch is None
    assert keys["teacher.int8@openvino"].twin == "teacher.fp32" and keys["teacher.fp32"].twin is None
    assert skipped == []
    monkeypatch.setattr(runtimes, "missing", lambda r: None if r == "onnxruntime" else f"{r} is not installed: pip install -e '.[{r}]'")
    arts, skipped = edge_runtimes.enumerate_artifacts(m, root / "export")
    assert all(a.runtime == "onnxruntime" for a in arts)
    assert skipped == [{"key": "*.onnx@openvino", "reason": "openvino is not installed: pip install -e '.[openvino]'"}]


def _copy(export_run, tmp_path) -> Path:
    root, _ = export_run
    dst = tmp_path / "runs" / "copy"
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns("bench"))
    return dst


@pytest.mark.slow
def test_unknown_runtime_entry_is_a_skip_line_not_a_crash(export_run, tmp_path, capsys):
    run = _copy(export_run, tmp_path)
    path = run / "export" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["models"]["student.int8.fake"] = {**raw["models"]["student.int8"], "runtime": "fakert", "format": "fake"}
    path.write_text(json.dumps(raw))
    assert bench_edge.main(["--run", str(run), "--data-dir", str(export_run[1]), *QUICK, "--no-memory",
                            "--batches", "1"]) == 0
    report = json.loads((run / "bench" / "report.json").read_text())
    skip = [s for s in report["skipped"] if s["key"] == "student.int8.fake"]
    assert len(skip) == 1 and "unknown runtime 'fakert'" in skip[0]["reason"]
    assert "student.int8.fake" not in {r["model"] for r in report["latency"]}
    assert "`student.int8.fake`: skipped: unknown runtime 'fakert'" in (run / "bench" / "report.md").read_text()
    assert "skipped student.int8.fake" not in capsys.readouterr().err  # no traceback, no error line


# ---------------------------------------------------------------- the bench end to end, with .ort variants


@pytest.fixture(scope="module")
def benched(export_run, tmp_path_factory):
    from deploy.targets import ort_format

    root, data = export_run
    run = tmp_path_factory.mktemp("rt") / "runs" / "rt"
    shutil.copytree(root, run, ignore=shutil.ignore_patterns("bench"))
    ort_format.build(run, log=lambda s: None)  # + student.{fp32,int8}.ort and the batch-1 .b1.ort variants
    assert bench_edge.main(["--run", str(run), "--data-dir", str(data), *QUICK]) == 0
    return run, json.loads((run / "bench" / "report.json").read_text())


@pytest.mark.slow
def test_rows_per_runtime_and_fixed_batch(benched):
    run, report = benched
    rows = report["latency"]
    models = {r["model"] for r in rows}
    assert {"teacher.fp32", "teacher.int8", "student.fp32", "student.int8", "teacher.fp32.eager",
            "student.fp32.ort", "student.int8.b1.ort"} <= models
    if runtimes.missing("openvino") is None:
        assert {"teacher.fp32@openvino", "teacher.int8@openvino", "student.fp32@openvino", "student.int8@openvino"} <= models
        assert report["machine"]["openvino"]
        assert all(r["runtime"] == "openvino" for r in rows if r["model"].endswith("@openvino"))
    else:
        assert any(s["key"] == "*.onnx@openvino" for s in report["skipped"])
    assert {r["batch"] for r in rows if r["model"].endswith(".b1.ort")} == {1}  # fixed batch: timed at it only
    assert {r["batch"] for r in rows if r["model"] == "student.fp32.ort"} == {1, 8}
    acc = report["accuracy"]["models"]
    assert acc["student.int8.b1.ort"]["n"] == 7 and acc["student.int8.ort"]["n"] == 60  # loop subset vs all
    assert acc["student.fp32.b1.ort"]["agreement_with_twin"] == 100.0 and acc["student.fp32.b1.ort"]["twin"] == "student.fp32"
    assert acc["teacher.int8"]["twin"] == "teacher.fp32" and 0 <= acc["teacher.int8"]["agreement_with_twin"] <= 100
    assert acc["student.int8"]["twin"] == "student.fp32"
    assert acc["student.int8"]["agreement_with_twin"] == report["accuracy"]["agreement"]["student.int8 vs student.fp32"]
    md = (run / "bench" / "report.md").read_text()
    assert "## Artifacts by runtime" in md and "Pareto frontier" in md and "budget >=" in md


@pytest.mark.slow
def test_memory_figures_are_positive(benched):
    _, report = benched
    mem = report["memory"]["models"]
    assert set(mem) == {a["key"] for a in report["artifacts"]} | {"teacher.fp32.eager"}
    for key, m in mem.items():
        assert "error" not in m, (key, m)
        assert m["peak_rss_mib"] > 0 and m["session_mib"] > 0 and m["peak_rss_mib"] > m["session_mib"], (key, m)


@pytest.mark.slow
def test_pareto_and_speedups_follow_the_measurements(benched):
    _, report = benched
    p = report["pareto"]
    one = {r["model"]: r["p50_ms"] for r in report["latency"] if r["batch"] == 1 and r["threads"] == 1}
    acc = report["accuracy"]["models"]
    assert {q["key"] for q in p["points"]} == set(one)
    common = min(a["n"] for a in acc.values())  # the fixed-batch rows saw only the first few images
    assert {q["n"] for q in p["points"]} == {common}
    top1 = {q["key"]: q["top1"] for q in p["points"]}
    for k, a in acc.items():
        if a["n"] == common:
            assert top1[k] == pytest.approx(a["top1"])  # same images: the same accuracy as the accuracy table
    pts = [{"key": k, "latency_ms": v, "top1": top1[k]} for k, v in one.items()]
    assert p["frontier"] == pareto_frontier(pts) and p["frontier"]
    assert [ln["ship"] for ln in p["ship_for_budget"]] == [ln["ship"] for ln in budget_lines(pts, p["frontier"])]
    assert p["ship_for_budget"][0]["text"].startswith("budget >= ")
    ship = report["ship"]
    rs = report["runtime_speedups"]
    assert {r["model"] for r in rs} >= {ship}
    p50 = {(r["model"], r["batch"], r["threads"]): r["p50_ms"] for r in report["latency"]}
    for r in rs:
        k = (r["batch"], r["threads"])
        q = p50[(r["model"], *k)]
        assert r["vs_teacher_ort_fp32"] == pytest.approx(p50[("teacher.fp32", *k)] / q)
        assert r["vs_teacher_eager"] == pytest.approx(p50[("teacher.fp32.eager", *k)] / q)
        if r["runtime"] == "onnxruntime":
            assert r["teacher_int8_same_runtime"] == "teacher.int8"
            assert r["vs_teacher_int8_same_runtime"] == pytest.approx(p50[("teacher.int8", *k)] / q)
    assert "pareto.png" in report["plots"]
