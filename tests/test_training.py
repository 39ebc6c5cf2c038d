"""Training loop: bit-exact resume, stale checkpoints refused, non-finite loss stops, pipeline on tiny data."""

import json

import pytest
import torch

from toolkit import ToolkitError
from toolkit.config import build_config
from toolkit.pipeline import prepare_data, train_student
from toolkit.runs import RunFolder

SYNTH = ["data.dataset=synthetic", "data.synthetic_per_class=24", "data.val_size=40", "data.train_subset=null",
         "data.test_subset=null", "student.batch_size=32", "progress=false"]


def _cfg(*extra):
    return build_config("smoke", overrides=SYNTH + list(extra))


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path):
    cfg = _cfg("student.epochs=3", "configuration=Student")
    data = prepare_data(cfg)
    full = train_student(cfg, data, None, None, tmp_path / "full", configuration="Student")
    part = train_student(cfg, data, None, None, tmp_path / "resumed", configuration="Student", max_epochs_this_call=1)
    assert part["finished"] is False and (tmp_path / "resumed" / "student.ckpt").is_file()
    resumed = train_student(cfg, data, None, None, tmp_path / "resumed", configuration="Student")
    a = torch.load(tmp_path / "full" / "student.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "student.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_acc"] == full["test_acc"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    assert not (tmp_path / "resumed" / "student.ckpt").exists()


def test_finished_stage_is_reused_and_other_settings_are_refused(tmp_path):
    cfg = _cfg("student.epochs=1", "configuration=Student")
    data = prepare_data(cfg)
    first = train_student(cfg, data, None, None, tmp_path, configuration="Student")
    again = train_student(cfg, data, None, None, tmp_path, configuration="Student")
    assert again["test_acc"] == first["test_acc"] and again["seconds"] == first["seconds"]
    other = _cfg("student.epochs=1", "student.lr=0.05", "configuration=Student")
    with pytest.raises(ToolkitError, match="fingerprint differs"):
        train_student(other, data, None, None, tmp_path, configuration="Student")


def test_non_finite_loss_stops_with_the_step(tmp_path):
    cfg = _cfg("student.epochs=1", "student.lr=1e30", "precision=fp32", "configuration=Student")
    data = prepare_data(cfg)
    with pytest.raises(ToolkitError, match=r"non-finite loss in student at epoch 1, step \d+"):
        train_student(cfg, data, None, None, tmp_path, configuration="Student")


def test_training_learns_synthetic_classes(tmp_path):
    cfg = _cfg("student.epochs=4", "configuration=Student")
    result = train_student(cfg, prepare_data(cfg), None, None, tmp_path, configuration="Student")
    assert result["test_acc"] > 30.0  # 10 classes: chance is 10%
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and all("val_acc" in r for r in rows)


def test_same_seed_gives_same_init_and_order_across_configurations(tmp_path):
    from toolkit.models import load_model

    cfg = _cfg("student.epochs=1", "teacher.mode=scratch", "teacher.model=resnet8", "student.max_steps=1",
               "loss.alpha=0.0", "teacher.checkpoint=null")
    data = prepare_data(cfg)
    teacher = torch.nn.Identity()
    # alpha = 0 makes KD's total equal to CE's: the same seed must then give identical weights.
    from toolkit.models import build_model

    teacher = build_model("resnet8").eval()
    train_student(cfg, data, None, None, tmp_path / "a", configuration="Student")
    train_student(cfg, data, teacher, None, tmp_path / "b", configuration="KD")
    a, b = load_model("resnet8", tmp_path / "a" / "student.pt"), load_model("resnet8", tmp_path / "b" / "student.pt")
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_paper_preset_runs_a_few_steps_on_cpu(tmp_path):
    cfg = build_config("paper", overrides=["data.dataset=synthetic", "data.synthetic_per_class=16", "data.val_size=20",
                                           "student.max_steps=2", "student.epochs=1", "progress=false",
                                           "configuration=KD_AT"])
    data = prepare_data(cfg)
    from toolkit.models import build_model

    teacher = build_model(cfg.teacher.model).eval()
    result = train_student(cfg, data, teacher, None, tmp_path, configuration="KD_AT")
    assert result["finished"] and result["name"] == "mobilenetv2_cifar_L5" and result["params"] == 543_498
    assert set(result["history"][0]["losses"]) == {"ce", "kd", "at"}


def test_torchrun_ddp_two_processes_on_cpu(tmp_path):
    """The whole chain under torchrun (gloo on CPU): ranks agree on the teacher, IG cache and summary."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           "-m", "toolkit", "distill", "--preset", "smoke", "--name", "ddp", "--runs-dir", str(tmp_path),
           *SYNTH, "teacher.mode=scratch", "teacher.checkpoint=null", "teacher.model=resnet8", "teacher.epochs=1",
           "student.epochs=1", "ig.steps=2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("world size 2") == 2
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["student"]["name"] == "resnet8" and "baseline" in summary
