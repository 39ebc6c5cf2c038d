"""Image folders: listing, the one image rule (shared with deploy.runtime), seeded splits, the decoded cache, bad files,
and ``python -m toolkit data to-folder``. Folders are built on the fly; the real ImageNet-aligned check is integration."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from deploy.runtime import load_image
from edgecommon.images import IMAGE_SUFFIXES, fit_image, open_image, resize_rule, to_rgb
from toolkit import ToolkitError
from toolkit.cli import main as cli_main
from toolkit.config import DataConfig
from toolkit.data import image_cache
from toolkit.data.folder import load_folder_splits, scan_image_folder
from toolkit.data.imagenet_aligned import SHARED_ALIGNED_DIR
from toolkit.data.splits import holdout_size

S = 48
RNG = np.random.default_rng(0)


def rgb(h: int, w: int) -> np.ndarray:
    """A smooth random colour picture (JPEG-friendly), uint8 (h, w, 3)."""
    small = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def write_mixed(folder: Path) -> dict[str, Path]:
    """Two classes of images in many modes, sizes and formats."""
    a, b = folder / "apple", folder / "bear"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    files = {
        "rgb_jpeg": (a / "rgb.jpg", Image.fromarray(rgb(60, 100))),
        "gray_png": (a / "gray.png", Image.fromarray(rgb(50, 30)).convert("L")),
        "palette_gif": (a / "pal.gif", Image.fromarray(rgb(64, 64)).convert("P", palette=Image.Palette.ADAPTIVE)),
        "exact_png": (a / "exact.png", Image.fromarray(rgb(S, S))),
        "rgba_png": (b / "rgba.png", Image.fromarray(np.dstack([rgb(70, 90), RNG.integers(0, 256, (70, 90), dtype=np.uint8)]))),
        "cmyk_jpeg": (b / "cmyk.jpg", Image.fromarray(rgb(48, 96)).convert("CMYK")),
        "la_png": (b / "la.png", Image.fromarray(rgb(40, 40)).convert("LA")),
        "palette_png": (b / "pal_t.png", Image.fromarray(rgb(33, 47)).convert("P", palette=Image.Palette.ADAPTIVE)),
    }
    if features.check("webp"):
        files["webp"] = (b / "img.webp", Image.fromarray(rgb(120, 80)))
    out = {}
    for key, (path, img) in files.items():
        if key == "palette_png":
            img.info["transparency"] = 0
        img.save(path)
        out[key] = path
    return out


def write_classes(folder: Path, counts: dict[str, int], size: tuple[int, int] = (40, 56)) -> None:
    for cls, n in counts.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rgb(*size)).save(folder / cls / f"{i:03d}.png")


def cfg(tmp_path: Path, train: Path, **kw) -> DataConfig:
    values = dict(dataset="folder", train_dir=str(train), image_size=S, val_size=0, test_size=1,
                  cache_dir=str(tmp_path / "cache"))
    values.update(kw)
    return DataConfig(**values)


def rows_by_file(fs) -> dict[str, torch.Tensor]:
    return {f: s.images[i] for split, s in (("train", fs.train), ("val", fs.val), ("test", fs.test))
            for i, f in enumerate(fs.files[split])}


def old_runtime_rule(img: Image.Image, size: int) -> np.ndarray:
    """deploy.runtime's preprocessing as written before the rule moved to edgecommon (an independent reference)."""
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA") else img.convert("RGB")
    if img.size != (size, size):
        scale = max(size / img.size[0], size / img.size[1])
        new = (max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale)))
        img = img.resize(new, Image.Resampling.BILINEAR)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


@pytest.fixture
def counting(monkeypatch):
    """Counts decoded files (image_cache's calls of the rule)."""
    calls = []
    real = image_cache.load_fitted

    def counted(path, size):
        calls.append(Path(path).name)
        return real(path, size)

    monkeypatch.setattr(image_cache, "load_fitted", counted)
    return calls


# ---------------------------------------------------------------- the one image rule


def test_mixed_modes_decode_by_the_runtime_rule(tmp_path):
    files = write_mixed(tmp_path / "data")
    fs = load_folder_splits(cfg(tmp_path, tmp_path / "data"), S, progress=False)
    assert fs.classes == ("apple", "bear") and fs.train.images.dtype == torch.uint8
    n = len(files)
    assert len(fs.train) + len(fs.test) == n and len(fs.val) == 0 and fs.train.images.shape[1:] == (3, S, S)
    rows = rows_by_file(fs)
    for key, path in files.items():
        rel = path.relative_to(tmp_path / "data").as_posix()
        got = rows[rel].permute(1, 2, 0).numpy()
        assert np.array_equal(got, load_image(path, (S, S))), key  # deploy.runtime, bit for bit
        with Image.open(path) as im:
            assert np.array_equal(got, old_runtime_rule(im, S)), key  # the rule as the runtime always had it
    exact = np.asarray(Image.open(files["exact_png"]))
    assert np.array_equal(rows["apple/exact.png"].permute(1, 2, 0).numpy(), exact)  # already S x S: untouched
    gray = rows["apple/gray.png"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    labels = {f: int(fs.train.labels[i]) for i, f in enumerate(fs.files["train"])}
    assert all(v == (0 if f.startswith("apple/") else 1) for f, v in labels.items())


def test_edgecommon_rule_unit(tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(ToolkitError, match="notes.png is not an image Pillow can read"):
        open_image(tmp_path / "notes.png")
    with pytest.raises(ToolkitError, match="image not found"):
        open_image(tmp_path / "missing.png")
    img = Image.fromarray(rgb(S, S))
    assert to_rgb(img) is img and np.array_equal(fit_image(img, S), np.asarray(img))
    assert fit_image(Image.fromarray(rgb(30, 200)), 16).shape == (16, 16, 3)
    assert fit_image(Image.fromarray(rgb(30, 200)), (8, 12)).shape == (8, 12, 3)
    rgba = Image.fromarray(np.dstack([rgb(10, 10), np.zeros((10, 10), np.uint8)]))
    assert np.array_equal(np.asarray(to_rgb(rgba)), np.asarray(rgba)[..., :3])  # alpha dropped, colour kept
    with pytest.raises(ToolkitError, match="mode I;16, which cannot be converted"):
        to_rgb(Image.fromarray(np.full((4, 4), 40000, np.uint16)))
    assert resize_rule(96) == "RGB; shorter side to 96 px (Pillow bilinear, antialiased), then centre crop 96x96"
    assert ".webp" in IMAGE_SUFFIXES and all(s == s.lower() for s in IMAGE_SUFFIXES)


# ---------------------------------------------------------------- cache


def test_cache_written_once_reused_and_invalidated(tmp_path, counting):
    write_classes(tmp_path / "data", {"a": 6, "b": 6})
    c = cfg(tmp_path, tmp_path / "data", test_size=2, val_size=2)
    first = load_folder_splits(c, S, progress=False)
    assert len(counting) == 12
    npys = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(npys) == 3 and len(list((tmp_path / "cache").glob("*.json"))) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in npys}
    second = load_folder_splits(c, S, progress=False)
    assert len(counting) == 12  # nothing decoded again
    assert {p: p.stat().st_mtime_ns for p in npys} == mtimes
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(first, split).images, getattr(second, split).images)
        assert torch.equal(getattr(first, split).labels, getattr(second, split).labels)
    # a changed file (new content, new mtime) invalidates only its split
    changed = tmp_path / "data" / first.files["train"][0]
    Image.fromarray(rgb(40, 56)).save(changed)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = load_folder_splits(c, S, progress=False)
    assert len(counting) == 12 + len(first.train)
    assert not torch.equal(third.train.images[0], first.train.images[0])
    assert torch.equal(third.test.images, first.test.images)
    # another image size: new keys, everything decoded again
    load_folder_splits(c, 40, progress=False)
    assert len(counting) == 12 + len(first.train) + 12
    assert len(list((tmp_path / "cache").glob("*-40px-*.npy"))) == 3


def test_memory_mapped_matches_ram(tmp_path):
    write_classes(tmp_path / "data", {"a": 5, "b": 5})
    ram = load_folder_splits(cfg(tmp_path, tmp_path / "data", in_memory="true"), S, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's not-writable warning must not leak
        mm = load_folder_splits(cfg(tmp_path, tmp_path / "data", in_memory="false"), S, progress=False)
    assert ram.in_memory and not mm.in_memory
    assert torch.equal(ram.train.images, mm.train.images) and torch.equal(ram.test.images, mm.test.images)
    ptr = mm.train.images.data_ptr()
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines()
              if int(line.split()[0].split("-")[0], 16) <= ptr < int(line.split()[0].split("-")[1], 16)]
    assert mapped and mapped[0].rstrip().endswith(".npy") and "/cache/train-" in mapped[0]
    idx = torch.tensor([3, 0, 1])
    assert torch.equal(mm.train.images[idx], ram.train.images[idx])  # batches index it like any tensor
    assert image_cache.use_ram("auto", 1) and not image_cache.use_ram("auto", 1 << 60)


def test_threaded_decode_equals_single(tmp_path):
    write_mixed(tmp_path / "data")
    one = load_folder_splits(cfg(tmp_path, tmp_path / "data", cache_dir=str(tmp_path / "c1")), S, False, workers=1)
    two = load_folder_splits(cfg(tmp_path, tmp_path / "data", cache_dir=str(tmp_path / "c2")), S, False, workers=3)
    assert torch.equal(one.train.images, two.train.images) and one.files == two.files


def test_default_cache_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert image_cache.default_cache_dir() == tmp_path / "xdg" / "edge-distill" / "decoded"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert image_cache.default_cache_dir() == Path.home() / ".cache" / "edge-distill" / "decoded"


# ---------------------------------------------------------------- bad data


def finished_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*") if not p.name.startswith("."))


def test_corrupt_and_truncated_files(tmp_path, counting):
    write_classes(tmp_path / "data", {"a": 4, "b": 4})
    bad = tmp_path / "data" / "a" / "002.png"
    bad.write_bytes(b"not an image at all")
    c = cfg(tmp_path, tmp_path / "data", test_dir=None)
    with pytest.raises(ToolkitError) as err:
        load_folder_splits(c, S, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "data.skip_bad=true" in msg
    cache = tmp_path / "cache"
    assert not [n for n in finished_entries(cache) if n.startswith("train-")]  # no finished-looking train entry
    assert not [p for p in cache.glob(".*") if ".tmp" in p.name]  # and no temporary left behind

    jpg = tmp_path / "data" / "b" / "photo.jpg"
    Image.fromarray(rgb(120, 160)).save(jpg, quality=95)
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    bad.unlink()
    with pytest.raises(ToolkitError, match=r"photo\.jpg: image file is truncated"):
        load_folder_splits(c, S, progress=False)

    fs = load_folder_splits(cfg(tmp_path, tmp_path / "data", skip_bad=True), S, progress=False)
    assert [Path(p).name for p, _ in fs.skipped] == ["photo.jpg"] and "truncated" in fs.skipped[0][1]
    assert all("photo.jpg" not in f for files in fs.files.values() for f in files)
    assert len(fs.train) + len(fs.test) == 7 and fs.train.images.shape[0] == len(fs.files["train"])
    assert "1 unreadable files skipped" in fs.description
    # the cached entry with a skipped file is still an error without skip_bad (as a fresh decode would be)
    with pytest.raises(ToolkitError, match="truncated"):
        load_folder_splits(c, S, progress=False)


def test_interrupted_decode_leaves_nothing_finished_and_rerun_starts_over(tmp_path, monkeypatch):
    write_classes(tmp_path / "data", {"a": 6, "b": 6})
    real = image_cache.load_fitted
    calls = []

    def dies(path, size):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(image_cache, "load_fitted", dies)
    c = cfg(tmp_path, tmp_path / "data")
    with pytest.raises(KeyboardInterrupt):
        load_folder_splits(c, S, progress=False, workers=1)
    cache = tmp_path / "cache"
    assert finished_entries(cache) == [] and not [p for p in cache.glob(".*") if ".tmp" in p.name]
    monkeypatch.setattr(image_cache, "load_fitted", real)
    fs = load_folder_splits(c, S, progress=False)
    assert len(fs.train) == 11 and len(finished_entries(cache)) == 6
    meta = json.loads(next(cache.glob("train-*.json")).read_text())
    assert meta["rows"] == 11 and meta["rule"] == resize_rule(S) and meta["files"] == fs.files["train"]


def test_folder_errors_are_one_line(tmp_path):
    def fails(match: str, **kw):
        with pytest.raises(ToolkitError, match=match) as err:
            load_folder_splits(cfg(tmp_path, **kw), S, progress=False)
        assert "\n" not in str(err.value)

    fails("does not exist", train=tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    fails("is not a folder", train=tmp_path / "file.txt")
    (tmp_path / "flat").mkdir()
    Image.fromarray(rgb(8, 8)).save(tmp_path / "flat" / "x.png")
    fails("has no class sub-folders.*1 images lie directly", train=tmp_path / "flat")
    write_classes(tmp_path / "data", {"a": 3, "b": 3})
    (tmp_path / "data" / "c").mkdir()
    (tmp_path / "data" / "c" / "notes.txt").write_text("x")
    fails(f"class folder {tmp_path / 'data' / 'c'} holds no image files", train=tmp_path / "data")
    (tmp_path / "data" / "c" / "notes.txt").unlink()
    (tmp_path / "data" / "c").rmdir()
    write_classes(tmp_path / "test", {"a": 2, "z": 2})
    fails(r"data.test_dir .* has other classes .*only in train_dir: \['b'\]; only in test_dir: \['z'\]",
          train=tmp_path / "data", test_dir=str(tmp_path / "test"))
    fails("overlap", train=tmp_path / "data", val_dir=str(tmp_path / "data"))
    fails("data.val_size=5000 takes 5000 of only 5 images", train=tmp_path / "data", val_size=5000)
    fails("data.test_size=0 leaves no test", train=tmp_path / "data", test_size=0)


def test_hidden_files_and_nested_folders(tmp_path):
    write_classes(tmp_path / "data", {"a": 2, "b": 2})
    (tmp_path / "data" / "a" / "sub").mkdir()
    Image.fromarray(rgb(8, 8)).save(tmp_path / "data" / "a" / "sub" / "deep.PNG")
    (tmp_path / "data" / "a" / "._000.png").write_bytes(b"\0\5\26\7")  # macOS resource fork
    (tmp_path / "data" / ".ipynb_checkpoints").mkdir()
    listing = scan_image_folder(tmp_path / "data")
    assert listing.classes == ("a", "b")
    assert listing.files == ["a/000.png", "a/001.png", "a/sub/deep.PNG", "b/000.png", "b/001.png"]
    assert listing.labels.tolist() == [0, 0, 0, 1, 1] and listing.labels.dtype == torch.int64


# ---------------------------------------------------------------- splits


def test_carved_splits_are_stratified_disjoint_and_seeded(tmp_path):
    write_classes(tmp_path / "data", {"a": 20, "b": 10, "c": 30}, size=(12, 12))
    c = cfg(tmp_path, tmp_path / "data", test_size=0.2, val_size=0.25)
    fs = load_folder_splits(c, 16, progress=False)
    assert (len(fs.test), len(fs.val), len(fs.train)) == (12, 12, 36)
    assert fs.test.labels.bincount().tolist() == [4, 2, 6] and fs.val.labels.bincount().tolist() == [4, 2, 6]
    sets = {k: set(v) for k, v in fs.files.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(scan_image_folder(tmp_path / "data").files)
    assert fs.sources == {k: fs.sources["train"] for k in ("train", "val", "test")}
    assert "image folder" in fs.description and "(3 classes, 16 px)" in fs.description
    assert load_folder_splits(c, 16, progress=False).files == fs.files
    other = load_folder_splits(cfg(tmp_path, tmp_path / "data", test_size=0.2, val_size=0.25, split_seed=1), 16, False)
    assert other.files["test"] != fs.files["test"]
    # labels follow the files
    for split in ("train", "val", "test"):
        names = [f.split("/")[0] for f in fs.files[split]]
        assert [fs.classes[i] for i in getattr(fs, split).labels.tolist()] == names
    # given folders are used as they are; validation is still carved from train
    write_classes(tmp_path / "test", {"a": 2, "b": 2, "c": 2}, size=(12, 12))
    given = load_folder_splits(cfg(tmp_path, tmp_path / "data", test_dir=str(tmp_path / "test"), val_size=6), 16, False)
    assert len(given.test) == 6 and len(given.val) == 6 and len(given.train) == 54
    assert given.files["test"] == ["a/000.png", "a/001.png", "b/000.png", "b/001.png", "c/000.png", "c/001.png"]


def test_holdout_size():
    assert holdout_size(100, 0.1) == 10 and holdout_size(100, 7) == 7 and holdout_size(100, 0) == 0
    assert holdout_size(3, 0.01) == 1
    for bad in (-1, 1.5, "10", True, 100):
        with pytest.raises(ToolkitError):
            holdout_size(100, bad, "data.val_size")


# ---------------------------------------------------------------- data to-folder


def fake_aligned(folder: Path) -> None:
    """A tiny stand-in for the ImageNet-aligned npz files (same keys)."""
    folder.mkdir(parents=True)
    wnids = np.array(["n02123045", "n02124075", "n01641577"])
    names = np.array(["tabby, tabby cat", "Egyptian cat", "bullfrog, Rana catesbeiana"])
    for split, n in (("train", 9), ("val", 6)):
        widx = np.arange(n) % 3
        np.savez(folder / f"tinyimagenet_cifar10aligned_{split}.npz", x=RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 y=np.array([3, 3, 6])[widx].astype(np.uint8), wnid_index=widx.astype(np.int16),
                 strict=np.ones(n, bool), wnids=wnids, wnid_names=names, wnid_cifar_class=np.array([3, 3, 6], np.uint8),
                 wnid_strict=np.ones(3, bool), filenames=np.array([f"{wnids[w]}_{i}.JPEG" for i, w in enumerate(widx)]))


def test_to_folder_writes_pngs_and_refuses_a_non_empty_out(tmp_path, capsys):
    fake_aligned(tmp_path / "npz")
    out = tmp_path / "out"
    assert cli_main(["data", "to-folder", "--dataset", "imagenet-aligned", "--by", "class", "--data-dir",
                     str(tmp_path / "npz"), "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["cat", "frog"]
    assert "6 PNG files in 2 folders" in capsys.readouterr().out
    with np.load(tmp_path / "npz" / "tinyimagenet_cifar10aligned_val.npz") as z:
        assert np.array_equal(np.asarray(Image.open(out / "val" / "frog" / "n01641577_2.png")), z["x"][2])
    assert cli_main(["data", "to-folder", "--dataset", "imagenet-aligned", "--by", "synset", "--data-dir",
                     str(tmp_path / "npz"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an empty folder" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (out / "train").iterdir()) == ["cat", "frog"]  # untouched
    (tmp_path / "empty").mkdir()
    assert cli_main(["data", "to-folder", "--dataset", "imagenet-aligned", "--by", "synset", "--limit-per-class", "1",
                     "--data-dir", str(tmp_path / "npz"), "--out", str(tmp_path / "empty")]) == 0
    assert sorted(p.name for p in (tmp_path / "empty" / "val").iterdir()) == [
        "n01641577-bullfrog", "n02123045-tabby", "n02124075-egyptian-cat"]
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    # the written folder is a dataset the folder loader reads
    fs = load_folder_splits(cfg(tmp_path, out / "train", test_dir=str(out / "val")), 32, progress=False)
    assert fs.classes == ("cat", "frog") and len(fs.test) == 6


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_ALIGNED_DIR.is_dir(), reason="../shared/datasets/imagenet-cifar10-aligned not present")
def test_to_folder_imagenet_aligned_by_synset(tmp_path):
    out = tmp_path / "synsets"
    assert cli_main(["data", "to-folder", "--dataset", "imagenet-aligned", "--by", "synset", "--limit-per-class", "3",
                     "--out", str(out)]) == 0
    folders = sorted(p.name for p in (out / "train").iterdir())
    assert len(folders) == 29 and "n02123045-tabby" in folders and sorted(p.name for p in (out / "val").iterdir()) == folders
    for split in ("train", "val"):
        with np.load(SHARED_ALIGNED_DIR / f"tinyimagenet_cifar10aligned_{split}.npz") as z:
            x, names, wnids, widx = z["x"], z["filenames"], z["wnids"], z["wnid_index"]
        row = {Path(str(f)).stem: i for i, f in enumerate(names)}
        pngs = sorted((out / split).rglob("*.png"))
        assert len(pngs) == 29 * 3
        for png in pngs:
            i = row[png.stem]
            assert np.array_equal(np.asarray(Image.open(png)), x[i])
            assert png.parent.name.startswith(str(wnids[widx[i]]) + "-")


def test_a_class_left_without_readable_training_images_is_an_error(tmp_path):
    write_classes(tmp_path / "data", {"a": 3, "b": 2})
    write_classes(tmp_path / "test", {"a": 1, "b": 1})
    for f in (tmp_path / "data" / "b").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(ToolkitError, match="no readable training image of class b"):
        load_folder_splits(cfg(tmp_path, tmp_path / "data", test_dir=str(tmp_path / "test"), skip_bad=True), S, False)
