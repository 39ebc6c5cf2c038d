"""A new user's first hour (issue 15): nothing destroyed without asking, one vocabulary, errors before work.

Fast: no training; run folders are hand-made under tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit import ToolkitError
from toolkit.cli import main as toolkit_main
from toolkit.config import build_config
from toolkit.runs import finished_runs, move_aside, resolve_run

REPO_ROOT = Path(__file__).resolve().parents[1]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def _finished(runs: Path, name: str) -> Path:
    root = runs / name
    root.mkdir(parents=True)
    (root / "summary.json").write_text(json.dumps({"preset": "smoke"}))
    return root


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


# ---------------------------------------------------------------- run name or path


def test_resolve_run_takes_a_name_or_a_path(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    demo = _finished(runs, "demo")
    (runs / "half").mkdir()  # no summary.json: a folder, but not a finished run
    assert resolve_run("demo", runs) == demo
    assert resolve_run(str(demo), runs) == demo
    assert resolve_run(demo, runs) == demo
    monkeypatch.chdir(tmp_path)
    assert resolve_run("demo") == Path("runs/demo")
    assert resolve_run("runs/demo") == Path("runs/demo")
    assert finished_runs("runs") == ["demo"]
    with pytest.raises(ToolkitError, match=r"run folder not found: nope \(nor runs/nope\); finished runs in runs/: demo$"):
        resolve_run("nope")
    with pytest.raises(ToolkitError, match="name the run: RUN=<name>.*finished runs in runs/: demo"):
        resolve_run("")
    with pytest.raises(ToolkitError, match="no finished run in"):
        resolve_run("x", tmp_path / "empty")


def test_export_and_bench_refuse_a_missing_run_listing_finished_ones(tmp_path, monkeypatch, capsys):
    from benchmarks import bench_edge
    from deploy import export

    _finished(tmp_path / "runs", "demo")
    monkeypatch.chdir(tmp_path)
    for entry in (export.main, bench_edge.main):
        assert entry(["--run", ""]) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert "RUN=<name>" in line and "finished runs in runs/: demo" in line
        assert entry(["--run", "other"]) == 2
        assert "run folder not found: other" in _one_error_line(capsys.readouterr().err)
    assert bench_edge.config_from_args(["--run", "demo"]).run == Path("runs/demo")  # a name, as toolkit distill


# ---------------------------------------------------------------- make: guards and vocabulary


def _make(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The repo's Makefile run in tmp_path with the test's Python as the venv (install is up to date)."""
    shutil.copy(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").touch()
    venv = tmp_path / "venv"
    venv.mkdir(exist_ok=True)
    (venv / ".installed").touch()
    os.utime(tmp_path / "pyproject.toml", (1, 1))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MAKEFLAGS": ""}
    return subprocess.run(["make", "--no-print-directory", f"VENV={venv}", f"PY={sys.executable}", *args],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)


@needs_make
def test_make_export_and_bench_edge_need_run(tmp_path):
    _finished(tmp_path / "runs", "cpu")  # the preset's name: once acted on silently
    for target in ("export", "bench-edge"):
        r = _make(tmp_path, target)
        assert r.returncode != 0
        assert "error: name the run: RUN=<name>" in r.stderr and "finished runs in runs/: cpu" in r.stderr
    dry = _make(tmp_path, "-n", "export", "RUN=cpu").stdout
    assert "--run 'cpu'" in dry


@needs_make
def test_make_vocabulary_matches_the_cli(tmp_path):
    dry = _make(tmp_path, "-n", "distill", "PRESET=smoke", "CONFIG=KD", "CONFIG_FILE=x.yaml", "RESUME=0",
                "student.epochs=3").stdout
    assert "--configuration KD" in dry and "--config-file x.yaml" in dry and "--fresh" in dry
    assert "student.epochs=3" in dry and "--run" not in dry  # default run folder: the CLI's <preset>-<configuration>
    assert "--out reports/ablation-cpu" in _make(tmp_path, "-n", "ablation", "OUT=reports/ablation-cpu").stdout
    assert "--out" not in _make(tmp_path, "-n", "ablation").stdout  # default: runs/studies/ablation-cpu
    helped = _make(tmp_path, "help").stdout
    for target in ("distill", "teacher", "export", "bench-edge", "bench-pipeline", "setup-aarch64", "clean", "test"):
        assert f"make {target}" in helped, target
    assert _make(tmp_path).stdout == helped  # plain `make` prints the help, it installs nothing


@needs_make
def test_make_clean_lists_and_needs_confirm(tmp_path):
    demo = _finished(tmp_path / "runs", "demo")
    (demo / "export").mkdir()
    r = _make(tmp_path, "clean")
    assert r.returncode == 0 and "runs/demo/" in r.stdout and "CONFIRM=1" in r.stdout
    assert (demo / "export").is_dir()  # nothing deleted
    r = _make(tmp_path, "clean", "CONFIRM=1")
    assert r.returncode == 0 and not demo.exists()


# ---------------------------------------------------------------- --fresh keeps the old folder


def test_move_aside_keeps_everything(tmp_path):
    root = _finished(tmp_path, "demo")
    (root / "export").mkdir()
    (root / "export" / "manifest.json").write_text("{}")
    first = move_aside(root)
    assert not root.exists() and first.name.startswith("demo.old-")
    assert (first / "export" / "manifest.json").is_file() and (first / "summary.json").is_file()
    _finished(tmp_path, "demo")
    second = move_aside(root)
    assert second != first and second.is_dir() and first.is_dir()
    assert move_aside(tmp_path / "absent") is None


def test_fresh_moves_the_run_aside_and_says_so(tmp_path, capsys, monkeypatch):
    from toolkit import pipeline

    root = _finished(tmp_path / "runs", "mine")
    (root / "teacher.pt").write_bytes(b"x")
    (root / "bench").mkdir()
    (root / "bench" / "report.md").write_text("measured")

    def stop(cfg):
        raise ToolkitError("stopped before data")

    monkeypatch.setattr(pipeline, "prepare_data", stop)
    cfg = build_config("smoke")
    with pytest.raises(ToolkitError, match="stopped before data"):
        pipeline.run_distill(cfg, run_name="mine", runs_dir=tmp_path / "runs", resume=False)
    out = capsys.readouterr().out
    old = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("mine.old-")]
    assert len(old) == 1 and (old[0] / "bench" / "report.md").read_text() == "measured"
    assert "moved the old run folder" in out and str(old[0]) in out and "nothing deleted" in out
    assert root.is_dir() and not (root / "teacher.pt").exists()  # the new run starts empty


# ---------------------------------------------------------------- config values: types and names


@pytest.mark.parametrize("override, expected", [
    ("student.epochs=two", "config key student.epochs: expected a whole number (int), got 'two' (str)"),
    ("student.epochs=2.5", "config key student.epochs: expected a whole number (int), got 2.5 (float)"),
    ("loss.alpha=abc", "config key loss.alpha: expected a number (float), got 'abc' (str)"),
    ("channels_last=maybe", "config key channels_last: expected true or false (bool), got 'maybe' (str)"),
    ("data.val_size=lots", "config key data.val_size: expected a whole number (int) or a number (float), got 'lots'"),
    ("loss.at_layers=3", "config key loss.at_layers: expected a list such as [a, b] or null, got 3 (int)"),
    ("data.train_subset=[1]", "config key data.train_subset: expected a number (float) or a whole number (int) or null"),
    ("student=3", "config key student is a section, not a value"),
])
def test_override_types_are_checked_in_one_line(override, expected, capsys, tmp_path):
    assert toolkit_main(["distill", "--preset", "smoke", "--runs-dir", str(tmp_path), override]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_good_values_still_pass_and_convert():
    cfg = build_config("smoke", None, ["student.lr=1e-3", "data.in_memory=true", "data.val_size=0.2",
                                       "data.val_size=100", "loss.at_weight=null", "data.data_dir=2024"])
    assert cfg.student.lr == 0.001 and cfg.data.in_memory == "true" and cfg.data.val_size == 100
    assert cfg.loss.at_weight is None and cfg.data.data_dir == "2024"


def test_yaml_file_values_are_checked_too(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student:\n  batch_size: big\n")
    with pytest.raises(ToolkitError, match="config key student.batch_size: expected a whole number"):
        build_config("smoke", str(bad))


@pytest.mark.parametrize("override, suggestion", [
    ("student.epoch=3", "did you mean 'student.epochs'?"),
    ("loss.temprature=2", "did you mean 'loss.temperature'?"),
    ("epochs=3", "did you mean 'teacher.epochs' or 'student.epochs'?"),
])
def test_unknown_key_suggests_the_nearest(override, suggestion, capsys):
    assert toolkit_main(["distill", "--preset", "smoke", override]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "unknown config key" in line and suggestion in line


# ---------------------------------------------------------------- stage plan before any work


def test_stage_plan_fails_before_training(tmp_path, capsys, monkeypatch):
    from toolkit import pipeline

    def no_work(*a, **k):
        raise AssertionError("work started before the stage plan was checked")

    monkeypatch.setattr(pipeline, "prepare_data", no_work)
    monkeypatch.setattr(pipeline, "prepare_teacher", no_work)
    assert toolkit_main(["distill", "--preset", "smoke", "--run", "new", "--runs-dir", str(tmp_path),
                         "--stages", "student"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "also needs stage teacher and ig" in line and "use --stages teacher,ig,student" in line
    assert not (tmp_path / "new").exists()
    assert toolkit_main(["distill", "--preset", "smoke", "--runs-dir", str(tmp_path), "--stages", "studnet"]) == 2
    assert "unknown stage(s) ['studnet']" in capsys.readouterr().err


def test_stage_plan_accepts_what_the_folder_already_has(tmp_path):
    from toolkit.pipeline import check_stage_plan

    cfg = build_config("smoke")  # KD_IG
    root = tmp_path / "run"
    root.mkdir()
    (root / "teacher.pt").write_bytes(b"x")
    with pytest.raises(ToolkitError, match="also needs stage ig .*use --stages ig,student"):
        check_stage_plan(cfg, root, ["student"])
    assert check_stage_plan(cfg, root, ["student", "ig"]) == ["ig", "student"]  # run order
    assert check_stage_plan(cfg, root, ["baseline"]) == ["baseline"]
    with pytest.raises(ToolkitError, match="also needs stage teacher .*--fresh starts it empty"):
        check_stage_plan(cfg, root, ["ig", "student"], resume=False)
    kd = build_config("smoke", None, ["configuration=KD"])
    assert check_stage_plan(kd, root, ["student"]) == ["student"]
    assert check_stage_plan(cfg, tmp_path / "new", None) == ["teacher", "ig", "student", "baseline"]


# ---------------------------------------------------------------- CLI vocabulary


def test_distill_cli_names(tmp_path, monkeypatch, capsys):
    from toolkit import pipeline

    seen = {}

    def fake_run(cfg, run_name=None, runs_dir="runs", resume=True, stages=None, save_examples=False):
        seen.update(cfg=cfg, run=run_name, resume=resume)
        return {}

    monkeypatch.setattr(pipeline, "run_distill", fake_run)
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("student:\n  epochs: 7\n")
    assert toolkit_main(["distill", "--preset", "smoke", "--config-file", str(yaml_file), "--configuration", "KD",
                         "--data-dir", "/data/cifar", "--fresh"]) == 0
    cfg = seen["cfg"]
    assert cfg.student.epochs == 7 and cfg.configuration == "KD" and cfg.data.data_dir == "/data/cifar"
    assert seen["resume"] is False and seen["run"] is None  # run_distill names it <preset>-<configuration>
    assert toolkit_main(["distill", "--preset", "smoke", "--config", str(yaml_file)]) == 0  # old name, with a note
    assert seen["cfg"].student.epochs == 7 and "--config-file" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-m", "toolkit", "distill", "--help"], capture_output=True, text=True,
                               cwd=REPO_ROOT).stdout
    assert "about 35 min" in help_text and "--config-file" in help_text and "RESUME=0" in help_text


def test_cf_says_against_what(capsys):
    assert toolkit_main(["models", "--family", "resnet56"]) == 0
    out = capsys.readouterr().out
    assert "CF vs resnet56" in out.splitlines()[0]
    from toolkit.run_summary import print_table as _print_table

    row = {"name": "resnet8", "params": 100, "test_acc": 50.0, "val_acc": 51.0}
    _print_table({"run": "r", "preset": "smoke", "configuration": "KD", "data": "d", "run_dir": "runs/r",
                  "teacher": {**row, "name": "resnet20", "params": 300}, "student": row})
    out = capsys.readouterr().out
    assert "CF vs teacher" in out  # the column header says against what


def test_studies_default_to_runs_not_reports():
    from toolkit.experiments.common import study_path
    from toolkit.experiments.scales import load_scale

    settings = load_scale("ablation", "smoke")
    assert study_path(settings, None) == Path("runs/studies/ablation-smoke")
    assert study_path(settings, "reports/ablation-smoke") == Path("reports/ablation-smoke")
