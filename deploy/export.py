"""``python -m deploy.export --run runs/<name>``: export, simplify, parity-check and quantize a run's models.

Writes ``runs/<name>/export/``: ``student.fp32.onnx``, ``student.int8.onnx``, ``teacher.fp32.onnx``,
``teacher.int8.onnx`` (a baseline: the teacher quantized with the student's PTQ recipe, recorded and never gated,
``deploy.teacher_int8``; ``--no-teacher-int8`` skips it), the int8 sensitivity report (``sensitivity.csv``,
``sensitivity.png``) and ``manifest.json`` (schema: ``deploy.manifest``).
Every int8 choice (calibration method, fallback nodes, the budget, which student ships) is made on the run's
validation images (``deploy.fallback``); the test images are measured once, after all of them. All work happens in a
hidden staging folder inside ``export/``; only when every step and check has passed are the files moved into place
(``os.replace``), the manifest last, so a failed export leaves no file that looks finished (and an earlier good
export untouched).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from deploy import sensitivity
from deploy.export_data import ExportData, as_export_data, load_run_data, read_run_config, validation_rows
from deploy.export_record import REJECTED_DIR, ROLES, build_manifest, keep_rejected, sensitivity_step
from deploy.fallback import (
    Int8Config, Int8Decision, decide_int8, decision_record, keep_final, latency_summary, ship_decision, time_students,
)
from deploy.manifest import MANIFEST_NAME, DeployError, Manifest, Normalization, read_manifest, sha256_file
from deploy.parity import DEFAULT_ATOL, check_parity
from deploy.teacher_int8 import quantize_teacher
from deploy.steps import (
    AUTO_CALIBRATION, CALIBRATIONS, EXPORTERS, ExportOnnxConfig, GateError, QuantizeConfig, StepRecord, check_io,
    export_onnx, gate_figures, onnx_logits, simplify_onnx, top1,
)
from toolkit import ToolkitError
from toolkit.data import Cifar10
from toolkit.io import atomic_write_json
from toolkit.models.checkpoint import load_model
from toolkit.data.prepare import PreparedData
from toolkit.runs import RunFolder, open_run, resolve_run

STAGING_PREFIX = ".staging-"


@dataclass
class ExportConfig:
    """Everything ``deploy.export`` does, with units."""

    export: ExportOnnxConfig = field(default_factory=ExportOnnxConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    atol: float = DEFAULT_ATOL
    """Parity bound: max |ONNX Runtime logit - PyTorch logit| allowed, and top-1 must be identical."""
    parity_random: int = 64
    """Seeded uniform [0, 1] inputs in the parity check."""
    parity_images: int = 256
    """Real validation images (the first of the decision rows) in the parity check."""
    parity_seed: int = 0
    test_subset: int | None = None
    """First N test images for the reported accuracies; None: the run config's data.test_subset, else all."""
    val_subset: int | None = None
    """Validation images for the int8 decisions: None all, else a stratified N (seed 0)."""
    max_drop: float = 0.5
    """int8 budget: largest allowed fp32 - int8 top-1 drop on the validation images, in percentage points."""
    int8: Int8Config = field(default_factory=Int8Config)
    data_dir: str | None = None
    teacher_int8: bool = True
    """Also quantize the teacher with the student's PTQ recipe (``deploy.teacher_int8``): a recorded baseline."""

    def validate(self) -> None:
        self.export.validate()
        self.quantize.validate()
        self.int8.validate()
        if not self.atol > 0 or self.parity_random < 1 or self.parity_images < 0:
            raise ToolkitError("atol must be > 0, parity_random >= 1 and parity_images >= 0")
        for name in ("test_subset", "val_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ToolkitError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not np.isfinite(self.max_drop):
            raise ToolkitError(f"max_drop must be a finite number of points, got {self.max_drop}")


@dataclass
class Hooks:
    """Optional graph rewrites (graph surgery) inside the pipeline; the checks that follow them still apply.

    ``after_simplify(role, proto) -> proto`` runs before the post-simplify parity check;
    ``after_quantize(proto) -> proto`` on every int8 model tried (each calibration method, each fallback step),
    before it is scored on the validation images.
    """

    after_simplify: Callable[[str, onnx.ModelProto], onnx.ModelProto] | None = None
    after_quantize: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None


def _normalization(model: torch.nn.Module) -> Normalization:
    norm = getattr(model, "normalize", None)
    if norm is None or not hasattr(norm, "mean") or not hasattr(norm, "std"):
        raise ToolkitError(f"{type(model).__name__} has no `normalize` module with mean/std buffers")
    return Normalization(mean=[float(v) for v in norm.mean.flatten()], std=[float(v) for v in norm.std.flatten()])


def _reference(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return torch.cat([model(torch.from_numpy(x[i:i + 256])) for i in range(0, len(x), 256)]).numpy()

    return run


def _clean_stale_staging(export_dir: Path) -> None:
    """Remove staging folders left by export processes that no longer exist."""
    for d in export_dir.glob(f"{STAGING_PREFIX}*"):
        try:
            pid = int(d.name[len(STAGING_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass


def run_export(run_path: str | os.PathLike, cfg: ExportConfig | None = None,
               data: ExportData | PreparedData | Cifar10 | None = None, hooks: Hooks | None = None,
               log: Callable[[str], None] = print) -> Manifest:
    """Export a run's student and teacher, simplify, check parity, quantize the student within the int8 budget.

    ``data``: the dataset (loaded from the run's config when None); a ``Cifar10`` gets its validation rows by the
    run's data settings (``deploy.export_data.split_source``). Returns the written manifest. Raises ToolkitError
    (ParityError, GateError, StepError) on any failed check, leaving no new artifact in ``export/``.
    """
    cfg = cfg or ExportConfig()
    cfg.validate()
    hooks = hooks or Hooks()
    run = open_run(run_path)
    summary = run.read_summary()
    run_config = read_run_config(run)
    data = as_export_data(data, run_config) if data is not None else load_run_data(run_config, cfg.data_dir)

    val_idx, val_selection = validation_rows(data.val, cfg.val_subset)
    val_x, val_y = data.val.images[val_idx].numpy(), data.val.labels[val_idx].numpy()
    sens_idx, _ = validation_rows(data.val, cfg.int8.sensitivity_images)
    sens_x = data.val.images[sens_idx].numpy().astype(np.float32) / 255
    rng = np.random.default_rng(cfg.parity_seed)
    parity_inputs = {"random": rng.random((cfg.parity_random, *val_x.shape[1:]), dtype=np.float32)}
    if cfg.parity_images:
        parity_inputs["val_images"] = val_x[:cfg.parity_images].astype(np.float32) / 255
    q = cfg.quantize
    calib_idx = np.sort(np.random.default_rng(q.calib_seed).choice(len(data.train), min(q.calib_size, len(data.train)),
                                                                     replace=False))
    calib = data.train.images[torch.from_numpy(calib_idx)].numpy().astype(np.float32) / 255

    export_dir = run.export_dir
    export_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(export_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=export_dir))
    pipeline: list[StepRecord] = []
    try:
        made = {role: _export_role(role, summary, run, data, cfg, hooks, parity_inputs, staging, pipeline, log)
                for role in ROLES}
        # ---- every int8 decision, on validation images only
        d, gate, report = _decide_int8(run, staging, cfg, calib, (val_x, val_y), sens_x, hooks, pipeline, log)
        latency, ship, reason = _time_and_ship(d, staging, cfg, tuple(int(v) for v in val_x.shape[2:]), pipeline, log)
        if cfg.teacher_int8:  # a baseline, recorded and never gated: no decision depends on it
            made["teacher.int8"] = quantize_teacher(d, staging, cfg.quantize, calib, (val_x, val_y), cfg.max_drop,
                                                    pipeline, log)
        # ---- all decisions are made: the test images are read from here on, and only measured
        test = _measure_test(data, cfg, run_config, staging, pipeline, log, made.get("teacher.int8") is not None)
        manifest = build_manifest(run, data, cfg, d, made, test, gate, latency, ship, reason, report, val_selection,
                                  len(val_y), calib_idx, staging)
        record = manifest.to_dict()
        record["pipeline"] = [r.to_dict() for r in pipeline]
        _commit(staging, export_dir, [e.file for e in manifest.models.values()] + (report or []), record,
                stale=[] if report else [sensitivity.CSV_NAME, sensitivity.PLOT_NAME])
        shutil.rmtree(run.root / REJECTED_DIR, ignore_errors=True)  # a report of an earlier failed try is stale now
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _decide_int8(run: RunFolder, staging: Path, cfg: ExportConfig, calib: np.ndarray,
                 val: tuple[np.ndarray, np.ndarray], sens_x: np.ndarray, hooks: Hooks, pipeline: list[StepRecord],
                 log: Callable[[str], None]) -> tuple[Int8Decision, dict[str, Any], list[str] | None]:
    """Calibration choice, sensitivity report, fallback and the budget (``deploy.fallback``), on ``val`` only.
    Raises GateError when the budget is missed and not allowed (the report then goes to ``export.rejected/``)."""
    q, (val_x, val_y) = cfg.quantize, val
    fp32_path = staging / "student.fp32.onnx"
    t0 = time.perf_counter()
    d = decide_int8(fp32_path, staging, q, calib if q.mode == "static" else None, val, onnx_logits(fp32_path, val_x),
                    sens_x, cfg.max_drop, cfg.int8, hooks.after_quantize, log)
    pipeline += [c.record for c in d.calibrations]
    report = sensitivity_step(d, staging, fp32_path, pipeline)
    decision = decision_record(d, cfg.max_drop, cfg.int8, len(val_y))
    pipeline.append(StepRecord("fallback", [d.full.path.name], [], {"max_drop": cfg.max_drop, "split": "validation",
                               "max_float_nodes": cfg.int8.max_float_nodes}, decision["fallback"],
                               time.perf_counter() - t0))
    gate = {k: v for k, v in d.final.figures.items() if k != "within"}
    method = d.full.calibration if q.mode == "static" else "no"
    log(f"student int8 ({q.mode}, {method} calibration, {len(d.final.float_nodes)} node(s) in float): "
        f"validation top-1 {gate['int8_top1']:.2f}% vs fp32 {gate['fp32_top1']:.2f}% (drop {gate['drop_points']:.2f}, "
        f"budget {cfg.max_drop:g}), agreement {gate['agreement']:.1f}% on {len(val_y)} validation images")
    pipeline.append(StepRecord("accuracy_gate", ["student.fp32.onnx", "student.int8.onnx"], [],
                               {"max_drop": cfg.max_drop, "split": "validation"}, {**gate, "budget_met": d.budget_met},
                               0.0))
    if not d.budget_met and not cfg.int8.allow_budget_miss:
        where = keep_rejected(run, staging, report, decision)
        raise GateError(f"int8 misses the validation budget: best drop {d.final.drop:.2f} points > allowed "
                        f"{cfg.max_drop:g} (int8 top-1 {gate['int8_top1']:.2f}% vs fp32 {gate['fp32_top1']:.2f}%, "
                        f"agreement {gate['agreement']:.1f}% on {len(val_y)} validation images) after keeping up to "
                        f"{len(d.steps)} node(s) in float (limit {cfg.int8.max_float_nodes}); sensitivity report in "
                        f"{where}; --allow-budget-miss ships fp32 instead")
    keep_final(d, staging / "student.int8.onnx")
    return d, gate, report


def _time_and_ship(d: Int8Decision, staging: Path, cfg: ExportConfig, size: tuple[int, ...],
                   pipeline: list[StepRecord], log: Callable[[str], None]) -> tuple[dict[str, Any], str, str]:
    """Batch-1 latency of fp32, full int8 and the fallback model (interleaved rounds); which student ships."""
    t0 = time.perf_counter()
    fallback = d.final is not d.full
    paths = {"student.fp32": staging / "student.fp32.onnx", "student.int8.full": d.full.path}
    if fallback:
        paths["student.int8"] = d.final.path
    latency = latency_summary(time_students(paths, cfg.int8, (size[0], size[1])), cfg.int8, fallback)
    p50 = latency["p50_ms"]
    int8_p50 = p50.get("student.int8", p50["student.int8.full"])
    ship, reason = ship_decision(d.budget_met, p50["student.fp32"], int8_p50, cfg.int8.min_speedup)
    pipeline.append(StepRecord("latency", list(paths), [], {k: latency[k] for k in ("batch", "threads", "runs", "rounds")},
                               {**latency, "ship": ship, "reason": reason}, time.perf_counter() - t0))
    log(f"latency p50 at batch 1: fp32 {p50['student.fp32']:.3f} ms, int8 {int8_p50:.3f} ms"
        + (f" (full int8 {p50['student.int8.full']:.3f} ms)" if fallback else "") + f"; ship {ship}: {reason}")
    return latency, ship, reason


def _export_role(role: str, summary: dict, run: RunFolder, data: ExportData, cfg: ExportConfig, hooks: Hooks,
                 parity_inputs: dict[str, np.ndarray], staging: Path, pipeline: list[StepRecord],
                 log: Callable[[str], None]) -> dict[str, Any]:
    """Export, parity-check, simplify and parity-check one role; its facts for the manifest entry."""
    info = summary.get(role) or {}
    if "name" not in info:
        raise ToolkitError(f"{run.summary} has no {role}.name")
    ckpt_path = run.root / info.get("checkpoint", run.checkpoint(role).name)
    model = load_model(info["name"], ckpt_path, num_classes=len(data.classes))
    ckpt = {"path": str(ckpt_path), "sha256": sha256_file(ckpt_path)}
    norm = _normalization(model)
    ref = _reference(model)
    raw, final = staging / f"{role}.raw.onnx", staging / f"{role}.fp32.onnx"
    rec = export_onnx(model, raw, cfg.export, image_size=int(data.val.images.shape[-1]))
    pipeline.append(rec)
    p_export = check_parity(raw, ref, parity_inputs, f"{role} after export", cfg.atol)
    rec.check["parity"] = p_export.to_dict()
    log(f"{role} ({info['name']}): exported ({cfg.export.exporter}, opset {rec.check['opset']}); {p_export.summary()}")
    rec = simplify_onnx(raw, final)
    raw.unlink()
    if hooks.after_simplify is not None:
        onnx.save(hooks.after_simplify(role, onnx.load(str(final))), str(final))
        rec.check.update(check_io(final))
    pipeline.append(rec)
    p_simpl = check_parity(final, ref, parity_inputs, f"{role} after simplify", cfg.atol)
    rec.check["parity"] = p_simpl.to_dict()
    log(f"{role}: simplified ({rec.check['nodes_before']} -> {rec.check['nodes']} nodes); {p_simpl.summary()}")
    parity = {"atol": cfg.atol, "after_export": p_export.to_dict(), "after_simplify": p_simpl.to_dict()}
    return {"path": final, "architecture": info["name"], "norm": norm, "ckpt": ckpt, "parity": parity}


def _measure_test(data: ExportData, cfg: ExportConfig, run_config: dict, staging: Path, pipeline: list[StepRecord],
                  log: Callable[[str], None], teacher_int8: bool = False) -> dict[str, Any]:
    """Logits of the models on the first N test images (after every decision); their accuracies."""
    t0 = time.perf_counter()
    n = cfg.test_subset or (run_config.get("data") or {}).get("test_subset") or len(data.test)
    n = min(int(n), len(data.test))
    x, y = data.test.images[:n].numpy(), data.test.labels[:n].numpy()
    keys = ("student.fp32", "student.int8", "teacher.fp32") + (("teacher.int8",) if teacher_int8 else ())
    logits = {key: onnx_logits(staging / f"{key}.onnx", x) for key in keys}
    acc = {key: round(top1(v, y), 4) for key, v in logits.items()}
    figures = gate_figures(logits["student.fp32"], logits["student.int8"], y, cfg.max_drop)
    out = {"n": n, "top1": acc, "int8": figures}
    if teacher_int8:
        out["teacher_int8"] = gate_figures(logits["teacher.fp32"], logits["teacher.int8"], y, cfg.max_drop)
    pipeline.append(StepRecord("test_accuracy", [f"{k}.onnx" for k in logits], [], {"split": "test", "n": n},
                               {"top1": acc, "int8_drop_points": figures["drop_points"]}, time.perf_counter() - t0))
    log(f"test (measured after every decision, {n} images): student fp32 {acc['student.fp32']:.2f}%, int8 "
        f"{acc['student.int8']:.2f}% (drop {figures['drop_points']:.2f}), teacher {acc['teacher.fp32']:.2f}%"
        + (f", teacher int8 {acc['teacher.int8']:.2f}% (baseline)" if teacher_int8 else ""))
    return out


def _commit(staging: Path, export_dir: Path, files: list[str], manifest: dict, stale: Sequence[str] = ()) -> None:
    """Move checked files into ``export_dir``: old manifest out first (and ``stale`` files of an earlier export that
    this one does not write), models next, new manifest last."""
    old = export_dir / MANIFEST_NAME
    if old.exists():
        old.unlink()
    for name in stale:
        (export_dir / name).unlink(missing_ok=True)
    for name in files:
        os.replace(staging / name, export_dir / name)
    atomic_write_json(old, manifest)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(old, 0o666 & ~umask)  # mkstemp creates 0600; the manifest ships beside world-readable models


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.export", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run name (runs/<name>) or run folder path")
    p.add_argument("--calibration", choices=(*CALIBRATIONS, AUTO_CALIBRATION), default="minmax",
                   help="calibration method; auto: each one, the best on validation (default minmax)")
    p.add_argument("--calib-size", type=int, default=512, help="training images for calibration (default 512)")
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--max-drop", type=float, default=0.5,
                   help="int8 budget: allowed fp32 - int8 top-1 drop on validation, in points (default 0.5)")
    p.add_argument("--max-float-nodes", type=int, default=Int8Config.max_float_nodes,
                   help=f"most nodes the fallback keeps in float (default {Int8Config.max_float_nodes}; 0: no fallback)")
    p.add_argument("--qat", choices=("off", "on-miss", "always"), default="off",
                   help="quantization-aware distillation (deploy.qat, needs the qat extra): on-miss = when PTQ + "
                        "fallback misses the budget; always = after every export (default off; make export: on-miss)")
    p.add_argument("--qat-epochs", type=int, default=3, help="QAT epochs (default 3)")
    p.add_argument("--allow-budget-miss", action="store_true",
                   help="when int8 cannot meet the budget, ship fp32 and exit 0 instead of failing")
    p.add_argument("--min-speedup", type=float, default=Int8Config.min_speedup,
                   help=f"int8 ships only this much faster than fp32 at batch 1 (default {Int8Config.min_speedup:g}x)")
    p.add_argument("--val-subset", type=int, default=None, help="stratified N validation images for the decisions "
                   "(default all)")
    p.add_argument("--sensitivity-images", type=int, default=Int8Config.sensitivity_images,
                   help=f"validation images for the sensitivity report (default {Int8Config.sensitivity_images})")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images (default: run config or all)")
    p.add_argument("--dynamic", action="store_true", help="dynamic int8 quantization instead of static QDQ (slower here)")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="parity bound on |logit diff| (default 1e-4)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: the run config's, then the usual places)")
    p.add_argument("--no-teacher-int8", dest="teacher_int8", action="store_false",
                   help="skip the teacher int8 baseline (the teacher quantized with the student's recipe; never gates)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = ExportConfig(
        export=ExportOnnxConfig(exporter=args.exporter, opset=args.opset),
        # dynamic: uint8 weights, since ConvInteger with int8 weights ran ~10x slower than fp32 on this CPU
        quantize=QuantizeConfig(mode="dynamic" if args.dynamic else "static", calibration=args.calibration,
                                calib_size=args.calib_size, calib_seed=args.calib_seed,
                                weight_type="QUInt8" if args.dynamic else "QInt8"),
        atol=args.atol, test_subset=args.test_subset, val_subset=args.val_subset, max_drop=args.max_drop,
        int8=Int8Config(max_float_nodes=args.max_float_nodes, sensitivity_images=args.sensitivity_images,
                        allow_budget_miss=args.allow_budget_miss, min_speedup=args.min_speedup),
        data_dir=args.data_dir, teacher_int8=args.teacher_int8,
    )
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    try:
        run_dir = resolve_run(args.run)
        qat = args.qat == "always"
        try:
            manifest = run_export(run_dir, cfg, log=log)
        except GateError as exc:
            if args.qat != "on-miss":
                raise
            log(f"note: {exc}; exporting with fp32 shipped, then trying quantization-aware distillation (--qat on-miss)")
            cfg.int8.allow_budget_miss = True
            manifest = run_export(run_dir, cfg, log=log)
            qat = True
        if qat:
            from deploy.qat import record_in_manifest, run_qat

            report = run_qat(run_dir, epochs=args.qat_epochs, log=log, command=f"deploy.export --qat {args.qat}")
            if not report.get("finished"):
                raise ToolkitError("QAT did not finish")
            shipped = record_in_manifest(run_dir, log=log)
            manifest = read_manifest(run_dir / "export" / MANIFEST_NAME)
            if args.qat == "on-miss" and shipped != "student.qat.int8" and not args.allow_budget_miss:
                raise GateError(f"int8 misses the validation budget even after QAT (see {run_dir / 'export' / 'qat.json'}); "
                                f"the export ships {shipped}; --allow-budget-miss accepts that")
    except (ToolkitError, DeployError) as exc:  # bad input, a failed check or gate: one line, exit 2 (as toolkit)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = run_dir / "export"
    for key, e in manifest.models.items():
        val = e.accuracy.get("validation", {}).get("top1")
        print(f"{out / e.file}: {e.size_bytes / 1024:.0f} KiB, top-1 {e.accuracy['top1']:.2f}% test"
              + (f" ({val:.2f}% validation)" if val is not None else "") + f", sha256 {e.sha256[:16]}")
    if manifest.int8 and manifest.int8.get("sensitivity"):
        print(f"{out / manifest.int8['sensitivity']['file']}")
    print(f"ship: {manifest.shipped_student} ({manifest.ship['reason'] if manifest.ship else 'int8'})")
    print(f"{out / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
