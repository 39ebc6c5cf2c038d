"""``python -m toolkit data to-folder``: write a built-in array dataset as class folders of PNG files.

The result is the ImageFolder layout ``data.dataset=folder`` reads (``DIR/<split>/<class>/<file>.png``), so the folder
path can be tried on a set whose numbers are known. PNG is lossless: the files decode back to the stored pixels.
- ``imagenet-aligned``: ``DIR/train`` and ``DIR/val`` from its train and val files; ``by="class"`` gives the 8 CIFAR-10
  class names present, ``by="synset"`` the 29 synsets (``n02123045-tabby``: WordNet id and the first name, lower case).
- ``cifar10``: ``DIR/train`` and ``DIR/test``; ``limit_per_class`` keeps the first N of each class (small copies).
The output folder is written under a temporary sibling name and renamed when complete; an existing non-empty folder
is refused, never overwritten.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from toolkit import ToolkitError
from toolkit.data.cifar10 import CIFAR10_CLASSES

DATASETS = ("imagenet-aligned", "cifar10")


@dataclass
class ArraySplit:
    """One split to write: uint8 RGB images (N, H, W, 3), each row's folder name and file stem."""

    images: np.ndarray
    folders: list[str]
    stems: list[str]


def synset_folder(wnid: str, names: str) -> str:
    """``n02123045`` + ``"tabby, tabby cat"`` -> ``n02123045-tabby`` (lower case, [a-z0-9-] only)."""
    short = re.sub(r"[^a-z0-9]+", "-", names.split(",")[0].strip().lower()).strip("-")
    return f"{wnid}-{short}" if short else wnid


def _safe_stem(name: str, index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(str(name))[0]).strip("._")
    return stem or f"{index:06d}"


def _aligned_splits(by: str, data_dir: str | None, strict: bool, limit: int | None) -> dict[str, ArraySplit]:
    from toolkit.data.imagenet_aligned import SHARED_ALIGNED_DIR

    folder = Path(data_dir).expanduser() if data_dir else SHARED_ALIGNED_DIR
    out = {}
    for split in ("train", "val"):
        path = folder / f"tinyimagenet_cifar10aligned_{split}.npz"
        if not path.is_file():
            raise ToolkitError(f"ImageNet-aligned set not found: {path}")
        try:
            with np.load(path) as z:
                x, y, widx = z["x"], z["y"].astype(np.int64), z["wnid_index"].astype(np.int64)
                keep = z["strict"].astype(bool) if strict else np.ones(len(y), bool)
                wnids, names, files = [str(w) for w in z["wnids"]], [str(n) for n in z["wnid_names"]], z["filenames"]
        except (OSError, KeyError, ValueError) as exc:
            raise ToolkitError(f"cannot read {path}: {exc}") from None
        folders = [CIFAR10_CLASSES[c] for c in y] if by == "class" else [synset_folder(wnids[i], names[i]) for i in widx]
        rows = _limit(np.flatnonzero(keep), folders, limit)
        out[split] = ArraySplit(x[rows], [folders[i] for i in rows], [_safe_stem(files[i], i) for i in rows])
    return out


def _cifar_splits(data_dir: str | None, limit: int | None) -> dict[str, ArraySplit]:
    from toolkit.data.cifar10 import load_cifar10

    data = load_cifar10(data_dir)
    out = {}
    for split, s in (("train", data.train), ("test", data.test)):
        labels = s.labels.numpy()
        folders = [data.classes[c] for c in labels]
        rows = _limit(np.arange(len(labels)), folders, limit)
        out[split] = ArraySplit(s.images.numpy()[rows].transpose(0, 2, 3, 1), [folders[i] for i in rows],
                                [f"{i:05d}" for i in rows])
    return out


def _limit(rows: np.ndarray, folders: list[str], limit: int | None) -> np.ndarray:
    """The first ``limit`` rows of each folder (all when None), in their original order."""
    if limit is None:
        return rows
    seen: dict[str, int] = {}
    keep = []
    for i in rows:
        if seen.get(folders[i], 0) < limit:
            seen[folders[i]] = seen.get(folders[i], 0) + 1
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def write_image_folder(dataset: str, out: str | os.PathLike, by: str = "class", data_dir: str | None = None,
                       strict: bool = False, limit_per_class: int | None = None) -> dict[str, dict[str, int]]:
    """Write ``dataset`` as ``out/<split>/<folder>/<stem>.png``; returns {split: {folder: files}}."""
    if dataset not in DATASETS:
        raise ToolkitError(f"unknown dataset '{dataset}' for to-folder; choose {' or '.join(DATASETS)}")
    if by not in ("class", "synset") or (by == "synset" and dataset != "imagenet-aligned"):
        raise ToolkitError(f"--by {by} is not available for {dataset} (synset folders: imagenet-aligned only)")
    if limit_per_class is not None and (isinstance(limit_per_class, bool) or limit_per_class < 1):
        raise ToolkitError(f"--limit-per-class must be a whole number >= 1, got {limit_per_class}")
    if strict and dataset != "imagenet-aligned":
        raise ToolkitError("--strict (strict synset groups) applies to imagenet-aligned only")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ToolkitError(f"{out} exists and is not an empty folder: choose a new --out (nothing is overwritten)")
    splits = (_aligned_splits(by, data_dir, strict, limit_per_class) if dataset == "imagenet-aligned"
              else _cifar_splits(data_dir, limit_per_class))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    try:
        for split, s in splits.items():
            counts[split] = {}
            for img, folder, stem in zip(s.images, s.folders, s.stems):
                target = tmp / split / folder
                if folder not in counts[split]:
                    target.mkdir(parents=True)
                    counts[split][folder] = 0
                path = target / f"{stem}.png"
                if path.exists():
                    raise ToolkitError(f"two images would share the file name {split}/{folder}/{stem}.png")
                Image.fromarray(np.ascontiguousarray(img)).save(path, format="PNG")
                counts[split][folder] += 1
        os.replace(tmp, out)  # onto an empty folder or none; one that filled up meanwhile makes this fail, not lose files
    except OSError as exc:
        raise ToolkitError(f"cannot write {out}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {split: dict(sorted(c.items())) for split, c in counts.items()}
