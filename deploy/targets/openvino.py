"""OpenVINO: every base ONNX model of an export saved as OpenVINO IR, checked against ONNX Runtime, int8 kernels counted.

For each ONNX entry of ``<run>/export/manifest.json`` (``student.fp32``, ``student.int8``, ``teacher.fp32``, ...; the
derived ``.ort`` / IR / ``.pte`` entries are skipped):

1. ``ov.Core().read_model(onnx)`` then ``ov.save_model(..., compress_to_fp16=False)``: ``<key>.openvino.xml`` and
   ``<key>.openvino.bin`` beside ``manifest.json`` (the schema's plain names; the .bin is an ``extra_files`` entry);
2. compile time on CPU from the ONNX file and from the IR (informative: one compile each, wall seconds);
3. parity of OpenVINO (``runtimes.open_runner``: f32 inference precision, 1 thread) vs ONNX Runtime on the same
   source ONNX, on seeded random inputs in [0, 1] and real images (``ort_format.parity_inputs``), batches of 16:
   fp32 max |logit diff| <= 1e-3 and identical top-1; int8 top-1 agreement >= 99% on every set or, failing that,
   OpenVINO int8's top-1 agreement with the fp32 model within 2 points of ONNX Runtime int8's (``parity``); max
   |diff| reported;
4. the compiled model's runtime graph (``get_runtime_model()``; per op rt_info ``layerType`` / ``runtimePrecision``):
   convolution and fully-connected layers executing in i8/u8 vs f32, recorded as ``openvino.int8_kernels``.

Files are written in a hidden ``export/.openvino-stage-*`` folder and moved beside the manifest with ``os.replace``
(.bin before .xml) only when every model passed; the manifest is rewritten atomically and read back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.manifest import MANIFEST_NAME, DeployError, read_manifest
from deploy.targets.ort_format import parity_inputs, record_entries
from deploy.targets.runtimes import RuntimeUnavailable, missing, open_runner, openvino_config
from edgecommon.hashing import sha256_file

SUFFIX = ".openvino"
FP32_ATOL = 1e-3
INT8_MIN_AGREEMENT = 0.99
FIDELITY_SLACK = 0.02
N_IMAGES = 256
KERNEL_LAYERS = {"Convolution": "convolution", "FullyConnected": "fully_connected"}


def source_keys(manifest: dict[str, Any]) -> list[str]:
    """Manifest keys of the plain ONNX models (format ``onnx``, file ``*.onnx``), in manifest order."""
    return [k for k, e in manifest["models"].items()
            if e.get("format", "onnx") == "onnx" and str(e.get("file", "")).endswith(".onnx")]


def int8_kernels(compiled: Any) -> dict[str, dict[str, int]]:
    """Count of convolution / fully-connected layers by execution precision in a compiled model's runtime graph:
    ``{"convolution": {"int8": n, "fp32": m, "other": k}, "fully_connected": {...}}`` (int8 = i8 or u8)."""
    counts: dict[str, Counter] = {name: Counter() for name in KERNEL_LAYERS.values()}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else ""
        if layer in KERNEL_LAYERS:
            prec = info["runtimePrecision"].astype(str).lower() if "runtimePrecision" in info else ""
            counts[KERNEL_LAYERS[layer]]["int8" if prec in ("i8", "u8") else "fp32" if prec == "f32" else "other"] += 1
    return {name: {k: int(c.get(k, 0)) for k in ("int8", "fp32", "other")} for name, c in counts.items()}


def _batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([run(x[i:i + batch]) for i in range(0, len(x), batch)])


def parity(candidate: Callable, reference: Callable, sets: dict[str, np.ndarray], precision: str, against: str,
           fp32: Callable | None = None) -> dict[str, Any]:
    """OpenVINO (``candidate``) vs ONNX Runtime (``reference``, same source file) logits per input set.

    fp32: max |diff| <= FP32_ATOL and identical top-1. int8: top-1 agreement >= INT8_MIN_AGREEMENT on every set, or,
    when ``fp32`` (ONNX Runtime on the fp32 model of the same role) is given, OpenVINO's top-1 agreement with fp32 on
    all inputs pooled at most FIDELITY_SLACK below ONNX Runtime int8's: two int8 kernels round differently, and on a
    model with small logit margins that flips top-1 on a few percent of inputs without either being less faithful."""
    report: dict[str, Any] = {"against": f"{against} (ONNX Runtime CPU)", "sets": {}}
    worst, mism, agree_min, pooled = 0.0, 0, 1.0, {"ov": 0, "ort": 0, "n": 0}
    for name, x in sets.items():
        got, want = _batched(candidate, x), _batched(reference, x)
        d = float(np.abs(got - want).max())
        m = int((got.argmax(1) != want.argmax(1)).sum())
        agree = 1.0 - m / len(x)
        report["sets"][name] = {"n": len(x), "max_abs_diff": d, "top1_mismatches": m, "top1_agreement": round(agree, 4)}
        if fp32 is not None and precision != "fp32":
            top = _batched(fp32, x).argmax(1)
            ov, ort = int((got.argmax(1) == top).sum()), int((want.argmax(1) == top).sum())
            report["sets"][name].update(openvino_fp32_agreement=round(ov / len(x), 4),
                                        onnxruntime_fp32_agreement=round(ort / len(x), 4))
            pooled["ov"] += ov
            pooled["ort"] += ort
            pooled["n"] += len(x)
        worst, mism, agree_min = max(worst, d), mism + m, min(agree_min, agree)
    if precision == "fp32":
        report["rule"] = f"max |diff| <= {FP32_ATOL} and identical top-1"
        passed = worst <= FP32_ATOL and mism == 0
    else:
        report["rule"] = (f"top-1 agreement >= {INT8_MIN_AGREEMENT:.0%} on every set, or top-1 agreement with the fp32 "
                          f"model (pooled) at most {FIDELITY_SLACK:.0%} below ONNX Runtime int8's")
        passed = agree_min >= INT8_MIN_AGREEMENT
        if pooled["n"]:
            ov, ort = pooled["ov"] / pooled["n"], pooled["ort"] / pooled["n"]
            report["fp32_agreement"] = {"openvino": round(ov, 4), "onnxruntime": round(ort, 4), "n": pooled["n"]}
            passed = passed or ov >= ort - FIDELITY_SLACK
    report.update(max_abs_diff=worst, top1_mismatches=mism, min_top1_agreement=round(agree_min, 4), passed=bool(passed))
    return report


def _compile_seconds(core: Any, path: Path) -> tuple[float, Any]:
    t = time.perf_counter()
    compiled = core.compile_model(str(path), "CPU", openvino_config(1))
    return time.perf_counter() - t, compiled


def build(run_path: str | os.PathLike, images: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert, check and record every base ONNX model; returns the top-level ``openvino`` block written."""
    reason = missing("openvino")
    if reason:
        raise RuntimeUnavailable(reason)
    import openvino as ov

    export_dir = Path(run_path) / "export"
    mpath = export_dir / MANIFEST_NAME
    if not mpath.is_file():
        raise DeployError(f"{mpath} missing: export the run first (make export RUN=...)")
    read_manifest(mpath)
    manifest = json.loads(mpath.read_text())
    keys = source_keys(manifest)
    if not keys:
        raise DeployError(f"{mpath}: no ONNX models to convert")
    stage = Path(tempfile.mkdtemp(prefix=".openvino-stage-", dir=export_dir))
    try:
        core, entries, failures = ov.Core(), {}, []
        for key in keys:
            base = manifest["models"][key]
            src = export_dir / base["file"]
            name = f"{key}{SUFFIX}"
            xml, binf = stage / f"{name}.xml", stage / f"{name}.bin"
            ov.save_model(core.read_model(str(src)), str(xml), compress_to_fp16=False)
            t_onnx, _ = _compile_seconds(core, src)
            t_ir, compiled = _compile_seconds(core, xml)
            kernels = int8_kernels(compiled)
            del compiled
            sets = parity_inputs(manifest, base, images, n_images=N_IMAGES)
            fp32_key = f"{base['role']}.fp32"
            fp32 = (open_runner(export_dir / manifest["models"][fp32_key]["file"], "onnxruntime", 1)
                    if base["precision"] != "fp32" and fp32_key in manifest["models"] else None)
            report = parity(open_runner(xml, "openvino", 1), open_runner(src, "onnxruntime", 1), sets,
                            base["precision"], base["file"], fp32)
            if not report["passed"]:
                failures.append(f"{name}: max |diff| {report['max_abs_diff']:.3g}, "
                                f"top-1 agreement {report['min_top1_agreement']:.2%}")
            e = dict(base)
            e.update(file=xml.name, sha256=sha256_file(xml), size_bytes=xml.stat().st_size + binf.stat().st_size,
                     runtime="openvino", format="openvino-ir", extra_files={binf.name: sha256_file(binf)},
                     exporter=f"openvino {ov.__version__}: read_model({base['file']}) + save_model(compress_to_fp16=False)",
                     parity=report,
                     openvino={"source": key, "xml_size_bytes": xml.stat().st_size, "bin": binf.name,
                               "bin_size_bytes": binf.stat().st_size, "version": ov.__version__,
                               "config": openvino_config(1),
                               "compile_seconds": {"onnx": round(t_onnx, 4), "ir": round(t_ir, 4)},
                               "ir_compiles_faster": bool(t_ir < t_onnx), "int8_kernels": kernels})
            e.pop("ort_format", None)
            entries[name] = e
            conv = kernels["convolution"]
            log(f"{name}: {e['size_bytes']} bytes, parity max |diff| {report['max_abs_diff']:.3g}, top-1 agreement "
                f"{report['min_top1_agreement']:.2%} ({'ok' if report['passed'] else 'FAILED'}), conv int8/fp32 "
                f"{conv['int8']}/{conv['fp32']}, compile onnx {t_onnx:.3f}s ir {t_ir:.3f}s")
        if failures:
            raise DeployError("OpenVINO parity failed: " + "; ".join(failures))
        for name in entries:  # publish: weights first, so an .xml never points at a missing .bin
            os.replace(stage / f"{name}.bin", export_dir / f"{name}.bin")
            os.replace(stage / f"{name}.xml", export_dir / f"{name}.xml")
        block = {"models": list(entries), "version": ov.__version__, "config": openvino_config(1),
                 "files": "beside manifest.json: <key>.openvino.xml + <key>.openvino.bin"}
        record_entries(mpath, manifest, entries, "openvino", block)
        return block
    finally:
        shutil.rmtree(stage, ignore_errors=True)
