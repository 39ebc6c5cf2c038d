"""What ``deploy.export`` writes besides the models: the manifest (model entries, the int8 decision record; schema:
``deploy.manifest``), the sensitivity report, and the report of an export that missed its int8 budget."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

import toolkit
from deploy import sensitivity, teacher_int8
from deploy.export_data import ExportData
from deploy.fallback import Int8Decision, decision_record
from deploy.manifest import (
    INPUT_NAME, OUTPUT_NAME, SCHEMA_MINOR, Manifest, ModelEntry, Normalization, Preprocessing, TensorSpec, sha256_file,
)
from deploy.steps import StepRecord, model_opset, tensor_shape
from edgecommon.images import resize_rule
from toolkit.runs import RunFolder

if TYPE_CHECKING:
    from deploy.export import ExportConfig

ROLES = ("student", "teacher")
REJECTED_DIR = "export.rejected"
"""Beside ``export/``: the sensitivity report of an export that failed its int8 budget."""


def model_entry(path: Path, role: str, precision: str, architecture: str, norm: Normalization, ckpt: dict,
                accuracy: dict, parity: dict | None, exporter: str, quantization: dict | None = None) -> ModelEntry:
    """The manifest entry of one ONNX file: its hash, size, opset, I/O tensors and preprocessing, plus the facts given."""
    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    inp = next(i for i in proto.graph.input if i.name not in inits)
    shape = tensor_shape(inp)
    return ModelEntry(
        file=path.name, sha256=sha256_file(path), size_bytes=path.stat().st_size, role=role, precision=precision,
        architecture=architecture, opset=model_opset(proto),
        input=TensorSpec(INPUT_NAME, shape, "float32", "NCHW"),
        output=TensorSpec(OUTPUT_NAME, tensor_shape(proto.graph.output[0]), "float32"),
        preprocessing=Preprocessing(normalization=norm, image_size=[int(shape[2]), int(shape[3])],
                                    resize=resize_rule(int(shape[2]))),
        source_checkpoint=ckpt, accuracy=accuracy, parity=parity, quantization=quantization, exporter=exporter,
    )


def build_manifest(run: RunFolder, data: ExportData, cfg: ExportConfig, d: Int8Decision, made: dict, test: dict,
                   gate: dict, latency: dict, ship: str, reason: str, report: list[str] | None, val_selection: str,
                   n_val: int, calib_idx: np.ndarray, staging: Path) -> Manifest:
    """The manifest: test accuracies (measured last) beside the validation figures every decision used; ``int8``
    records those decisions (calibration, sensitivity summary, fallback, latency) and ``ship`` the student to deploy."""
    q, n, runtime = cfg.quantize, test["n"], "onnxruntime CPU"
    entries: dict[str, ModelEntry] = {}
    for role in ROLES:
        m = made[role]
        acc: dict[str, Any] = {"top1": test["top1"][f"{role}.fp32"], "n": n, "split": "test", "runtime": runtime}
        if role == "student":
            acc["validation"] = {"top1": gate["fp32_top1"], "n": n_val}
        entries[f"{role}.fp32"] = model_entry(m["path"], role, "fp32", m["architecture"], m["norm"], m["ckpt"], acc,
                                              m["parity"], cfg.export.exporter)
    calibration = None
    if q.mode == "static":
        calibration = {"method": d.full.calibration, "asked": q.calibration, "size": int(len(calib_idx)),
                       "seed": q.calib_seed, "split": "train", "rows": "the run's training rows (validation held out)",
                       "batch": d.full.record.config["calib_batch"], "indices": [int(i) for i in calib_idx],
                       "percentile": q.percentile if d.full.calibration == "percentile" else None}
    t8 = test["int8"]
    acc8 = {"top1": t8["int8_top1"], "n": n, "split": "test", "runtime": runtime, "fp32_top1": t8["fp32_top1"],
            "drop_points": t8["drop_points"], "agreement": t8["agreement"], "max_drop": cfg.max_drop,
            "budget_split": "validation",
            "validation": {"top1": gate["int8_top1"], "fp32_top1": gate["fp32_top1"], "drop_points": gate["drop_points"],
                           "agreement": gate["agreement"], "n": n_val, "within_budget": d.budget_met}}
    s = made["student"]
    parity8 = {"vs_fp32_max_abs_logit_diff": t8["max_abs_logit_diff"], "vs_fp32_top1_agreement": t8["agreement"]}
    entries["student.int8"] = model_entry(staging / "student.int8.onnx", "student", "int8", s["architecture"], s["norm"],
                                          s["ckpt"], acc8, parity8, cfg.export.exporter,
                                          {**d.final.record.config, "calibration": calibration})
    tq = made.get("teacher.int8")
    if tq is not None and "teacher_int8" in test:
        t = made["teacher"]
        acc, parity = teacher_int8.accuracy(tq, test, runtime)
        entries[teacher_int8.KEY] = model_entry(tq["path"], "teacher", "int8", t["architecture"], t["norm"], t["ckpt"],
                                                acc, parity, cfg.export.exporter,
                                                {**tq["config"], "calibration": calibration, "baseline": True})
    entries = {k: entries[k] for k in ("student.fp32", "student.int8", "teacher.fp32", teacher_int8.KEY) if k in entries}
    full = d.full.figures
    int8 = {"decisions_on": "validation", "validation_images": n_val, "max_drop": cfg.max_drop,
            "allow_budget_miss": cfg.int8.allow_budget_miss, **decision_record(d, cfg.max_drop, cfg.int8, n_val),
            "sensitivity": None if not report else sensitivity.summary(d.rows, d.sensitivity_images,
                                                                       float_nodes=d.final.float_nodes,
                                                                       logits_sqnr_db=d.logits_sqnr_db),
            "latency": latency,
            "accuracy": {"validation": {"n": n_val, "fp32": gate["fp32_top1"], "int8_full": full["int8_top1"],
                                        "int8": gate["int8_top1"], "drop_points": gate["drop_points"]},
                         "test": {"n": n, "fp32": t8["fp32_top1"], "int8": t8["int8_top1"],
                                  "drop_points": t8["drop_points"]}}}
    return Manifest(
        models=entries, classes=list(data.classes), toolkit_version=toolkit.__version__, run=str(run.root),
        data={"description": data.description, "source": data.source, "test_images": n,
              "test_selection": f"first {n} of the test split", "val_images": n_val, "val_selection": val_selection,
              "val_rows": data.val_rule, "decisions_on": "validation"},
        calibration=calibration, created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ship={"model": ship, "reason": reason}, int8=int8, schema_minor=SCHEMA_MINOR,
    )


def sensitivity_step(d: Int8Decision, staging: Path, fp32_path: Path, pipeline: list[StepRecord]) -> list[str] | None:
    """Write the sensitivity table and plot (static int8) into ``staging``; their file names."""
    if not d.rows:
        return None
    t0 = time.perf_counter()
    files = sensitivity.write_report(d.rows, staging, d.final.float_nodes)
    pipeline.append(StepRecord("sensitivity", [fp32_path.name, d.full.path.name], files,
                               {"images": d.sensitivity_images, "split": "validation",
                                "tool": "onnxruntime.quantization.qdq_loss_debug"},
                               {"nodes": len(d.rows), "min_sqnr_db": min(r.sqnr_db for r in d.rows)},
                               time.perf_counter() - t0))
    return files


def keep_rejected(run: RunFolder, staging: Path, report: list[str] | None, decision: dict) -> Path:
    """An export that misses its budget leaves its report in ``runs/<name>/export.rejected/`` (not in ``export/``)."""
    tmp = staging / REJECTED_DIR
    tmp.mkdir()
    for name in report or []:
        shutil.copyfile(staging / name, tmp / name)
    (tmp / "int8.json").write_text(json.dumps(decision, indent=2))
    dst = run.root / REJECTED_DIR
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst
