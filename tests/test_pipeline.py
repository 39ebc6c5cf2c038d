"""`make distill PRESET=smoke` end to end on real CIFAR-10: summary contract, reuse on rerun, stale caches refused."""

import json
import subprocess
import sys

import pytest

from conftest import requires_shared_checkpoints, requires_shared_data

pytestmark = [pytest.mark.integration, requires_shared_data, requires_shared_checkpoints]


def _distill(tmp_path, *extra):
    cmd = [sys.executable, "-m", "toolkit", "distill", "--preset", "smoke", "--run", "smoke", "--runs-dir",
           str(tmp_path), "progress=false", *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    r = _distill(root, "--save-examples")
    assert r.returncode == 0, r.stderr[-2000:]
    return root, r


@pytest.mark.slow
def test_smoke_run_writes_the_run_folder_contract(smoke_run):
    root, r = smoke_run
    run = root / "smoke"
    for name in ("config.yaml", "teacher.pt", "student.pt", "baseline.pt", "metrics.jsonl", "summary.json",
                 "overlay_examples.png"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    assert s["preset"] == "smoke" and s["config"] == "KD_IG" and "JPEG q75" in s["data"]
    for role in ("teacher", "student", "baseline"):
        assert {"name", "params", "test_acc"} <= set(s[role])
    assert s["teacher"]["name"] == "resnet20" and s["student"]["name"] == "resnet8"
    assert s["compression_factor"] == pytest.approx(269_722 / 75_290, abs=0.01)
    assert s["teacher"]["test_acc"] > 85  # fine-tuned pretrained ResNet-20 on 1,000 test images
    assert "distillation gain" in r.stdout
    assert "smoke preset: figures are not meaningful, the run only proves the chain works" in r.stdout
    assert "student vs teacher:" in r.stdout and s["comparison"]["meaningful"] is False
    assert s["comparison"]["student_minus_teacher_points"] == pytest.approx(s["student"]["test_acc"] - s["teacher"]["test_acc"], abs=0.01)
    assert ("WARNING" in r.stdout) == (s["student"]["test_acc"] < s["baseline"]["test_acc"])
    assert "--save-examples: wrote the picture" in r.stdout and "overlay_examples.png" in r.stdout
    stages = {json.loads(line)["stage"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"teacher", "student", "baseline"}


@pytest.mark.slow
def test_rerun_reuses_finished_stages_and_changed_ig_settings_are_refused(smoke_run):
    root, _ = smoke_run
    before = json.loads((root / "smoke" / "summary.json").read_text())
    again = _distill(root)
    assert again.returncode == 0, again.stderr[-2000:]
    after = json.loads((root / "smoke" / "summary.json").read_text())
    assert after["student"]["test_acc"] == before["student"]["test_acc"]
    stale = _distill(root, "ig.steps=4")
    assert stale.returncode == 2
    assert stale.stderr.startswith("error: ") and stale.stderr.strip().count("\n") == 0
    assert "--fresh" in stale.stderr


@pytest.mark.slow
def test_bad_preset_and_override_are_one_line_errors(tmp_path):
    for extra in (["--preset", "nope"], ["student.epoch=3"], ["teacher.checkpoint=/nonexistent.th"]):
        cmd = [sys.executable, "-m", "toolkit", "distill", "--run", "x", "--runs-dir", str(tmp_path), *extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
