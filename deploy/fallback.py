"""int8 within an accuracy budget, decided on validation images only.

``decide_int8``: quantize the student (every calibration method with ``--calibration auto``, the best kept), measure
per-node sensitivity (``deploy.sensitivity``), and while the validation drop exceeds ``max_drop`` keep the next most
sensitive node in float (ORT ``quantize_static``'s ``nodes_to_exclude``, calibration ranges reused from ORT's
calibration cache), one node per step, until the drop is within budget or ``max_float_nodes`` is reached.
``time_students``: batch-1 latency of fp32, full int8 and the fallback model (``edgecommon.timing``, interleaved rounds).
``ship_decision``: which student to ship: int8 only when it meets the budget and is faster than fp32.
The test split is never read here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploy.sensitivity import NodeSensitivity, logits_sqnr, node_sensitivity
from deploy.steps import (
    AUTO_CALIBRATION, CALIBRATIONS, QuantizeConfig, StepError, StepRecord, gate_figures, onnx_logits, quantize_onnx,
)
from edgecommon.timing import TimingPlan, fixed_input, ort_callable, summarize, time_interleaved
from toolkit import ToolkitError

PRE_NAME = "student.pre.onnx"
"""The pre-processed fp32 student (``quant_pre_process``), shared by every candidate: its node and tensor names are
the ones the int8 models, the sensitivity report and ``nodes_to_exclude`` use."""


@dataclass
class Int8Config:
    """The int8 budget's knobs beside ``ExportConfig.max_drop`` (validation points)."""

    max_float_nodes: int = 10
    """Most nodes the fallback keeps in float before it gives up."""
    sensitivity_images: int = 64
    """Validation images for the per-node sensitivity report (stratified)."""
    allow_budget_miss: bool = False
    """When the budget cannot be met: ship fp32 and finish (True) instead of failing the export (False)."""
    min_speedup: float = 1.05
    """int8 ships only when fp32 p50 / int8 p50 at batch 1 reaches this; below it, fp32 ships."""
    timing_warmup: int = 20
    timing_runs: int = 300
    """Timed batch-1 calls per model, spread over ``timing_rounds`` interleaved rounds."""
    timing_rounds: int = 5
    timing_threads: int = 1

    def validate(self) -> None:
        if self.max_float_nodes < 0 or self.sensitivity_images < 1:
            raise ToolkitError("max_float_nodes must be >= 0 and sensitivity_images >= 1")
        if not self.min_speedup > 0 or self.timing_runs < 1 or self.timing_rounds < 1 or self.timing_warmup < 0:
            raise ToolkitError("min_speedup must be > 0, timing_runs and timing_rounds >= 1, timing_warmup >= 0")


@dataclass
class Candidate:
    """One int8 model tried, with its figures on the validation images (``gate_figures``)."""

    path: Path
    calibration: str
    float_nodes: list[str]
    figures: dict[str, Any]
    logits: np.ndarray = field(repr=False)
    record: StepRecord = field(repr=False)

    @property
    def drop(self) -> float:
        return float(self.figures["drop_points"]) if np.isfinite(self.logits).all() else float("inf")

    def to_dict(self) -> dict[str, Any]:
        f = self.figures
        return {"calibration": self.calibration, "float_nodes": len(self.float_nodes), "val_top1": f["int8_top1"],
                "drop_points": f["drop_points"], "agreement": f["agreement"], "within_budget": f["within"]}


@dataclass
class Int8Decision:
    full: Candidate
    """The chosen calibration, every node quantized."""
    final: Candidate
    """What ``student.int8.onnx`` holds: ``full`` or the fallback model."""
    calibrations: list[Candidate]
    steps: list[Candidate]
    rows: list[NodeSensitivity]
    sensitivity_images: int
    logits_sqnr_db: float | None

    @property
    def budget_met(self) -> bool:
        return bool(self.final.figures["within"])


Hook = Callable[[onnx.ModelProto], onnx.ModelProto] | None


def _candidate(fp32: Path, dst: Path, q: QuantizeConfig, method: str, calib: np.ndarray | None, float_nodes: list[str],
               val: tuple[np.ndarray, np.ndarray], fp32_val: np.ndarray, max_drop: float, hook: Hook) -> Candidate:
    """Quantize (pre-processed model and calibration ranges cached beside ``dst``), apply ``hook``, score on ``val``."""
    static = q.mode == "static"
    cache = dst.with_name(f"calibration.{method}.json") if static else None
    rec = quantize_onnx(fp32, dst, replace(q, calibration=method) if static else q, calib, nodes_to_exclude=float_nodes,
                        calibration_cache=cache, preprocessed=dst.with_name(PRE_NAME))
    if hook is not None:
        onnx.save(hook(onnx.load(str(dst))), str(dst))
    logits = onnx_logits(dst, val[0])
    figures = gate_figures(fp32_val, logits, val[1], max_drop)
    return Candidate(dst, method if static else "none", list(float_nodes), figures, logits, rec)


def decide_int8(fp32: Path, staging: Path, q: QuantizeConfig, calib: np.ndarray | None,
                val: tuple[np.ndarray, np.ndarray], fp32_val: np.ndarray, sens_images: np.ndarray, max_drop: float,
                cfg: Int8Config, hook: Hook = None, log: Callable[[str], None] = print) -> Int8Decision:
    """Every int8 choice, on validation only: ``val`` (uint8 images, labels) and the fp32 student's logits on them
    (``fp32_val``); ``sens_images``: float32 validation images for the sensitivity report. Files go to ``staging``."""
    cfg.validate()
    methods = CALIBRATIONS if q.mode == "static" and q.calibration == AUTO_CALIBRATION else (q.calibration,)
    tried = [_candidate(fp32, staging / f"student.int8.{m}.onnx", q, m, calib, [], val, fp32_val, max_drop, hook)
             for m in methods]
    full = min(tried, key=lambda c: c.drop)  # first method on ties
    if len(tried) > 1:
        log("calibration on validation: " + ", ".join(f"{c.calibration} drop {c.drop:.2f}" for c in tried)
            + f"; chose {full.calibration}")
    rows: list[NodeSensitivity] = []
    if q.mode == "static":
        try:
            rows = node_sensitivity(staging / PRE_NAME, full.path, sens_images, staging)
        except Exception as exc:  # noqa: BLE001 - ORT's debugging tools raise many types on unusual graphs
            raise StepError(f"int8 sensitivity analysis failed: {type(exc).__name__}: "
                            f"{(str(exc).splitlines() or [''])[0][:300]}") from None
        top = ", ".join(f"{r.node} ({r.added_db:.1f} dB)" for r in rows[:3] if r.added_db is not None)
        log(f"sensitivity: {len(rows)} quantized nodes on {len(sens_images)} validation images; most sensitive: {top}")
    steps: list[Candidate] = []
    if not full.figures["within"]:
        floats: list[str] = []
        for row in rows[:cfg.max_float_nodes]:
            floats.append(row.node)
            c = _candidate(fp32, staging / f"student.int8.fallback{len(floats)}.onnx", q, full.calibration, calib,
                           floats, val, fp32_val, max_drop, hook)
            steps.append(c)
            log(f"fallback step {len(floats)}: {row.node} ({row.op_type}) kept in float; validation drop {c.drop:.2f} "
                f"points (budget {max_drop:g})")
            if c.figures["within"]:
                break
    final = min([full, *steps], key=lambda c: c.drop)  # within budget if any is; fewest float nodes on ties
    finite = np.isfinite(final.logits).all()
    return Int8Decision(full, final, tried, steps, rows, len(sens_images),
                        logits_sqnr(fp32_val, final.logits) if finite else None)


def time_students(paths: dict[str, Path], cfg: Int8Config, image_size: tuple[int, int]) -> dict[str, float]:
    """p50 ms at batch 1 per model (``cfg.timing_threads`` threads), timed in interleaved rounds."""
    from deploy.runtime import create_session

    x = fixed_input(1, seed=0, shape=(3, *image_size))
    fns = {key: ort_callable(create_session(path, cfg.timing_threads), x) for key, path in paths.items()}
    plan = TimingPlan(warmup=cfg.timing_warmup, runs=cfg.timing_runs, duration_s=0)
    times = time_interleaved(fns, plan, cfg.timing_rounds)
    return {key: summarize(t).p50_ms for key, t in times.items()}


def ship_decision(budget_met: bool, fp32_p50: float, int8_p50: float, min_speedup: float) -> tuple[str, str]:
    """(model key to ship, why): int8 when it meets the validation budget and fp32 p50 / int8 p50 >= ``min_speedup``."""
    if not budget_met:
        return "student.fp32", "int8 misses the validation accuracy budget"
    speedup = fp32_p50 / int8_p50 if int8_p50 > 0 else float("inf")
    if not speedup >= min_speedup:
        return "student.fp32", (f"int8 is no faster than fp32 on this CPU: {speedup:.2f}x at batch 1, below the "
                                f"{min_speedup:g}x required")
    return "student.int8", f"int8 meets the validation budget and is {speedup:.2f}x faster than fp32 at batch 1"


def latency_summary(p50: dict[str, float], cfg: Int8Config, fallback: bool) -> dict[str, Any]:
    """The manifest's latency block: p50s, int8 speed-up over fp32, what the fallback cost against full int8."""
    f32, full = p50["student.fp32"], p50["student.int8.full"]
    final = p50.get("student.int8", full)
    return {"batch": 1, "threads": cfg.timing_threads, "runs": cfg.timing_runs, "rounds": cfg.timing_rounds,
            "timer": "edgecommon.timing.time_interleaved", "p50_ms": {k: round(v, 4) for k, v in p50.items()},
            "int8_speedup_vs_fp32": round(f32 / final, 3), "full_int8_speedup_vs_fp32": round(f32 / full, 3),
            "fallback_cost_vs_full_int8": round(final / full, 3) if fallback else None,
            "min_speedup": cfg.min_speedup}


def decision_record(d: Int8Decision, max_drop: float, cfg: Int8Config, n_val: int) -> dict[str, Any]:
    """The manifest's ``int8.fallback`` / ``int8.calibration`` blocks (validation figures only)."""
    return {
        "calibration": {"chosen": d.full.calibration, "candidates": [c.to_dict() for c in d.calibrations]},
        "fallback": {"needed": bool(d.steps) or not d.full.figures["within"], "budget_met": d.budget_met,
                     "max_drop": max_drop, "max_float_nodes": cfg.max_float_nodes, "float_nodes": d.final.float_nodes,
                     "steps": [{"float_node": c.float_nodes[-1], **c.to_dict()} for c in d.steps],
                     "full_int8": d.full.to_dict(), "validation_images": n_val},
    }


def keep_final(d: Int8Decision, dst: Path) -> None:
    """Copy the chosen int8 model to ``dst`` (the other candidates stay in the staging folder, which is discarded)."""
    shutil.copyfile(d.final.path, dst)
