"""Bring your own classifier, end to end: an image folder built here (mixed sizes and modes, a corrupt file), a
torchvision teacher and a student truncated from it, through distill -> export -> bench-edge -> predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit import ToolkitError
from toolkit.config import build_config

CLASSES = ("cat", "dog", "frog")
SIZE = 40  # not 32: the resize rule and the augmentation run at the run's own size


def _photo(cls: int, i: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A learnable colour pattern per class plus noise, uint8 (H, W, 3)."""
    base = np.zeros((*size[::-1], 3), np.float32)
    base[..., cls] = 200
    base += rng.normal(0, 25, base.shape)
    return base.clip(0, 255).astype(np.uint8)


def make_image_folder(root: Path, per_class: int = 14, corrupt: bool = True, seed: int = 0) -> Path:
    """root/<class>/*.{jpg,png,gif,webp}: RGB JPEG, grayscale PNG, palette GIF, RGBA PNG, CMYK JPEG; various sizes."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            size = [(48, 40), (64, 64), (37, 53), (80, 60), (40, 40)][i % 5]
            img = Image.fromarray(_photo(c, i, rng, size))
            kind = i % 5
            if kind == 0:
                img.save(d / f"{i}.jpg", quality=95)
            elif kind == 1:
                img.convert("RGBA").save(d / f"{i}.png")
            elif kind == 2:
                img.convert("P").save(d / f"{i}.gif")
            elif kind == 3:
                img.convert("CMYK").save(d / f"{i}.jpg", quality=95)
            else:
                img.save(d / f"{i}.webp")
    if corrupt:
        (root / CLASSES[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def folder_overrides(tmp_path: Path, train_dir: Path, **extra: str) -> list[str]:
    base = {"data.train_dir": str(train_dir), "data.image_size": str(SIZE), "data.cache_dir": str(tmp_path / "cache"),
            "data.val_size": "6", "data.test_size": "9", "data.skip_bad": "true",
            "teacher.model": "torchvision:mobilenet_v2", "teacher.mode": "scratch", "teacher.epochs": "2",
            "teacher.batch_size": "16", "teacher.lr": "0.05", "student.model": "truncate:12", "student.epochs": "2",
            "student.batch_size": "16", "ig.steps": "4", "ig.batch_size": "8", "progress": "false"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from toolkit.pipeline import run_distill

    tmp = tmp_path_factory.mktemp("folder")
    train_dir = make_image_folder(tmp / "photos")
    cfg = build_config("folder", overrides=folder_overrides(tmp, train_dir))
    summary = run_distill(cfg, "byo", runs_dir=tmp / "runs")
    return tmp, train_dir, tmp / "runs" / "byo", summary


@pytest.mark.slow
def test_folder_run_records_splits_sizes_and_skipped_files(folder_run):
    tmp, train_dir, root, summary = folder_run
    assert summary["image_size"] == SIZE and summary["classes"] == list(CLASSES)
    assert summary["split"]["skipped_images"] == 1
    assert summary["student"]["name"] == "truncate:12:torchvision:mobilenet_v2"
    assert summary["student"]["params"] < summary["teacher"]["params"]
    splits = json.loads((root / "splits.json").read_text())
    files = {k: set(v) for k, v in splits["files"].items()}
    assert files["train"].isdisjoint(files["test"]) and files["val"].isdisjoint(files["test"])
    assert files["train"].isdisjoint(files["val"])
    assert len(files["test"]) == 9 and len(files["val"]) == 6
    assert sum(len(v) for v in files.values()) == 3 * 14  # every readable file in exactly one split
    assert [Path(p).name for p, _ in splits["skipped"]] == ["broken.jpg"]
    cfg = yaml_config(root)
    assert cfg["data"]["dataset"] == "folder" and cfg["student"]["model"] == "truncate:12:torchvision:mobilenet_v2"


def yaml_config(root: Path) -> dict:
    import yaml

    return yaml.safe_load((root / "config.yaml").read_text())


@pytest.mark.slow
def test_folder_run_exports_benchmarks_and_predicts(folder_run):
    from benchmarks import bench_edge
    from deploy.export import ExportConfig, run_export
    from deploy.steps import ExportOnnxConfig, QuantizeConfig
    from edgecommon.images import fit_image, resize_rule

    tmp, train_dir, root, summary = folder_run
    cfg = ExportConfig(export=ExportOnnxConfig(exporter="torchscript", opset=17), quantize=QuantizeConfig(calib_size=16),
                       parity_images=9, parity_random=4, max_drop=100.0)
    manifest = run_export(root, cfg, log=lambda s: None)
    entry = manifest.models["student.fp32"]
    assert entry.preprocessing.image_size == [SIZE, SIZE] and entry.input.shape[1:] == [3, SIZE, SIZE]
    assert entry.preprocessing.resize == resize_rule(SIZE)
    assert manifest.classes == list(CLASSES)
    assert entry.accuracy["n"] == 9  # the run's own carved test split
    # the teacher's exported accuracy is the one the run measured on the same test images
    assert manifest.models["teacher.fp32"].accuracy["top1"] == pytest.approx(summary["teacher"]["test_acc"], abs=1e-3)

    assert bench_edge.main(["--run", str(root), "--quick", "--no-aarch64", "--batches", "1", "--threads", "1"]) == 0
    report = json.loads((root / "bench" / "report.json").read_text())
    assert report["accuracy"]["n"] == 9
    assert str(SIZE) in report["settings"]["input"]

    # deploy.predict on an original file of another size and mode: same rule as training, same answer as ORT here
    splits = json.loads((root / "splits.json").read_text())
    some = train_dir / splits["files"]["test"][0]
    out = subprocess.run([sys.executable, "-m", "deploy.predict", str(root / "export" / "manifest.json"), str(some),
                          "--json", "--model", "student.fp32"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pred = json.loads(out.stdout)[0]
    import onnxruntime as ort

    with Image.open(some) as im:
        x = fit_image(im, SIZE).transpose(2, 0, 1)[None].astype(np.float32) / 255
    sess = ort.InferenceSession(str(root / "export" / "student.fp32.onnx"), providers=["CPUExecutionProvider"])
    assert pred["indices"][0] == int(sess.run(None, {"input": x})[0].argmax())


@pytest.mark.slow
def test_teacher_used_as_is_exports(tmp_path):
    """teacher.mode=load (a user's trained network, here a bare torchvision state dict) distils and exports."""
    import torchvision

    from deploy.export import ExportConfig, run_export
    from deploy.steps import ExportOnnxConfig, QuantizeConfig
    from toolkit.pipeline import run_distill

    train_dir = make_image_folder(tmp_path / "photos", per_class=8, corrupt=False)
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    torch.save(net.state_dict(), tmp_path / "mine.pth")
    cfg = build_config("folder", overrides=folder_overrides(
        tmp_path, train_dir, **{"teacher.model": "torchvision:resnet18", "teacher.mode": "load",
                                "teacher.checkpoint": str(tmp_path / "mine.pth"), "student.model": "resnet8",
                                "data.val_size": "3", "data.test_size": "3", "student.epochs": "1", "configuration": "KD"}))
    summary = run_distill(cfg, "load", runs_dir=tmp_path / "runs", stages=["teacher", "student"])
    assert summary["teacher"]["checkpoint"] == "teacher.pt" and summary["teacher"]["mode"] == "load"
    cfg_x = ExportConfig(export=ExportOnnxConfig(exporter="torchscript", opset=17), quantize=QuantizeConfig(calib_size=8),
                         parity_images=3, parity_random=2, max_drop=100.0)
    manifest = run_export(tmp_path / "runs" / "load", cfg_x, log=lambda s: None)
    assert manifest.models["teacher.fp32"].architecture == "torchvision:resnet18"


def test_folder_config_errors_are_one_line(tmp_path):
    with pytest.raises(ToolkitError, match="needs data.train_dir"):
        build_config("folder", overrides=["data.image_size=64"])
    with pytest.raises(ToolkitError, match="needs data.image_size"):
        build_config("folder", overrides=[f"data.train_dir={tmp_path}"])
    with pytest.raises(ToolkitError, match="image_size"):
        build_config("folder", overrides=[f"data.train_dir={tmp_path}", "data.image_size=big"])
    with pytest.raises(ToolkitError, match="needs data.dataset=folder"):
        build_config("smoke", overrides=["data.image_size=64"])
    with pytest.raises(ToolkitError, match="reset_head"):
        build_config("folder", overrides=[f"data.train_dir={tmp_path}", "data.image_size=64", "teacher.reset_head=true"])


@pytest.mark.slow
def test_mismatched_head_refused_then_reset(tmp_path):
    """A 1000-class checkpoint on 3-class data: refused with the shapes; teacher.reset_head=true fine-tunes it."""
    import torchvision

    from toolkit.pipeline import run_distill

    train_dir = make_image_folder(tmp_path / "photos", per_class=6, corrupt=False)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "imagenet_like.pth")
    over = {"teacher.model": "torchvision:mobilenet_v3_small", "teacher.mode": "finetune", "teacher.epochs": "1",
            "teacher.checkpoint": str(tmp_path / "imagenet_like.pth"), "data.val_size": "3", "data.test_size": "3"}
    cfg = build_config("folder", overrides=folder_overrides(tmp_path, train_dir, **over))
    with pytest.raises(ToolkitError, match=r"1000.*3|3.*1000") as err:
        run_distill(cfg, "head", runs_dir=tmp_path / "runs", stages=["teacher"])
    assert "reset_head" in str(err.value) and "\n" not in str(err.value)
    cfg = build_config("folder", overrides=folder_overrides(tmp_path, train_dir, **over, **{"teacher.reset_head": "true"}))
    summary = run_distill(cfg, "head", runs_dir=tmp_path / "runs", stages=["teacher"])
    assert summary["teacher"]["checkpoint"] == "teacher.pt"


@pytest.mark.slow
def test_study_runs_on_an_image_folder(tmp_path):
    """The paper's studies take a folder run as they take CIFAR-10 (here the smoke ablation, 2 configurations)."""
    from toolkit.cli import main

    photos = make_image_folder(tmp_path / "photos", per_class=10, corrupt=False)
    out = tmp_path / "study"
    rc = main(["experiment", "ablation", "--scale", "smoke", "--preset", "folder", "--out", str(out),
               f"data.train_dir={photos}", f"data.image_size={SIZE}", f"data.cache_dir={tmp_path / 'cache'}",
               "teacher.mode=scratch", "teacher.epochs=1", "teacher.model=torchvision:mobilenet_v3_small",
               "student.model=truncate:6", "data.train_subset=1.0", "data.val_size=6", "data.test_size=6",
               "data.test_subset=null", "progress=false"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["configuration"] for r in rows) == ["KD_IG", "KD_IG", "Student", "Student"]
    assert all(r["test_n"] == 6 if "test_n" in r else True for r in rows)
    report = (out / "report.md").read_text()
    assert f"({len(CLASSES)} classes, {SIZE} px)" in report and "truncate:6:torchvision:mobilenet_v3_small" in report


@pytest.mark.parametrize("case", ["empty_class", "no_classes", "corrupt", "test_classes_differ"])
def test_bad_folders_are_one_line_errors_from_the_cli(tmp_path, case):
    photos = make_image_folder(tmp_path / "photos", per_class=5, corrupt=case == "corrupt")
    extra = []
    if case == "empty_class":
        (photos / "zebra").mkdir()
        expect = "zebra"
    elif case == "no_classes":
        photos = tmp_path / "flat"
        photos.mkdir()
        Image.new("RGB", (8, 8)).save(photos / "a.png")
        expect = "flat"
    elif case == "corrupt":
        expect = "broken.jpg"
    else:
        other = make_image_folder(tmp_path / "other", per_class=2, corrupt=False)
        (other / "cat").rename(other / "lion")
        extra = [f"data.test_dir={other}"]
        expect = "lion"
    cmd = [sys.executable, "-m", "toolkit", "distill", "--preset", "folder", "--run", "bad", "--runs-dir",
           str(tmp_path / "runs"), f"data.train_dir={photos}", "data.image_size=24",
           f"data.cache_dir={tmp_path / 'cache'}", "progress=false", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    assert expect in r.stderr
    if case == "corrupt":  # the split holding the broken file left nothing behind; finished splits are valid entries
        assert len(list((tmp_path / "cache").glob("*.npy"))) < 3 and not list((tmp_path / "cache").glob("*.tmp*"))


def test_ig_cost_is_printed_before_the_maps_at_the_runs_size(tmp_path, capsys):
    from toolkit.pipeline import run_distill

    photos = make_image_folder(tmp_path / "photos", per_class=4, corrupt=False)
    cfg = build_config("folder", overrides=folder_overrides(
        tmp_path, photos, **{"teacher.epochs": "0", "teacher.model": "torchvision:mobilenet_v3_small",
                             "student.model": "truncate:9", "data.val_size": "2", "data.test_size": "2"}))
    run_distill(cfg, "ig", runs_dir=tmp_path / "runs", stages=["teacher", "ig"])
    out = capsys.readouterr().out
    assert "IG maps: 8 images x 4 steps x" in out and "TFLOP; expected about" in out
    from toolkit.attribution.cache import read_ig_cache

    _, maps = read_ig_cache(tmp_path / "runs" / "ig" / "ig")
    assert tuple(maps.shape) == (8, SIZE, SIZE)
    run_distill(cfg, "ig", runs_dir=tmp_path / "runs", stages=["teacher", "ig"])
    assert "IG maps:" not in capsys.readouterr().out  # a finished cache: nothing to estimate


def _mapped_file(address: int) -> str | None:
    """The file a memory address is mapped from (Linux /proc/self/maps), or None for anonymous memory."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        start, end = (int(v, 16) for v in parts[0].split("-"))
        if start <= address < end:
            return parts[5] if len(parts) > 5 and parts[5].startswith("/") else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_a_memory_mapped_folder_trains_end_to_end(tmp_path):
    """data.in_memory=false (what `auto` picks for a set larger than memory): training, IG maps and evaluation read
    the decoded cache through a memory map, and give the same teacher as the in-RAM run."""
    from toolkit.data.prepare import prepare_data
    from toolkit.pipeline import run_distill

    photos = make_image_folder(tmp_path / "photos", per_class=6, corrupt=False)
    over = {"teacher.epochs": "1", "teacher.model": "torchvision:mobilenet_v3_small", "student.model": "truncate:9",
            "student.epochs": "1", "data.val_size": "3", "data.test_size": "3", "baseline": "false"}
    results = {}
    for mode in ("false", "true"):
        cfg = build_config("folder", overrides=folder_overrides(tmp_path, photos, **over, **{"data.in_memory": mode}))
        data = prepare_data(cfg)
        backing = _mapped_file(data.train.images.data_ptr())
        assert (backing is not None and backing.endswith(".npy")) is (mode == "false"), backing
        results[mode] = run_distill(cfg, f"mm-{mode}", runs_dir=tmp_path / "runs")
    assert results["false"]["teacher"]["test_acc"] == results["true"]["teacher"]["test_acc"]
    assert results["false"]["student"]["test_acc"] == results["true"]["student"]["test_acc"]


@pytest.mark.slow
def test_run_records_its_stage_times_and_bench_pipeline_reports_them(folder_run, tmp_path, capsys):
    from benchmarks import bench_pipeline

    tmp, train_dir, root, summary = folder_run
    timing = json.loads((root / "summary.json").read_text())["timing"]
    stages = timing["stage_seconds"]
    assert list(stages)[:4] == ["data", "teacher", "ig", "student"] and all(v >= 0 for v in stages.values())
    assert sum(stages.values()) <= summary["seconds"] + 0.5  # laps of one clock
    assert timing["torch_threads"] >= 1 and timing["world_size"] == 1 and timing["cpu"]
    assert timing["load_average_start"] is None or len(timing["load_average_start"]) == 3
    out = tmp_path / "pipeline"
    assert bench_pipeline.main(["--quick", "--skip", "train", "--skip", "ig", "--distill-run", str(root),
                                "--out", str(out)]) == 0
    result = json.loads((out / "bench-pipeline.json").read_text())
    aim = next(a for a in result["aims"] if a["aim"].startswith("make distill"))
    assert aim["target"] == "<= 25 min" and aim["measured"] == f"{summary['seconds'] / 60:.1f} min"
    assert ("yes" if summary["seconds"] <= 1500 else "no") in aim["met"]
    md = (out / "bench-pipeline.md").read_text()
    assert "## make distill:" in md and "| teacher |" in md
    assert bench_pipeline.main(["--quick", "--skip", "train", "--skip", "ig", "--distill-run", str(tmp_path),
                                "--out", str(out)]) == 2
    assert "--distill-run: no readable summary.json" in capsys.readouterr().err
