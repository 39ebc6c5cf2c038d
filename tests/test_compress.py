"""`make compress`: candidates -> device timing (deploy.time_candidates, torch-free) -> budget -> proxy -> final ->
export + bench of the winner -> report, on a smoke run; resume; one-line errors. Plus the selection helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, requires_shared_checkpoints, requires_shared_data
from toolkit import ToolkitError
from toolkit.compress.report import pareto
from toolkit.compress.select import shipped_latency, spearman, within_budget

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAST = ["--proxy-epochs", "1", "--proxy-subset", "200", "--max-float-nodes", "0"]


def _compress(runs: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "toolkit.compress", "--run", "smoke", "--runs-dir", str(runs), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO_ROOT)


# ---------------------------------------------------------------- helpers (no data needed)


def test_shipped_latency_takes_int8_only_when_faster_by_the_export_rule():
    fast = {"fp32": {"p50_ms": 2.0, "p90_ms": 3.0}, "int8": {"p50_ms": 1.0, "p90_ms": 1.5}}
    slow = {"fp32": {"p50_ms": 1.0, "p90_ms": 1.2}, "int8": {"p50_ms": 0.99, "p90_ms": 1.1}}  # < 1.05x
    assert shipped_latency(fast) == ("int8", 1.0, 1.5)
    assert shipped_latency(slow) == ("fp32", 1.0, 1.2)


def test_budget_filter_and_its_one_line_error():
    rows = [{"name": "a", "p50_ms": 0.5, "form": "int8"}, {"name": "b", "p50_ms": 2.0, "form": "fp32"}]
    assert [r["name"] for r in within_budget(rows, 1.0, "dev")] == ["a"]
    with pytest.raises(ToolkitError) as e:
        within_budget(rows, 0.1, "my board")
    msg = str(e.value)
    assert "\n" not in msg and "a at 0.500 ms" in msg and "my board" in msg


def test_rank_correlation_and_pareto_frontier():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2], [2, 1]) == pytest.approx(-1.0)
    assert spearman([1.0], [2.0]) is None
    pts = [("a", 1.0, 50.0), ("b", 2.0, 60.0), ("c", 3.0, 55.0), ("d", 1.5, 50.0)]
    assert pareto(pts) == ["a", "b"]


def test_default_candidates_of_the_resnet_family():
    from toolkit.compress.candidates import check_candidates, default_candidates

    assert default_candidates("resnet56") == ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44"]
    assert default_candidates("resnet20") == ["resnet8", "resnet14"]
    with pytest.raises(ToolkitError, match="unknown candidate 'resnet9'"):
        check_candidates(["resnet8", "resnet9"], "resnet56")


# ---------------------------------------------------------------- end to end on a smoke run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not (REPO_ROOT.parent / "shared").is_dir():
        pytest.skip("../shared not present")
    runs = tmp_path_factory.mktemp("runs")
    r = subprocess.run([sys.executable, "-m", "toolkit", "distill", "--preset", "smoke", "--run", "smoke",
                        "--runs-dir", str(runs), "progress=false", "baseline=false", "student.epochs=2"],
                       capture_output=True, text=True, env=ENV, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    r = _compress(runs, "--candidates-only")
    assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
    cand = runs / "smoke" / "candidates"
    dev = runs / "device-timings.json"
    # the device command, with torch made unimportable: it must not need it
    code = ("import sys; sys.modules['torch'] = None; from deploy.time_candidates import main; "
            f"rc = main([{str(cand)!r}, '--out', {str(dev)!r}, '--runs', '40', '--rounds', '2']); "
            "assert 'torch' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]; sys.exit(rc)")
    t = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO_ROOT)
    assert t.returncode == 0, t.stderr[-2000:]
    first = _compress(runs, "--budget-ms", "1000", "--device-timings", str(dev), *FAST)
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    return runs, dev, first, t


@pytest.mark.slow
@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
def test_candidates_folder_and_torch_free_device_timings(smoke):
    runs, dev, _, t = smoke
    cand = json.loads((runs / "smoke" / "candidates" / "candidates.json").read_text())
    assert [c["name"] for c in cand["candidates"]] == ["resnet8", "resnet14"]
    assert cand["teacher"]["name"] == "resnet20"
    for c in cand["candidates"] + [cand["teacher"]]:
        assert set(c["files"]) == {"fp32", "int8"} and all(len(f["sha256"]) == 64 for f in c["files"].values())
    for c in cand["candidates"]:
        assert c["params"] > 0 and c["mflops"] > 0 and c["compression_factor"] > 1
    doc = json.loads(dev.read_text())
    assert {"cpu_model", "cores", "machine", "os", "onnxruntime"} <= set(doc["device"])
    assert doc["candidates_fingerprint"] == cand["fingerprint"] and doc["threads"] == 1
    assert set(doc["results"]) == {"resnet8", "resnet14", "teacher"}
    for forms in doc["results"].values():
        assert set(forms) == {"fp32", "int8"}
        assert all(f["runs"] == 40 and 0 < f["p50_ms"] <= f["p90_ms"] for f in forms.values())
    assert "wrote" in t.stdout


@pytest.mark.slow
@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
def test_compress_end_to_end_with_the_device_file(smoke):
    runs, dev, first, _ = smoke
    out = runs / "smoke" / "compress"
    res = json.loads((out / "results.json").read_text())
    assert res["timing_source"]["kind"] == "device"
    assert sorted(res["finalists"]) == ["resnet14", "resnet8"] and res["winner"] in res["finalists"]
    assert all(r["within_budget"] and r["proxy"]["epochs"] == 1 and r["proxy"]["train_size"] == 200
               for r in res["rows"])
    assert all(r["final"]["epochs"] == 2 for r in res["rows"])  # the run's settings (student.epochs=2 here)
    assert res["rank_correlation"] in (-1.0, 1.0, None)
    report = (out / "report.md").read_text()
    assert "the device that wrote the timings file" in report and "teacher resnet20 (reference)" in report and "Spearman" in report
    assert (out / "accuracy_vs_latency.png").is_file() and (out / "latency.png").is_file()
    w = out / "winner"
    manifest = json.loads((w / "export" / "manifest.json").read_text())
    assert manifest["models"]["student.fp32"]["architecture"] == res["winner"]
    assert (w / "bench" / "report.json").is_file()
    assert "winner:" in first.stdout


@pytest.mark.slow
@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
def test_rerun_retrains_and_reexports_nothing(smoke):
    runs, dev, _, _ = smoke
    out = runs / "smoke" / "compress"
    watched = [p for p in out.rglob("*") if p.suffix in (".pt", ".jsonl", ".onnx") or p.name == "manifest.json"]
    watched += list((runs / "smoke" / "candidates").glob("*"))
    assert len(watched) > 8
    before = {p: p.stat().st_mtime_ns for p in watched}
    r = _compress(runs, "--budget-ms", "1000", "--device-timings", str(dev), *FAST)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert r.stdout.count("0 to run") == 2 and "kept from an earlier call" in r.stdout
    state = json.loads((out / "state.json").read_text())
    assert "winner" in state["stages"]


@pytest.mark.slow
@pytest.mark.integration
@requires_shared_data
@requires_shared_checkpoints
def test_one_line_errors(smoke, tmp_path):
    runs, dev, _, _ = smoke
    r = _compress(runs, "--budget-ms", "0.00001", "--device-timings", str(dev), *FAST)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith("error: no candidate within 1e-05 ms: the fastest is resnet")
    assert " ms p50 (" in lines[-1]
    r = _compress(runs, "--budget-ms", "0")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --budget-ms must be")
    r = _compress(runs, "--budget-ms", "5", "--candidates", "resnet8,resnet9")
    assert r.returncode == 2 and "error: unknown candidate 'resnet9'" in r.stderr
    stale = json.loads(dev.read_text())
    stale["candidates_fingerprint"] = "0" * 16
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    r = _compress(runs, "--budget-ms", "5", "--device-timings", str(tmp_path / "stale.json"))
    assert r.returncode == 2 and "timed another set of candidates" in r.stderr
    bare = runs / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((runs / "smoke" / "config.yaml").read_text())
    r = subprocess.run([sys.executable, "-m", "toolkit.compress", "--run", "bare", "--runs-dir", str(runs),
                        "--budget-ms", "5"], capture_output=True, text=True, env=ENV, cwd=REPO_ROOT)
    assert r.returncode == 2 and "has no teacher.pt" in r.stderr
