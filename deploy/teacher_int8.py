"""The teacher quantized with the student's PTQ recipe: a baseline ("just quantize the teacher, skip distillation").

Same recipe as the student's int8: ``quantize_onnx`` with the export's ``QuantizeConfig`` (static QDQ, uint8
activations, int8 per-channel weights, ``quant_pre_process``), the calibration method the student got (the one
``--calibration auto`` chose) and the same calibration images. No fallback search and no gate: its figures (parity and
top-1 agreement vs ``teacher.fp32``, validation top-1) are recorded, never judged; a quantizer failure is logged and
the export goes on without the entry. Test top-1 is measured by ``deploy.export`` with the other models, last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deploy.fallback import Int8Decision
from deploy.steps import QuantizeConfig, StepError, StepRecord, gate_figures, onnx_logits, quantize_onnx

KEY = "teacher.int8"
FILE = f"{KEY}.onnx"
NOTE = ("baseline: the teacher quantized with the student's PTQ recipe (same calibration method and images), no "
        "distillation; recorded only, it never gates the export")


def quantize_teacher(d: Int8Decision, staging: Path, q: QuantizeConfig, calib: np.ndarray,
                     val: tuple[np.ndarray, np.ndarray], max_drop: float, pipeline: list[StepRecord],
                     log: Callable[[str], None]) -> dict[str, Any] | None:
    """Quantize ``staging/teacher.fp32.onnx`` into ``staging/teacher.int8.onnx`` and score it against the fp32
    teacher on the validation images ``val``; None (logged, recorded as a step) when the quantizer fails."""
    t0 = time.perf_counter()
    static = q.mode == "static"
    method = d.full.calibration if static else None
    cfg = replace(q, calibration=method) if static else q
    src, dst, pre = staging / "teacher.fp32.onnx", staging / FILE, staging / "teacher.pre.onnx"
    try:
        rec = quantize_onnx(src, dst, cfg, calib if static else None, preprocessed=pre)
    except StepError as exc:
        log(f"warning: teacher int8 baseline skipped: {exc}")
        pipeline.append(StepRecord("teacher_int8", [src.name], [], {"calibration": method}, {"error": str(exc)},
                                   time.perf_counter() - t0))
        return None
    finally:
        pre.unlink(missing_ok=True)
    fp32_val, int8_val = onnx_logits(src, val[0]), onnx_logits(dst, val[0])
    figures = gate_figures(fp32_val, int8_val, val[1], max_drop)
    figures.pop("within")
    rec.step = "teacher_int8"
    rec.check.update({"validation": figures, "gates_export": False, "recipe": "the student's PTQ recipe"})
    rec.seconds = time.perf_counter() - t0
    pipeline.append(rec)
    log(f"teacher int8 baseline ({q.mode}, {method or 'no'} calibration): validation top-1 {figures['int8_top1']:.2f}% "
        f"vs fp32 {figures['fp32_top1']:.2f}% (drop {figures['drop_points']:.2f}), agreement {figures['agreement']:.1f}% "
        f"(recorded, not gated)")
    return {"path": dst, "validation": figures, "config": rec.config, "calibration": method}


def accuracy(made: dict[str, Any], test: dict[str, Any], runtime: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest entry's ``accuracy`` and ``parity`` from the validation figures and the test figures
    (``test["teacher_int8"]``: ``gate_figures`` of teacher fp32 vs int8 on the test images)."""
    t, v = test["teacher_int8"], made["validation"]
    acc = {"top1": t["int8_top1"], "n": test["n"], "split": "test", "runtime": runtime, "fp32_top1": t["fp32_top1"],
           "drop_points": t["drop_points"], "agreement": t["agreement"], "gates_export": False, "note": NOTE,
           "validation": {"top1": v["int8_top1"], "fp32_top1": v["fp32_top1"], "drop_points": v["drop_points"],
                          "agreement": v["agreement"], "n": v["n"]}}
    parity = {"vs_fp32_max_abs_logit_diff": t["max_abs_logit_diff"], "vs_fp32_top1_agreement": t["agreement"],
              "validation": {"vs_fp32_max_abs_logit_diff": v["max_abs_logit_diff"],
                             "vs_fp32_top1_agreement": v["agreement"]}}
    return acc, parity
