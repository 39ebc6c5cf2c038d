"""benchmarks.bench_pipeline --quick and benchmarks.bench_ig_steps --quick write their reports with the fields the
README quotes (command, machine, load average, per-row spreads and ratios); no wall-clock assertions."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_ig_steps, bench_pipeline


@pytest.mark.slow
def test_bench_pipeline_quick_writes_the_report(tmp_path, capsys):
    out = tmp_path / "pipeline"
    assert bench_pipeline.main(["--quick", "--out", str(out)]) == 0
    result = json.loads((out / "bench-pipeline.json").read_text())
    assert result["command"].startswith("python -m benchmarks.bench_pipeline --quick")
    machine = result["machine"]
    assert {"cpu", "cores", "flags", "amx", "torch", "cpu_capability"} <= set(machine)
    assert machine["torch"] == __import__("torch").__version__
    assert result["threads"] == 1 and len(result["load_start"]) == 3 and len(result["load_end"]) == 3
    assert result["repeats"] == 2
    train = result["train"]["rows"]
    assert [r["key"] for r in train] == ["reference", "fp32", "bf16", "fused"]
    for row in train:
        assert row["img_per_s"]["n"] == 2 and row["img_per_s"]["min"] <= row["img_per_s"]["median"] <= row["img_per_s"]["max"]
        assert row["vs_reference"]["n"] == 2
        assert ("vs_base" in row) == (row["base"] is not None)
    assert train[0]["vs_reference"]["median"] == pytest.approx(1.0)
    ig = result["ig"][0]
    assert ig["teacher"] == "mobilenetv2_cifar" and ig["steps"] == 4
    keys = [r["key"] for r in ig["rows"]]
    assert keys[:3] == ["reference", "fp32", "bf16"] and "bf16_rows64" in keys and "steps16" in keys
    assert all("corr" in r["agreement"] for r in ig["rows"][1:] if r["steps"] == 4)
    assert {a["target"] for a in result["aims"]} == {">= 2.5x", ">= 8x"}
    fwd = result["teacher_forward"]
    assert [r["key"] for r in fwd["rows"]] == ["eager"]  # --quick: no compile rows
    assert fwd["rows"][0]["top1_agree_vs_eager"] == 1.0 and fwd["rows"][0]["max_abs_logit_diff"] == 0.0
    peak = result["matmul_gflops"]
    assert peak["fp32"] > 0 and peak["bf16"] > 0 and ig["teacher_mflops"] > 0
    for row in ig["rows"]:  # GFLOP/s = img/s x steps x 2 x forward MFLOPs / 1000
        assert row["gflops"] == pytest.approx(row["img_per_s"]["median"] * row["steps"] * 2 * ig["teacher_mflops"] / 1e3)
    same = next(a for a in result["aims"] if "same steps" in a["aim"])
    assert "ceiling on this machine" in same["met"]
    md = (out / "bench-pipeline.md").read_text()
    assert "Command: `python -m benchmarks.bench_pipeline --quick" in md and "load average" in md
    assert "| reference: PIL + DataLoader" in md and "## Aims" in md and "## IG: mobilenetv2_cifar" in md
    assert "Dense-kernel rates measured in this command" in md and "GFLOP/s" in md
    assert "## KD teacher forward: mobilenetv2_cifar" in md
    assert not list(out.glob("*.tmp*"))  # atomic writes leave no temporaries


@pytest.mark.slow
def test_bench_ig_steps_quick_writes_the_report(tmp_path):
    out = tmp_path / "pipeline"
    assert bench_ig_steps.main(["--quick", "--synthetic", "--teachers", "resnet8,mobilenetv2_cifar", "--allow-random", "resnet8", "--out", str(out)]) == 0
    result = json.loads((out / "ig-steps.json").read_text())
    assert result["command"].startswith("python -m benchmarks.bench_ig_steps --quick")
    assert {"cpu", "flags", "torch"} <= set(result["machine"]) and len(result["load_start"]) == 3
    measured, missing = result["teachers"]
    assert missing == {"teacher": "mobilenetv2_cifar", "missing": missing["missing"]} and "no trained checkpoint" in missing["missing"]
    assert measured["teacher"] == "resnet8" and measured["chosen_steps"] in (4, 8, 12, 16, 24, 32, 50)
    assert measured["seconds_per_image_chosen"]["n"] == 1 and measured["speedup_vs_50"]["n"] == 1
    assert 0 <= measured["completeness_error_50"] and -1 <= measured["correlation_vs_50"] <= 1
    md = (out / "ig-steps.md").read_text()
    assert "| resnet8 |" in md and "| mobilenetv2_cifar | no trained checkpoint" in md
