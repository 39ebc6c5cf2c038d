"""What the training studies share: the study folder, its study.json, and the teacher/IG maps prepared once.

Study folder (default ``runs/studies/<study>-<scale>/``; ``--out reports/<study>-<scale>`` for the committed reports)::

    study.json       study, scale, preset, overrides, settings, data, teacher, the planned run keys, invocations
    results.jsonl    one line per finished run (toolkit.experiments.runner)
    shared/          a run folder (toolkit.runs.RunFolder): teacher.pt, ig/ (maps for the whole train split)
    runs/<key>/      one run: student.ckpt while training (resumable), student.pt when done
    report.md, results.json, *.png
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit import ToolkitError
from toolkit.config import CONFIGURATIONS, RunConfig, build_config
from toolkit.experiments.report import hardware, hardware_line
from toolkit.experiments.runner import STUDY_FILE, folder_lock, read_study
from toolkit.experiments.scales import StudySettings
from toolkit.io import atomic_write_json
from edgecommon.hashing import sha256_file

SHARED_DIR = "shared"



def base_config(settings: StudySettings) -> RunConfig:
    """The study's run config: preset + overrides, progress bars off, no separate baseline run."""
    cfg = build_config(settings.preset, None, settings.overrides)
    cfg.progress = False
    cfg.baseline = False
    return cfg


def run_config(base: RunConfig, configuration: str, seed: int, model: str | None = None) -> RunConfig:
    cfg = copy.deepcopy(base)
    cfg.configuration = configuration
    cfg.seed = seed
    if model:
        cfg.student.model = model
    return cfg


@dataclass
class Prepared:
    """Data, teacher and IG maps of a study, prepared once in ``<folder>/shared``."""

    cfg: RunConfig
    data: Any
    """toolkit.pipeline.PreparedData"""
    teacher: torch.nn.Module
    maps: torch.Tensor | None
    """(len(data.train), 32, 32) IG maps, or None when no configuration of the study uses IG."""
    device: torch.device
    teacher_info: dict
    """name, params, test_acc (%), sha256."""


def prepare_shared(settings: StudySettings, folder: Path, device: torch.device, log=print) -> Prepared:
    """Prepare (or reuse) data, teacher and IG maps in ``<folder>/shared`` under a file lock, so parallel shards on
    one machine do it once. IG maps are computed for the whole train split when any configuration uses IG."""
    from toolkit.models import save_checkpoint
    from toolkit.pipeline import prepare_data, prepare_ig_maps, prepare_teacher, teacher_result
    from toolkit.runs import RunFolder

    cfg = base_config(settings)
    need_ig = any(CONFIGURATIONS[c][1] for c in settings.configs)
    shared = RunFolder(folder / SHARED_DIR)
    shared.root.mkdir(parents=True, exist_ok=True)
    with folder_lock(shared.root / ".prepare.lock"):
        start = time.time()
        data = prepare_data(cfg)
        teacher = prepare_teacher(cfg, shared, data, device)
        if not shared.checkpoint("teacher").is_file():  # mode "load" uses the checkpoint as is: keep a copy
            save_checkpoint(teacher, cfg.teacher.model, shared.checkpoint("teacher"), {"source": cfg.teacher.checkpoint})
        maps = prepare_ig_maps(cfg, shared, teacher, data, device, force=True) if need_ig else None
        sha = sha256_file(shared.checkpoint("teacher"))
        eval_path = shared.root / "teacher_eval.json"
        info = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
        if info.get("sha256") != sha:
            info = {**teacher_result(cfg, shared, teacher, data, device), "sha256": sha}
            atomic_write_json(eval_path, info)
        log(f"shared data/teacher/IG maps ready in {time.time() - start:.0f} s: teacher {info['name']} "
            f"test {info['test_acc']:.2f}% ({data.description}; train {len(data.train):,}, val {len(data.val):,}, "
            f"test {len(data.test):,} images)")
    teacher.eval()
    return Prepared(cfg, data, teacher, maps, device, info)


def setup_of(prepared: Prepared) -> dict:
    """What the report states about the data and training setup."""
    from toolkit.device import resolve_precision
    from toolkit.models.registry import get_spec

    cfg, data = prepared.cfg, prepared.data
    return {"data": data.description, "train_images": len(data.train), "val_images": len(data.val),
            "test_images": len(data.test), "teacher": prepared.teacher_info,
            "student": dict(cfg.student.__dict__), "loss": dict(cfg.loss.__dict__), "overlay": dict(cfg.overlay.__dict__),
            "ig": dict(cfg.ig.__dict__), "teacher_outputs": cfg.teacher_outputs,
            "at_layers": list(cfg.loss.at_layers or get_spec(cfg.student.model).at_layers),
            "precision": resolve_precision(cfg.precision, prepared.device),
            "device": str(prepared.device)}


def record_from_result(result: dict, prepared: Prepared, **extra) -> dict:
    """The fields of a train_student result kept in results.jsonl."""
    if not result.get("finished", True):
        raise ToolkitError(f"training of {result.get('name')} stopped after {result.get('epochs')} epochs")
    keep = ("name", "params", "train_size", "test_acc", "val_acc", "epochs", "seconds")
    rec = {k: result.get(k) for k in keep}
    rec["history"] = result.get("history", [])
    rec["teacher_sha256"] = prepared.teacher_info["sha256"]
    rec.update(extra)
    return rec


STUDIES_DIR = Path("runs") / "studies"
"""Where a study goes without ``--out``: the user's own folder. The committed ``reports/`` is written only when asked
(``--out reports/<study>-<scale>``)."""


def study_path(settings: StudySettings, out: str | None) -> Path:
    return Path(out) if out else STUDIES_DIR / f"{settings.study}-{settings.scale}"


RESULT_NEUTRAL_KEYS = ("progress", "baseline", "configuration", "seed", "num_workers")
"""Run-config keys that do not change a study run's result (or are set per run from its spec)."""


def run_settings(settings: StudySettings) -> dict:
    """The flat settings every run of the study shares: the resolved run config (preset + overrides, less the
    per-run and result-neutral keys) and the study name. Their hash is each result line's ``settings_fingerprint``."""
    from toolkit.experiments.runner import flatten_settings

    from toolkit.config import fingerprint_settings

    values = {k: v for k, v in base_config(settings).to_dict().items() if k not in RESULT_NEUTRAL_KEYS}
    return {"study": settings.study, **fingerprint_settings(flatten_settings(values))}


def settings_fingerprint(flat: dict) -> str:
    from edgecommon.hashing import fingerprint

    return fingerprint(flat)


def start_study(folder: Path, settings: StudySettings, plan_keys: list[str], flat: dict | None = None) -> dict:
    """Create or update ``study.json``; refuse a folder holding another study or scale. ``flat``: the run settings
    (default :func:`run_settings`), stored with their fingerprint; check stale results (Runner.pending) first."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STUDY_FILE
    flat = run_settings(settings) if flat is None else flat
    if path.is_file():
        study = read_study(folder)
        if study.get("study") != settings.study or study.get("scale") != settings.scale:
            raise ToolkitError(f"{folder} holds study '{study.get('study')}' at scale '{study.get('scale')}', not "
                               f"'{settings.study}' at '{settings.scale}': choose another --out")
    else:
        study = {"study": settings.study, "scale": settings.scale, "invocations": []}
    study.update(preset=settings.preset, overrides=settings.overrides, settings=settings.to_dict(), plan=plan_keys,
                 settings_fingerprint=settings_fingerprint(flat), run_settings=flat)
    atomic_write_json(path, study)
    return study


def finish_invocation(folder: Path, command: str, seconds: float, shard: str | None, ran: int,
                      extra: dict | None = None) -> dict:
    """Append this command's invocation (time, hardware) to study.json under a lock; returns the study."""
    with folder_lock(folder / ".study.lock"):
        study = read_study(folder)
        hw = hardware()
        study.setdefault("invocations", []).append({
            "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - seconds)),
            "seconds": round(seconds, 1), "shard": shard, "runs_finished": ran, "hardware": hw,
            "hardware_line": hardware_line(hw)})
        if extra:
            study.update(extra)
        atomic_write_json(folder / STUDY_FILE, study)
    return study
