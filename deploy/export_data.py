"""The run's data for the export: training rows (calibration), validation rows (every int8 decision) and test rows
(measured once, after the decisions).

Every dataset follows the run's own ``data`` settings (``config.yaml``), so the splits are the ones training used:
synthetic data and image folders are rebuilt by ``toolkit.pipeline.prepare_data``; CIFAR-10 is split here by the same
rule (``toolkit.data.splits``: stratified ``val_size`` held out of train with ``split_seed``, then ``train_subset``,
then the first ``test_subset`` test images), which also serves a ``Cifar10`` object handed to ``run_export`` by tests.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from deploy.manifest import DeployError
from toolkit import ToolkitError
from toolkit.config import DataConfig, RunConfig
from toolkit.data import Cifar10, load_cifar10
from toolkit.data.cifar10 import ImageSet
from toolkit.data.splits import stratified_sample, subset_size, train_val_split
from toolkit.data.prepare import PreparedData, prepare_data
from toolkit.runs import RunFolder

SMALL_TRAIN_VAL = 0.1
"""A run without ``config.yaml`` whose train split cannot spare the default ``val_size``: this fraction is held out."""


@dataclass
class ExportData:
    """What the export reads: ``train`` (calibration), ``val`` (decisions), ``test`` (reported only)."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    description: str
    source: str
    classes: tuple[str, ...]
    val_rule: str
    """How the validation rows were obtained, for the manifest."""


def read_run_config(run: RunFolder) -> dict[str, Any]:
    """The run's ``config.yaml`` as a dict (``{}`` without one); one-line ToolkitError when unreadable."""
    if not run.config.is_file():
        return {}
    import yaml

    try:
        values = yaml.safe_load(run.config.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ToolkitError(f"cannot read {run.config}: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ToolkitError(f"{run.config} must hold a mapping (a RunConfig dict)")
    return values


def data_config(run_config: dict[str, Any], data_dir: str | None = None) -> DataConfig:
    """The run's ``DataConfig`` from its config dict (``{}`` for a run without config.yaml: the defaults)."""
    data = run_config.get("data") or {}
    if not isinstance(data, dict):
        raise ToolkitError(f"run config 'data' must be a mapping, got {type(data).__name__}")
    known = {f.name for f in fields(DataConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ToolkitError(f"run config has unknown data key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    d = DataConfig(**data)
    if data_dir:
        d.data_dir = data_dir
    return d


def _val_count(n: int, size: int | float, given: bool) -> int:
    """``val_size`` as a count (a fraction in (0, 1) or a count), as ``toolkit.pipeline.prepare_data`` reads it; when
    not ``given`` (no config.yaml) and the default does not fit in ``n`` rows, a tenth of them."""
    if not given and isinstance(size, int) and size >= n:
        return max(1, round(n * SMALL_TRAIN_VAL))
    if isinstance(size, float) and 0 < size < 1:
        return max(1, round(n * size))
    if isinstance(size, bool) or not isinstance(size, (int, float)) or int(size) != size or size < 0:
        raise ToolkitError(f"data.val_size must be a count >= 0 or a fraction in (0, 1), got {size!r}")
    return int(size)


def split_source(source: Cifar10, d: DataConfig, val_given: bool = True) -> ExportData:
    """CIFAR-like ``source`` (train/test) split as ``prepare_data`` splits CIFAR-10 and synthetic data.
    ``val_given``: the run's config sets ``val_size`` (else see ``SMALL_TRAIN_VAL``)."""
    n_val = _val_count(len(source.train), d.val_size, val_given)
    train_idx, val_idx = train_val_split(source.train.labels, n_val, d.split_seed)
    if d.train_subset is not None:
        keep = stratified_sample(source.train.labels[train_idx], subset_size(len(train_idx), d.train_subset),
                                 d.subset_seed)
        train_idx = train_idx[keep]
    test = source.test
    if d.test_subset:
        test = test.subset(torch.arange(min(int(d.test_subset), len(test))))
    rule = f"{n_val} stratified training images held out (split_seed {d.split_seed})"
    return ExportData(source.train.subset(train_idx), source.train.subset(val_idx), test, source.description,
                      source.source, tuple(source.classes), rule)


def load_run_data(run_config: dict[str, Any], data_dir: str | None = None) -> ExportData:
    """The run's dataset and splits, as its config.yaml (``run_config``) describes them.

    CIFAR-10: found via ``data_dir``, the config's data.data_dir, then the usual places. Synthetic data and image
    folders: ``toolkit.pipeline.prepare_data`` (same split seed, files, image size and resize rule as training).
    """
    d = data_config(run_config, data_dir)
    if d.dataset not in ("synthetic", "folder"):
        return split_source(load_cifar10(d.data_dir), d, _val_given(run_config))
    prepared = prepare_data(RunConfig(data=d, progress=False))
    return from_prepared(prepared, str(d.train_dir or d.dataset))


def from_prepared(prepared: PreparedData, source: str = "") -> ExportData:
    """``toolkit.pipeline.prepare_data``'s splits as they are."""
    rule = ("the run's validation rows (toolkit.pipeline.prepare_data)" if prepared.files is None
            else "the run's validation images (val_dir, or held out of train_dir)")
    return ExportData(prepared.train, prepared.val, prepared.test, prepared.description, source or prepared.description,
                      tuple(prepared.classes), rule)


def as_export_data(data: ExportData | PreparedData | Cifar10, run_config: dict[str, Any]) -> ExportData:
    """``run_export``'s ``data`` argument in the export's terms: a ``Cifar10`` is split by the run's data settings."""
    if isinstance(data, ExportData):
        return data
    if isinstance(data, PreparedData):
        return from_prepared(data)
    return split_source(data, data_config(run_config), _val_given(run_config))


def _val_given(run_config: dict[str, Any]) -> bool:
    return "val_size" in (run_config.get("data") or {})


def validation_rows(val: ImageSet, n: int | None, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Indices of the validation rows the decisions use: all, or a stratified ``n`` (seeded); and their description."""
    if len(val) == 0:
        raise DeployError("the run has no validation images (data.val_size 0): int8 decisions are made on validation, "
                          "never on test; export a run trained with a validation split")
    if n is None or n >= len(val):
        return torch.arange(len(val)), f"all {len(val)} validation images"
    return stratified_sample(val.labels, n, seed), f"{n} of {len(val)} validation images (stratified, seed {seed})"
