"""What the numbers mean: smoke runs say they are not meaningful, summaries and bench reports compare the student
with its teacher and its undistilled baseline, a student below its baseline is flagged; plots are readable."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from benchmarks import edge_report
from toolkit.run_summary import SMOKE_NOTE, compare_roles, print_table as _print_table

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_REPORT = REPO_ROOT / "reports" / "distill-cpu" / "bench" / "report.json"


def summary(preset: str = "smoke", student: float = 41.2, baseline: float = 45.3, teacher: float = 80.0) -> dict:
    return {"run": "demo", "run_dir": "runs/demo", "preset": preset, "configuration": "KD_IG", "data": "CIFAR-10 (test)",
            "teacher": {"name": "resnet20", "params": 269722, "test_acc": teacher, "val_acc": 81.0},
            "student": {"name": "resnet8", "params": 78042, "test_acc": student, "val_acc": 40.0},
            "baseline": {"name": "resnet8", "params": 78042, "test_acc": baseline, "val_acc": 44.0}}


def test_smoke_summary_says_not_meaningful_and_flags_a_worse_student(capsys):
    s = summary()
    cmp = compare_roles(s)
    assert cmp["meaningful"] is False and SMOKE_NOTE in cmp["notes"]
    assert "not meaningful" in SMOKE_NOTE and "only proves the chain works" in SMOKE_NOTE
    assert cmp["student_minus_teacher_points"] == pytest.approx(-38.8)
    assert cmp["student_minus_baseline_points"] == pytest.approx(-4.1)
    assert len(cmp["warnings"]) == 1 and cmp["warnings"][0].startswith("WARNING") and "BELOW" in cmp["warnings"][0]
    s["comparison"] = cmp
    _print_table(s)
    out = capsys.readouterr().out
    assert SMOKE_NOTE in out
    assert "student vs teacher: -38.80 points" in out and "3.46x fewer parameters" in out
    assert "distillation gain over the baseline student (same split, seed and init): -4.10 points" in out
    assert "WARNING: the distilled student is 4.10 points BELOW its undistilled baseline" in out
    assert "CF: compression factor" in out


def test_real_run_with_a_gain_has_no_warning_and_no_smoke_note(capsys):
    s = summary(preset="cpu", student=81.77, baseline=80.13, teacher=88.91)
    cmp = compare_roles(s)
    assert cmp["meaningful"] is True and cmp["warnings"] == [] and SMOKE_NOTE not in cmp["notes"]
    _print_table(s)
    out = capsys.readouterr().out
    assert "not meaningful" not in out and "WARNING" not in out
    assert "student vs teacher: -7.14 points" in out and "+1.64 points" in out


def test_real_run_worse_than_baseline_is_flagged_too():
    cmp = compare_roles(summary(preset="cpu", student=60.0, baseline=61.5))
    assert cmp["meaningful"] and cmp["warnings"] and "one seed" in cmp["warnings"][0]


def bench_report(tmp_path: Path, preset: str, summary_dict: dict | None) -> dict:
    report = json.loads(BENCH_REPORT.read_text())
    report = copy.deepcopy(report)
    report["preset"] = preset
    report["run_dir"] = str(tmp_path)
    if summary_dict is not None:
        (tmp_path / "summary.json").write_text(json.dumps(summary_dict))
    return report


def test_smoke_bench_report_is_marked_and_compares_student_with_teacher(tmp_path):
    report = bench_report(tmp_path, "smoke", summary(student=41.2, baseline=45.3))
    md = edge_report.render_markdown(report)
    assert "smoke preset: figures are not meaningful, the run only proves the chain works" in md
    section = md.split("## Student vs teacher", 1)[1].split("\n## ", 1)[0]
    acc = report["accuracy"]  # the committed cpu bench report: gap and agreement as it measured them
    gap = acc["models"]["student.fp32"]["top1"] - acc["models"]["teacher.fp32"]["top1"]
    agree = acc["agreement"]["student.fp32 vs teacher.fp32"]
    assert f"Student fp32 vs teacher (ORT fp32): {gap:+.2f} points" in section and f"{agree:.2f}%" in section
    assert "Student int8 (what may ship) vs teacher" in section
    assert "WARNING: the distilled student is 4.10 points BELOW its undistilled baseline" in section


def test_bench_report_shows_sizes_params_tables_and_explains_figures(tmp_path):
    report = bench_report(tmp_path, "cpu", summary(preset="cpu", student=81.77, baseline=80.13, teacher=88.91)
                          | {"student": {"name": "resnet20", "params": 269722, "test_acc": 81.77}})
    md = edge_report.render_markdown(report)
    assert "not meaningful" not in md and "WARNING" not in md
    models = md.split("## Models", 1)[1].split("\n## ", 1)[0]
    assert "| student ORT int8 | `resnet20` | 269,722 | `student.int8.onnx` | 309 KiB |" in models
    assert "| teacher ORT fp32 | `resnet56` | 853,018 | `teacher.fp32.onnx` | 3,351 KiB |" in models
    assert "{'" not in md  # settings are tables, not Python dicts
    assert "| graph_optimization | all |" in md and "| warmup | 5 |" in md
    assert "Max |logit| difference: the largest absolute difference" in md
    assert "Columns: bit-exact images %" in md


def test_all_dash_accuracy_columns_are_dropped(tmp_path):
    report = bench_report(tmp_path, "cpu", None)
    for entry in report["accuracy"]["models"].values():
        entry.pop("top1_exact_images", None)
        entry.pop("top1_jpeg_images", None)
    md = edge_report.render_markdown(report)
    header = next(line for line in md.splitlines() if line.startswith("| model | top-1 % |"))
    assert "bit-exact" not in header and "JPEG" not in header and "export-time top-1 %" in header


def test_log_axis_ticks_are_plain_numbers():
    from toolkit.experiments.report import pyplot, readable_log_axis

    plt = pyplot()
    fig, ax = plt.subplots()
    xs = [0.25, 0.51, 0.81, 1.29]
    ax.plot(xs, [1, 2, 3, 4])
    ax.set_xscale("log")
    readable_log_axis(ax, xs, "x")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    assert labels and minor == [] and all("10^" not in t and "times" not in t for t in labels), labels
    assert labels == ["0.25", "0.51", "0.81", "1.3"]


def test_overlay_examples_take_class_names(tmp_path):
    import torch

    from toolkit.attribution.examples import save_overlay_examples
    from toolkit.config import OverlayConfig
    from toolkit import ToolkitError

    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    maps = torch.rand(3, 32, 32)
    save_overlay_examples(images, maps, OverlayConfig(), tmp_path / "ex.png", labels=["cat", "dog", "ship"])
    assert (tmp_path / "ex.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ToolkitError, match="one label per image"):
        save_overlay_examples(images, maps, OverlayConfig(), tmp_path / "ex2.png", labels=["cat"])


def test_smoke_study_header_says_not_meaningful():
    from toolkit.experiments.report import header

    text = header("Ablation", {"scale": "smoke", "preset": "smoke", "invocations": []}, 2, 2)
    assert "figures are not meaningful, the run only proves the chain works" in text
    assert "not meaningful" not in header("Ablation", {"scale": "cpu", "preset": "cpu", "invocations": []}, 2, 2)
