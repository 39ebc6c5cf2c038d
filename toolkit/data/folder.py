"""Your own images in class sub-folders (torchvision ImageFolder layout) as uint8 tensors, split and cached.

``load_folder_splits(data_cfg, image_size)`` lists ``data.train_dir`` (and ``val_dir``/``test_dir`` when given),
carves seeded, stratified test and validation hold-outs from train where a folder is not given (test first, then
validation from the rest), and decodes each split once with the one image rule (``edgecommon.images``: RGB, shorter
side to S px, centre crop) into the decoded-image cache (``toolkit.data.image_cache``); later runs reuse it until a file,
the size or the rule changes.

Memory (``data.in_memory``). A split of N images at S px is N * 3 * S * S bytes: 10,000 images take 31 MB at 32 px,
123 MB at 64 px, 276 MB at 96 px and 1.5 GB at 224 px (ImageNet's 1.28 M at 224 px: 193 GB).
- ``true``: every split is read into RAM (fastest batches; the whole set must fit).
- ``false``: every split stays a read-only memory map of its cache file, wrapped as a tensor without a copy; the
  page cache keeps what fits, so a set larger than RAM still trains (batches then read from disk).
- ``auto``: RAM when the three splits together are below 40% of available memory (``/proc/meminfo`` MemAvailable,
  capped by a cgroup limit), else memory-mapped: with 16 GB available, up to 6.4 GB, about 42,000 images at 224 px,
  85,000 at 160 px, 230,000 at 96 px or 520,000 at 64 px.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgecommon.images import IMAGE_SUFFIXES
from toolkit import ToolkitError
from toolkit.config import DataConfig
from toolkit.data.cifar10 import REPO_ROOT, ImageSet, _display_path
from toolkit.data.image_cache import decode_files, default_cache_dir, open_decoded, use_ram
from toolkit.data.splits import holdout_size, train_val_split

SPLITS = ("train", "val", "test")


@dataclass
class FolderListing:
    """The image files of a class-folder tree. ``files``: relative POSIX paths (``<class>/.../<name>``), class by
    class in sorted order, sorted within a class; ``labels``: int64 (N,) indices into ``classes`` (sorted folder names)."""

    root: Path
    classes: tuple[str, ...]
    files: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class FolderSplits:
    """Decoded splits of an image folder. ``train``/``val``/``test``: uint8 (N, 3, S, S) images and int64 labels
    (RAM or a read-only memory map: never write into the images); ``files[split]``: each row's path relative to
    ``sources[split]``, in row order; ``skipped``: (path, reason) of files left out with ``data.skip_bad``."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    description: str
    files: dict[str, list[str]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    """Split -> the folder its files are relative to (relative to the repository when near it)."""
    in_memory: bool = True
    """True when the images were read into RAM, False when memory-mapped."""


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(name: str) -> bool:
    """An image by its suffix; hidden files (``.DS_Store``, macOS ``._x.jpg`` resource forks) are not images."""
    return not _hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def scan_image_folder(root: str | os.PathLike) -> FolderListing:
    """List an ImageFolder tree: one sub-folder per class, images anywhere below it (hidden entries ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise ToolkitError(f"image folder {root} {'is not a folder' if root.exists() else 'does not exist'}")
    try:
        classes = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir() and not _hidden(e.name)))
    except OSError as exc:
        raise ToolkitError(f"cannot list image folder {root}: {exc.strerror}") from None
    if not classes:
        loose = sum(1 for e in os.scandir(root) if e.is_file() and _is_image(e.name))
        hint = f"; {loose} images lie directly in it" if loose else ""
        raise ToolkitError(f"image folder {root} has no class sub-folders: put each class's images in a sub-folder "
                           f"named after the class{hint}")
    files: list[str] = []
    labels: list[int] = []
    empty = []
    for label, cls in enumerate(classes):
        found = []
        for dirpath, dirnames, names in os.walk(root / cls, followlinks=True):
            dirnames[:] = [d for d in dirnames if not _hidden(d)]
            rel = Path(dirpath).relative_to(root).as_posix()
            found += [f"{rel}/{n}" for n in names if _is_image(n)]
        if not found:
            empty.append(cls)
        files += sorted(found)
        labels += [label] * len(found)
    if empty:
        more = f" (and {len(empty) - 1} more: {', '.join(empty[1:4])}{', ...' if len(empty) > 4 else ''})" if len(empty) > 1 else ""
        raise ToolkitError(f"class folder {root / empty[0]} holds no image files ({' '.join(IMAGE_SUFFIXES)}){more}")
    return FolderListing(root, classes, files, torch.tensor(labels, dtype=torch.int64))


def _resolve_dir(path: str | os.PathLike) -> Path:
    """A configured folder: as given (``~`` expanded), else relative to the repository root when it exists there."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p


def _check_same_classes(train: FolderListing, other: FolderListing, setting: str) -> None:
    if other.classes != train.classes:
        only_train = sorted(set(train.classes) - set(other.classes))
        only_other = sorted(set(other.classes) - set(train.classes))
        raise ToolkitError(f"{setting} {other.root} has other classes than data.train_dir {train.root}: "
                           f"only in train_dir: {only_train or 'none'}; only in {setting.split('.')[-1]}: {only_other or 'none'}")


def _check_disjoint(roots: dict[str, Path]) -> None:
    """No folder may be, or lie inside, another split's folder (the same file would land in two splits)."""
    items = [(k, p.resolve()) for k, p in roots.items()]
    for i, (a, pa) in enumerate(items):
        for b, pb in items[i + 1:]:
            if pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa):
                raise ToolkitError(f"data.{a} {roots[a]} and data.{b} {roots[b]} overlap: each split needs its own folder")


def _carve(listing: FolderListing, data_cfg: DataConfig, need_test: bool, need_val: bool) -> dict[str, torch.Tensor]:
    """Row indices into ``listing`` per split it supplies: test first, then validation from the rest; sorted."""
    seed = int(data_cfg.split_seed)
    rest = torch.arange(len(listing))
    out: dict[str, torch.Tensor] = {}
    if need_test:
        n_test = holdout_size(len(rest), data_cfg.test_size, "data.test_size")
        if n_test == 0:
            raise ToolkitError("data.test_size=0 leaves no test images: give a count, a fraction or data.test_dir")
        keep, test = train_val_split(listing.labels, n_test, seed)
        rest, out["test"] = rest[keep], rest[test]
    if need_val:
        keep, val = train_val_split(listing.labels[rest], holdout_size(len(rest), data_cfg.val_size, "data.val_size"), seed)
        rest, out["val"] = rest[keep], rest[val]
    out["train"] = rest
    lost = sorted(set(range(len(listing.classes))) - set(listing.labels[rest].tolist()))
    if lost:
        names = ", ".join(listing.classes[i] for i in lost[:5])
        raise ToolkitError(f"the hold-outs take every image of class {names} in {listing.root}: "
                           f"add images or use smaller data.test_size/data.val_size")
    return out


def load_folder_splits(data_cfg: DataConfig, image_size: int, progress: bool = True, workers: int | None = None) -> FolderSplits:
    """Train/val/test of ``data_cfg`` (dataset=folder; ``train_dir`` required) decoded at ``image_size`` px.

    ``workers``: decoding threads (None: the usable CPUs, at most 8). One-line ToolkitError for a missing or
    malformed folder, classes that differ between folders, a bad hold-out size or (without ``skip_bad``) an unreadable
    image.
    """
    if not data_cfg.train_dir:
        raise ToolkitError("data.dataset=folder needs data.train_dir=PATH (one sub-folder per class)")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ToolkitError(f"image size must be a whole number of pixels, got {image_size!r}")
    roots = {"train_dir": _resolve_dir(data_cfg.train_dir)}
    roots.update({k: _resolve_dir(getattr(data_cfg, k)) for k in ("val_dir", "test_dir") if getattr(data_cfg, k)})
    train = scan_image_folder(roots["train_dir"])
    listings = {"train": train}
    for split, setting in (("val", "val_dir"), ("test", "test_dir")):
        if setting in roots:
            listings[split] = scan_image_folder(roots[setting])
            _check_same_classes(train, listings[split], f"data.{setting}")
    _check_disjoint(roots)
    carved = _carve(train, data_cfg, "test" not in listings, "val" not in listings)
    parts: dict[str, tuple[FolderListing, list[int]]] = {}
    for split in SPLITS:
        listing = train if split in carved else listings[split]
        rows = carved[split].tolist() if split in carved else list(range(len(listing)))
        parts[split] = (listing, rows)

    cache_dir = Path(data_cfg.cache_dir).expanduser() if data_cfg.cache_dir else default_cache_dir()
    decoded = {}
    for split, (listing, rows) in parts.items():
        decoded[split] = decode_files(listing.root, [listing.files[i] for i in rows], image_size, split, cache_dir,
                                      skip_bad=bool(data_cfg.skip_bad), progress=progress, workers=workers)
    nbytes = sum(meta["rows"] for _, meta, _ in decoded.values()) * 3 * image_size * image_size
    in_ram = use_ram(data_cfg.in_memory, nbytes)

    sets: dict[str, ImageSet] = {}
    files: dict[str, list[str]] = {}
    skipped: list[tuple[str, str]] = []
    for split, (npy, meta, _) in decoded.items():
        listing = parts[split][0]
        label_of = dict(zip(listing.files, listing.labels.tolist()))
        files[split] = list(meta["files"])
        labels = torch.tensor([label_of[f] for f in files[split]], dtype=torch.int64)
        sets[split] = ImageSet(open_decoded(npy, meta["rows"], image_size, in_ram), labels)
        shown = _display_path(listing.root)
        skipped += [(f"{shown}/{rel}", reason) for rel, reason in meta["skipped"]]
    lost = sorted(set(range(len(train.classes))) - set(sets["train"].labels.tolist()))
    if lost:
        raise ToolkitError(f"no readable training image of class {train.classes[lost[0]]} in {train.root} "
                           f"(all were skipped as unreadable)")
    sources = {split: _display_path(parts[split][0].root) for split in SPLITS}
    note = f"; {len(skipped)} unreadable files skipped" if skipped else ""
    description = f"image folder {sources['train']} ({len(train.classes)} classes, {image_size} px{note})"
    return FolderSplits(sets["train"], sets["val"], sets["test"], train.classes, description, files, skipped, sources, in_ram)
