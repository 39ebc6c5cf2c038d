"""Candidate students of a run's teacher, profiled and exported as the shipped format would be.

Default candidates (:func:`default_candidates`): the members of the teacher's family smaller than the teacher
(``resnet8`` .. ``resnet44`` for ``resnet56``; ``mobilenetv2_cifar_L<n>`` for ``mobilenetv2_cifar``) or, for a
``torchvision:``/``timm:`` teacher, its truncations ``truncate:<L>:<teacher>`` (``toolkit.models.derive``). No family
here has width multipliers; a user list (``--candidates``) may name any model ``build_model`` knows.

Each candidate is exported with the export's own steps (``deploy.steps``: ONNX export, onnxsim, static QDQ int8 with
the export's default recipe, calibrated on a few seeded training images) into ``runs/<name>/candidates/``:
``<slug>.fp32.onnx``, ``<slug>.int8.onnx`` and ``candidates.json``; the teacher (its trained weights) too, for
reference. Candidate weights are seeded random: latency does not depend on them. The device timer
(``deploy.time_candidates``) reads only ``candidates.json`` and the ``.onnx`` files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgecommon.hashing import fingerprint, sha256_file, tensor_digest
from toolkit import ToolkitError
from toolkit.io import atomic_write_json

CANDIDATES_DIR = "candidates"
CANDIDATES_FILE = "candidates.json"
FORMAT = "edge-distill-candidates"


def slug(name: str) -> str:
    """A file-name-safe form of a model name (``truncate:3:timm:x`` -> ``truncate-3-timm-x``)."""
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in name)


def default_candidates(teacher: str, num_classes: int = 10, image_size: int = 32) -> list[str]:
    """The teacher family's members smaller than the teacher, or the teacher's truncations; smallest first."""
    from toolkit.models.derive import derivable_students
    from toolkit.models.profile import profile_model
    from toolkit.models.registry import MODEL_REGISTRY, get_spec

    spec = get_spec(teacher)
    if teacher in MODEL_REGISTRY:
        names = [n for n, s in MODEL_REGISTRY.items() if s.family == spec.family and n != teacher]
    else:
        names = derivable_students(teacher)
    t_params = profile_model(teacher, num_classes, image_size, teacher=teacher).params
    sized = [(profile_model(n, num_classes, image_size, teacher=teacher).params, n) for n in names]
    out = [n for p, n in sorted(sized) if p < t_params]
    if not out:
        raise ToolkitError(f"no candidate students derive from teacher {teacher}: name them with --candidates a,b,c")
    return out


def check_candidates(names: list[str], teacher: str) -> list[str]:
    """Canonical, de-duplicated names; an unknown model is one ToolkitError line."""
    from toolkit.models.derive import canonical_student_name
    from toolkit.models.registry import get_spec

    out: list[str] = []
    for raw in names:
        name = canonical_student_name(raw.strip(), teacher)
        if not name:
            continue
        try:
            get_spec(name)
        except ToolkitError as exc:
            raise ToolkitError(f"unknown candidate '{raw}': {exc}") from None
        if name not in out:
            out.append(name)
    if not out:
        raise ToolkitError("--candidates names no model")
    return out


def _export_pair(model: torch.nn.Module, stem: str, folder: Path, staging: Path, calib: np.ndarray, image_size: int,
                 quantize, export_cfg) -> dict:
    """fp32 (export + simplify) and int8 (static QDQ) of ``model`` into ``folder``; their file records."""
    from deploy.steps import export_onnx, quantize_onnx, simplify_onnx

    raw, fp32, int8 = staging / f"{stem}.raw.onnx", staging / f"{stem}.fp32.onnx", staging / f"{stem}.int8.onnx"
    export_onnx(model, raw, export_cfg, image_size=image_size)
    simplify_onnx(raw, fp32)
    rec = quantize_onnx(fp32, int8, quantize, calib)
    files = {}
    for form, path in (("fp32", fp32), ("int8", int8)):
        os.replace(path, folder / path.name)
        files[form] = {"file": path.name, "sha256": sha256_file(folder / path.name),
                       "size_bytes": (folder / path.name).stat().st_size}
    files["int8"]["op_counts"] = rec.check.get("op_counts")
    return files


def _files_ok(folder: Path, entry: dict | None) -> bool:
    if not entry or not entry.get("files"):
        return False
    return all((folder / f["file"]).is_file() and sha256_file(folder / f["file"]) == f["sha256"]
               for f in entry["files"].values())


def build_candidates(folder: Path, names: list[str], teacher_name: str, teacher_ckpt: Path, num_classes: int,
                     image_size: int, calib: np.ndarray, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Profile and export every candidate (and the teacher) into ``folder``; resumable per candidate (an entry of an
    earlier call with the same settings and intact files is kept). Returns the candidates document."""
    from deploy.steps import ExportOnnxConfig, QuantizeConfig
    from toolkit.models.checkpoint import load_model
    from toolkit.models.profile import profile_model
    from toolkit.models.registry import build_model

    export_cfg, quantize = ExportOnnxConfig(), QuantizeConfig(calib_size=len(calib))
    common = {"image_size": image_size, "num_classes": num_classes, "export": asdict(export_cfg),
              "quantize": asdict(quantize), "calib_sha": tensor_digest(calib),
              "teacher": teacher_name, "teacher_sha256": sha256_file(teacher_ckpt), "seed": seed}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CANDIDATES_FILE
    old: dict = {}
    old_doc = None
    if path.is_file():
        import json

        try:
            prev = old_doc = json.loads(path.read_text())
            old = {c["name"]: c for c in prev.get("candidates", [])}
            if prev.get("teacher"):
                old["\0teacher"] = prev["teacher"]
        except (ValueError, KeyError, TypeError):
            old = {}
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    doc = {"format": FORMAT, "version": 1, "image_size": image_size, "num_classes": num_classes,
           "batch": 1, "input": {"name": "input", "layout": "NCHW float32 in [0, 1]"},
           "recipe": {"export": common["export"], "int8": common["quantize"],
                      "calibration_images": f"{len(calib)} seeded training images of the run"},
           "fingerprint": fingerprint({**common, "names": names}), "candidates": [], "teacher": None}
    try:
        for i, name in enumerate(names, 1):
            fp = fingerprint({**common, "name": name})
            prev = old.get(name)
            prof = profile_model(name, num_classes, image_size, teacher=teacher_name).to_dict()
            if prev and prev.get("fingerprint") == fp and _files_ok(folder, prev):
                doc["candidates"].append(prev)
                log(f"candidate {i}/{len(names)} {name}: kept from an earlier call")
                continue
            torch.manual_seed(seed)
            model = build_model(name, num_classes)
            files = _export_pair(model, slug(name), folder, staging, calib, image_size, quantize, export_cfg)
            doc["candidates"].append({"name": name, "slug": slug(name), "params": prof["params"],
                                      "compression_factor": prof["compression_factor"], "mflops": prof["mflops"],
                                      "family": prof["family"], "description": prof["description"],
                                      "weights": "seeded random (latency only)", "fingerprint": fp, "files": files})
            log(f"candidate {i}/{len(names)} {name}: {prof['params']:,} params, CF {prof['compression_factor']:.2f}x, "
                f"{prof['mflops']:.1f} MFLOPs; exported fp32 + int8")
            done = {c["name"] for c in doc["candidates"]}
            rest = [e for n, e in old.items() if n != "\0teacher" and n not in done]
            atomic_write_json(path, {**doc, "candidates": doc["candidates"] + rest})  # an interrupted call keeps these
        fp = fingerprint({**common, "name": "\0teacher"})
        prev = old.get("\0teacher")
        prof = profile_model(teacher_name, num_classes, image_size, teacher=teacher_name).to_dict()
        if prev and prev.get("fingerprint") == fp and _files_ok(folder, prev):
            doc["teacher"] = prev
        else:
            model = load_model(teacher_name, teacher_ckpt, num_classes=num_classes)
            files = _export_pair(model, "teacher", folder, staging, calib, image_size, quantize, export_cfg)
            doc["teacher"] = {"name": teacher_name, "slug": "teacher", "params": prof["params"],
                              "compression_factor": 1.0, "mflops": prof["mflops"], "family": prof["family"],
                              "weights": f"trained ({teacher_ckpt.name})", "fingerprint": fp, "files": files}
            log(f"teacher {teacher_name}: exported fp32 + int8 for reference")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if old_doc != doc:
        atomic_write_json(path, doc)
    keep = {f["file"] for e in doc["candidates"] + [doc["teacher"]] for f in e["files"].values()} | {CANDIDATES_FILE}
    for stale in folder.glob("*.onnx"):
        if stale.name not in keep:
            stale.unlink()
    return doc
