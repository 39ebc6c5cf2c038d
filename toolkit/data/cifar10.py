"""CIFAR-10 as in-memory uint8 tensors, from the first source that exists.

Resolution order (the first hit wins):
1. ``data_dir`` argument or the ``EDGE_DISTILL_DATA`` environment variable: a folder holding
   ``cifar10_train.npz``/``cifar10_test.npz`` or a torchvision ``cifar-10-batches-py`` folder (or being one);
2. the ``.npz`` copy in ``../shared/datasets/cifar10/`` beside the checkout (JPEG q75 copy, see its README);
3. a torchvision ``cifar-10-batches-py`` folder under ``~/.cache/edge-distill/data`` (or ``./data``);
4. torchvision's download into ``~/.cache/edge-distill/data`` when ``download=True`` and there is internet.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolkit import ToolkitError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DATA_ENV_VAR = "EDGE_DISTILL_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_CIFAR_DIR = REPO_ROOT.parent / "shared" / "datasets" / "cifar10"
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-distill" / "data"
JPEG_COPY_NOTE = "CIFAR-10 (JPEG q75 copy): 55,000 of 60,000 images JPEG-decoded, labels exact"


@dataclass
class ImageSet:
    """A split held in memory. ``images``: uint8 (N, 3, 32, 32) RGB; ``labels``: int64 (N,).

    ``exact``: bool (N,) marking bit-exact images, or None when all are exact (pristine source).
    """

    images: torch.Tensor
    labels: torch.Tensor
    exact: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "ImageSet":
        exact = None if self.exact is None else self.exact[index]
        return ImageSet(self.images[index], self.labels[index], exact)


@dataclass
class Cifar10:
    train: ImageSet
    test: ImageSet
    source: str
    """Where it was read from."""
    description: str
    """How to name this data in a report (says "JPEG q75 copy" for the shared copy)."""
    classes: tuple[str, ...] = CIFAR10_CLASSES


def _display_path(folder: Path) -> str:
    """``folder`` relative to the repository root when it lies near it (reports carry no machine paths)."""
    rel = os.path.relpath(folder.resolve(), REPO_ROOT)
    return rel if rel.count("..") <= 1 else str(folder)


def _from_npz(folder: Path) -> Cifar10:
    def load(split: str) -> ImageSet:
        path = folder / f"cifar10_{split}.npz"
        try:
            with np.load(path) as z:
                x, y = z["x"], z["y"]
                exact = torch.from_numpy(z["exact"].astype(bool)) if "exact" in z else None
        except (OSError, KeyError, ValueError) as exc:
            raise ToolkitError(f"cannot read {path}: {exc}") from None
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or len(x) != len(y):
            raise ToolkitError(f"{path}: expected x uint8 (N,32,32,3) and y (N,), got {x.dtype} {x.shape}, {y.shape}")
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return ImageSet(images, torch.from_numpy(y.astype(np.int64)), exact)

    train, test = load("train"), load("test")
    jpeg = train.exact is not None and not bool(train.exact.all())
    desc = JPEG_COPY_NOTE if jpeg else "CIFAR-10"
    return Cifar10(train, test, _display_path(folder), desc)


def _from_batches_py(folder: Path) -> Cifar10:
    def read(names: list[str]) -> ImageSet:
        xs, ys = [], []
        for name in names:
            try:
                with open(folder / name, "rb") as f:
                    d = pickle.load(f, encoding="latin1")
            except (OSError, pickle.UnpicklingError, EOFError) as exc:
                raise ToolkitError(f"cannot read {folder / name}: {exc}") from None
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d["labels"], dtype=np.int64))
        return ImageSet(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))

    train = read([f"data_batch_{i}" for i in range(1, 6)])
    test = read(["test_batch"])
    return Cifar10(train, test, _display_path(folder), "CIFAR-10 (pristine torchvision files)")


def _find_in(folder: Path) -> Cifar10 | None:
    if (folder / "cifar10_train.npz").is_file() and (folder / "cifar10_test.npz").is_file():
        return _from_npz(folder)
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return _from_batches_py(candidate)
    return None


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = False) -> Cifar10:
    """Load CIFAR-10 from the first source that exists (see module docstring); one-line error if none."""
    explicit = data_dir or os.environ.get(DATA_ENV_VAR)
    if explicit:
        folder = Path(explicit).expanduser()
        found = _find_in(folder) if folder.is_dir() else None
        if found is None and not download:
            raise ToolkitError(
                f"no CIFAR-10 in {folder}: expected cifar10_train.npz + cifar10_test.npz or a cifar-10-batches-py folder"
            )
        if found is not None:
            return found
    for folder in (SHARED_CIFAR_DIR, DEFAULT_CACHE_DIR, Path.cwd() / "data"):
        if folder.is_dir() and (found := _find_in(folder)) is not None:
            return found
    if download:
        target = Path(explicit).expanduser() if explicit else DEFAULT_CACHE_DIR
        try:
            import torchvision

            torchvision.datasets.CIFAR10(str(target), train=True, download=True)
            torchvision.datasets.CIFAR10(str(target), train=False, download=True)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            raise ToolkitError(f"CIFAR-10 download into {target} failed: {type(exc).__name__}: {exc}") from None
        return _from_batches_py(target / "cifar-10-batches-py")
    raise ToolkitError(
        "CIFAR-10 not found: pass --data-dir or set EDGE_DISTILL_DATA (npz pair or cifar-10-batches-py), "
        f"or provide {SHARED_CIFAR_DIR}, or {DEFAULT_CACHE_DIR}/cifar-10-batches-py, or use --download with internet"
    )
