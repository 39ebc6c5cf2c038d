"""The run's data as the pipeline uses it: CIFAR-10, synthetic data or an image folder, split into train /
validation / test (stratified, seeded), optionally subset, at the run's image size (``PreparedData``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from edgecommon.hashing import fingerprint
from toolkit.config import RunConfig
from toolkit.data.cifar10 import ImageSet, load_cifar10
from toolkit.data.splits import holdout_size, stratified_sample, subset_size, train_val_split
from toolkit.data.synthetic import make_synthetic


@dataclass
class PreparedData:
    """The run's splits. ``train_index`` / ``val_index``: indices of the rows into the source's train split (for an
    image folder: into the train split's file list, ``files["train"]``)."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    train_index: torch.Tensor
    val_index: torch.Tensor
    description: str
    classes: tuple[str, ...]
    num_classes: int
    image_size: int = 32
    files: dict[str, list[str]] | None = None
    """Image folders: relative file paths per split, in row order (written to the run as ``splits.json``)."""
    skipped: list | None = None
    """Image folders with ``data.skip_bad``: (file, reason) of every image left out."""
    source_key: str = ""
    """What identifies the source rows beyond ``description`` (a digest of the folder's file lists); part of every
    fingerprint that keys on rows (IG cache, training stages)."""

    @property
    def data_key(self) -> str:
        return self.description + (f" [{self.source_key}]" if self.source_key else "")


def data_image_size(cfg: RunConfig) -> int:
    """The side in pixels the models see: ``data.image_size``, or 32 for CIFAR-10 and synthetic data."""
    return int(cfg.data.image_size or 32)


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Load the dataset, hold out a stratified validation split, optionally subset train and test (all seeded)."""
    d = cfg.data
    if d.dataset == "folder":
        return _prepare_folder(cfg)
    if d.dataset == "synthetic":
        source = make_synthetic(d.synthetic_per_class, max(2, d.synthetic_per_class // 4), seed=d.split_seed)
    else:
        source = load_cifar10(d.data_dir, download=d.download)
    train_idx, val_idx = train_val_split(source.train.labels, holdout_size(len(source.train), d.val_size, "data.val_size"),
                                         d.split_seed)
    if d.train_subset is not None:
        keep = stratified_sample(source.train.labels[train_idx], subset_size(len(train_idx), d.train_subset), d.subset_seed)
        train_idx = train_idx[keep]
    test = source.test
    if d.test_subset:
        test = test.subset(torch.arange(min(int(d.test_subset), len(test))))
    return PreparedData(source.train.subset(train_idx), source.train.subset(val_idx), test, train_idx, val_idx,
                        source.description, source.classes, len(source.classes))


def _prepare_folder(cfg: RunConfig) -> PreparedData:
    """An image folder (``data.train_dir`` and optional val/test folders) decoded at ``data.image_size``."""
    from toolkit.data.folder import load_folder_splits

    d = cfg.data
    fs = load_folder_splits(d, data_image_size(cfg), progress=cfg.progress)
    train, files = fs.train, {k: list(v) for k, v in fs.files.items()}
    train_idx = torch.arange(len(train))
    if d.train_subset is not None:
        train_idx = stratified_sample(train.labels, subset_size(len(train), d.train_subset), d.subset_seed)
        train = train.subset(train_idx)
    test = fs.test
    if d.test_subset:
        test = test.subset(torch.arange(min(int(d.test_subset), len(test))))
    key = fingerprint({"files": files, "image_size": data_image_size(cfg)})
    return PreparedData(train, fs.val, test, train_idx, torch.arange(len(fs.val)), fs.description, tuple(fs.classes),
                        len(fs.classes), data_image_size(cfg), files, list(fs.skipped), f"files {key}")


def subset_training(data: PreparedData, maps: torch.Tensor | None, size: float | int, seed: int
                    ) -> tuple[PreparedData, torch.Tensor | None]:
    """A stratified subset of the train rows (fraction or count), with the matching IG-map rows."""
    keep = stratified_sample(data.train.labels, subset_size(len(data.train), size), seed)
    return replace(data, train=data.train.subset(keep), train_index=data.train_index[keep]), (None if maps is None else maps[keep])
