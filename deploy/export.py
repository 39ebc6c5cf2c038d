"""``python -m deploy.export --run runs/<name>``: export, simplify, parity-check and quantize a run's models.

Writes ``runs/<name>/export/``: ``student.fp32.onnx``, ``student.int8.onnx``, ``teacher.fp32.onnx`` and
``manifest.json`` (schema: ``deploy.manifest``). All work happens in a hidden staging folder inside ``export/``;
only when every step and check has passed are the files moved into place (``os.replace``), the manifest last, so a
failed export leaves no file that looks finished (and an earlier good export untouched).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import toolkit
from deploy.manifest import (
    INPUT_NAME, MANIFEST_NAME, OUTPUT_NAME, DeployError, Manifest, ModelEntry, Normalization, Preprocessing,
    TensorSpec, sha256_file,
)
from deploy.parity import DEFAULT_ATOL, check_parity
from deploy.steps import (
    CALIBRATIONS, EXPORTERS, ExportOnnxConfig, QuantizeConfig, StepRecord, accuracy_gate, check_io, export_onnx,
    model_opset, onnx_logits, quantize_onnx, simplify_onnx, tensor_shape, top1,
)
from edgecommon.images import resize_rule
from toolkit import ToolkitError
from toolkit.data import Cifar10, load_cifar10
from toolkit.io import atomic_write_json
from toolkit.models.checkpoint import load_model
from toolkit.runs import RunFolder, open_run

ROLES = ("student", "teacher")
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
    """Real test images (the first ones) in the parity check."""
    parity_seed: int = 0
    test_subset: int | None = None
    """First N test images for accuracies and the gate; None: the run config's data.test_subset, else all."""
    max_drop: float = 0.5
    """Accuracy gate: largest allowed fp32 - int8 top-1 drop, in percentage points."""
    data_dir: str | None = None

    def validate(self) -> None:
        self.export.validate()
        self.quantize.validate()
        if not self.atol > 0 or self.parity_random < 1 or self.parity_images < 0:
            raise ToolkitError("atol must be > 0, parity_random >= 1 and parity_images >= 0")
        if self.test_subset is not None and self.test_subset < 1:
            raise ToolkitError(f"test_subset must be >= 1, got {self.test_subset}")
        if not np.isfinite(self.max_drop):
            raise ToolkitError(f"max_drop must be a finite number of points, got {self.max_drop}")


@dataclass
class Hooks:
    """Optional graph rewrites (graph surgery) inside the pipeline; the checks that follow them still apply.

    ``after_simplify(role, proto) -> proto`` runs before the post-simplify parity check;
    ``after_quantize(proto) -> proto`` before the int8 accuracy gate.
    """

    after_simplify: Callable[[str, onnx.ModelProto], onnx.ModelProto] | None = None
    after_quantize: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None


def read_run_config(run: RunFolder) -> dict[str, Any]:
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


def load_run_data(run_config: dict[str, Any], data_dir: str | None = None) -> Cifar10:
    """The run's dataset, as its config.yaml (``run_config``) describes it.

    Synthetic and image folders (data.dataset "synthetic" / "folder"): rebuilt by the toolkit's own data preparation
    (``toolkit.pipeline.prepare_data``) from the run's data settings, so the test set is the very one the run was
    evaluated on (same split seed, same files, same image size and resize rule) and calibration draws from the
    run's training rows.
    CIFAR-10: the dataset found via ``data_dir``, the config's data.data_dir, then the usual places.
    """
    data = run_config.get("data") or {}
    if not isinstance(data, dict):
        raise ToolkitError(f"run config 'data' must be a mapping, got {type(data).__name__}")
    if data.get("dataset", "cifar10") not in ("synthetic", "folder"):
        return load_cifar10(data_dir or data.get("data_dir"))
    from dataclasses import fields

    from toolkit.config import DataConfig, RunConfig
    from toolkit.pipeline import prepare_data

    known = {f.name for f in fields(DataConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ToolkitError(f"run config has unknown data key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    prepared = prepare_data(RunConfig(data=DataConfig(**data), progress=False))
    source = data.get("train_dir") or data.get("dataset")
    return Cifar10(prepared.train, prepared.test, str(source), prepared.description, tuple(prepared.classes))


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


def _entry(path: Path, role: str, precision: str, architecture: str, norm: Normalization, ckpt: dict,
           accuracy: dict, parity: dict | None, exporter: str, quantization: dict | None = None) -> ModelEntry:
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


def run_export(run_path: str | os.PathLike, cfg: ExportConfig | None = None, data: Cifar10 | None = None,
               hooks: Hooks | None = None, log: Callable[[str], None] = print) -> Manifest:
    """Export a run's student and teacher, simplify, check parity, quantize the student, gate its accuracy.

    ``data``: the dataset (loaded from the run's config when None). Returns the written manifest.
    Raises ToolkitError (ParityError, GateError, StepError) on any failed check, leaving no new artifact.
    """
    cfg = cfg or ExportConfig()
    cfg.validate()
    hooks = hooks or Hooks()
    run = open_run(run_path)
    summary = run.read_summary()
    run_config = read_run_config(run)
    data = data if data is not None else load_run_data(run_config, cfg.data_dir)

    n_test = cfg.test_subset or (run_config.get("data") or {}).get("test_subset") or len(data.test)
    n_test = min(int(n_test), len(data.test))
    test_x = data.test.images[:n_test].numpy()
    test_y = data.test.labels[:n_test].numpy()
    rng = np.random.default_rng(cfg.parity_seed)
    parity_inputs = {"random": rng.random((cfg.parity_random, *test_x.shape[1:]), dtype=np.float32)}
    if cfg.parity_images:
        parity_inputs["test_images"] = test_x[:cfg.parity_images].astype(np.float32) / 255
    q = cfg.quantize
    calib_idx = np.sort(np.random.default_rng(q.calib_seed).choice(len(data.train), min(q.calib_size, len(data.train)),
                                                                     replace=False))
    calib = data.train.images[torch.from_numpy(calib_idx)].numpy().astype(np.float32) / 255

    export_dir = run.export_dir
    export_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(export_dir)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=export_dir))
    pipeline: list[StepRecord] = []
    entries: dict[str, ModelEntry] = {}
    try:
        logits32: dict[str, np.ndarray] = {}
        for role in ROLES:
            info = summary.get(role) or {}
            if "name" not in info:
                raise ToolkitError(f"{run.summary} has no {role}.name")
            ckpt_path = run.root / info.get("checkpoint", run.checkpoint(role).name)
            model = load_model(info["name"], ckpt_path, num_classes=len(data.classes))
            ckpt = {"path": str(ckpt_path), "sha256": sha256_file(ckpt_path)}
            norm = _normalization(model)
            ref = _reference(model)
            raw, final = staging / f"{role}.raw.onnx", staging / f"{role}.fp32.onnx"
            rec = export_onnx(model, raw, cfg.export, image_size=int(test_x.shape[-1]))
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
            logits32[role] = onnx_logits(final, test_x)
            acc = {"top1": round(top1(logits32[role], test_y), 4), "n": n_test, "split": "test", "runtime": "onnxruntime CPU"}
            log(f"{role}: fp32 top-1 {acc['top1']:.2f}% on {n_test} test images")
            parity = {"atol": cfg.atol, "after_export": p_export.to_dict(), "after_simplify": p_simpl.to_dict()}
            entries[f"{role}.fp32"] = _entry(final, role, "fp32", info["name"], norm, ckpt, acc, parity,
                                             cfg.export.exporter)

        student = entries["student.fp32"]
        int8 = staging / "student.int8.onnx"
        rec = quantize_onnx(staging / student.file, int8, q, calib if q.mode == "static" else None)
        if hooks.after_quantize is not None:
            onnx.save(hooks.after_quantize(onnx.load(str(int8))), str(int8))
        pipeline.append(rec)
        logits8 = onnx_logits(int8, test_x)
        try:
            gate = accuracy_gate(logits32["student"], logits8, test_y, cfg.max_drop)
        finally:
            f32, i8 = top1(logits32["student"], test_y), top1(logits8, test_y)
            agree = float((logits32["student"].argmax(1) == logits8.argmax(1)).mean() * 100)
            log(f"student int8 ({q.mode}, {q.calibration if q.mode == 'static' else 'no'} calibration): top-1 {i8:.2f}% "
                f"vs fp32 {f32:.2f}%, agreement {agree:.1f}% on {n_test} test images (max drop {cfg.max_drop:g})")
        pipeline.append(StepRecord("accuracy_gate", [student.file, int8.name], [], {"max_drop": cfg.max_drop}, gate, 0.0))
        calibration = None
        if q.mode == "static":
            calibration = {"method": q.calibration, "size": int(len(calib_idx)), "seed": q.calib_seed, "split": "train",
                           "batch": rec.config["calib_batch"], "indices": [int(i) for i in calib_idx],
                           "percentile": q.percentile if q.calibration == "percentile" else None}
        quant = {**rec.config, "calibration": calibration}
        acc8 = {"top1": gate["int8_top1"], "n": n_test, "split": "test", "runtime": "onnxruntime CPU",
                "fp32_top1": gate["fp32_top1"], "drop_points": gate["drop_points"], "agreement": gate["agreement"],
                "max_drop": cfg.max_drop}
        entries["student.int8"] = _entry(int8, "student", "int8", student.architecture,
                                         student.preprocessing.normalization, student.source_checkpoint, acc8,
                                         {"vs_fp32_max_abs_logit_diff": gate["max_abs_logit_diff"],
                                          "vs_fp32_top1_agreement": gate["agreement"]}, student.exporter, quant)
        entries = {k: entries[k] for k in ("student.fp32", "student.int8", "teacher.fp32")}
        manifest = Manifest(
            models=entries, classes=list(data.classes), toolkit_version=toolkit.__version__, run=str(run.root),
            data={"description": data.description, "source": data.source, "test_images": n_test,
                  "test_selection": f"first {n_test} of the test split"},
            calibration=calibration, created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        record = manifest.to_dict()
        record["pipeline"] = [r.to_dict() for r in pipeline]
        _commit(staging, export_dir, [e.file for e in entries.values()], record)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit(staging: Path, export_dir: Path, files: list[str], manifest: dict) -> None:
    """Move checked files into ``export_dir``: old manifest out first, models next, new manifest last."""
    old = export_dir / MANIFEST_NAME
    if old.exists():
        old.unlink()
    for name in files:
        os.replace(staging / name, export_dir / name)
    atomic_write_json(old, manifest)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(old, 0o666 & ~umask)  # mkstemp creates 0600; the manifest ships beside world-readable models


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.export", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run folder, e.g. runs/<name>")
    p.add_argument("--calibration", choices=CALIBRATIONS, default="minmax")
    p.add_argument("--calib-size", type=int, default=512, help="training images for calibration (default 512)")
    p.add_argument("--calib-seed", type=int, default=0)
    p.add_argument("--max-drop", type=float, default=0.5, help="allowed fp32 - int8 top-1 drop in points (default 0.5)")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images (default: run config or all)")
    p.add_argument("--dynamic", action="store_true", help="dynamic int8 quantization instead of static QDQ (slower here)")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="parity bound on |logit diff| (default 1e-4)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: the run config's, then the usual places)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = ExportConfig(
        export=ExportOnnxConfig(exporter=args.exporter, opset=args.opset),
        # dynamic: uint8 weights, since ConvInteger with int8 weights ran ~10x slower than fp32 on this CPU
        quantize=QuantizeConfig(mode="dynamic" if args.dynamic else "static", calibration=args.calibration,
                                calib_size=args.calib_size, calib_seed=args.calib_seed,
                                weight_type="QUInt8" if args.dynamic else "QInt8"),
        atol=args.atol, test_subset=args.test_subset, max_drop=args.max_drop, data_dir=args.data_dir,
    )
    try:
        manifest = run_export(args.run, cfg, log=lambda s: print(s, file=sys.stderr))
    except (ToolkitError, DeployError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.run) / "export"
    for key, e in manifest.models.items():
        print(f"{out / e.file}: {e.size_bytes / 1024:.0f} KiB, top-1 {e.accuracy['top1']:.2f}%, sha256 {e.sha256[:16]}")
    print(f"{out / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
