"""ORT format: convert the exported students to .ort (ONNX Runtime Mobile), dynamic and batch-1 fixed shape.

For each of ``student.fp32`` and ``student.int8`` in ``<run>/export/manifest.json``:

1. a batch-1 fixed-shape copy of the source ONNX (``onnxruntime.tools.onnx_model_utils.make_dim_param_fixed`` on
   the input's symbolic batch dimension, then ``fix_output_shapes``), the variant for the NNAPI / CoreML providers;
2. both the dynamic and the fixed model converted with ``onnxruntime.tools.convert_onnx_models_to_ort`` (style
   ``Fixed``, level ``all``), which also writes the reduced-operator configuration (``required_operators.config``)
   for a minimal ONNX Runtime build;
3. the mobile usability check (``onnxruntime.tools.mobile_helpers.usability_checker``, the code behind
   ``check_onnx_model_mobile_usability``) on each ONNX model after basic optimization, as the tool does, read from its
   ``PartitioningInfo`` objects (not its log): NNAPI, CoreML NeuralNetwork and CoreML MLProgram supported nodes /
   total, partitions and suitability;
4. parity of every .ort against its source ONNX on seeded random inputs in [0, 1] and real images (the run's image
   folder through the manifest's preprocessing): fp32 max |logit diff| <= 1e-4 and identical top-1; int8 the same
   tolerance against the source int8 model.

Files go to ``<run>/export/ort/`` (staged in a temporary folder beside it, then ``os.replace``), and manifest entries
``student.fp32.ort``, ``student.fp32.b1.ort``, ``student.int8.ort``, ``student.int8.b1.ort`` are added with sha256,
size, parity, ``mobile_usability`` and ``ort_format`` (source key, path under ``ort/``, fixed batch); a top-level
``ort_format`` block names the reduced-operator config with its sha256. The manifest is rewritten atomically and read
back through ``deploy.manifest.read_manifest``. The schema wants a model's ``file`` to be a plain name beside the
manifest, so each .ort is also hard-linked (copied where links fail) beside ``manifest.json`` under the same name.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from deploy.manifest import MANIFEST_NAME, DeployError, read_manifest
from deploy.runtime import create_session, load_image, to_input
from edgecommon.hashing import sha256_file
from edgecommon.images import IMAGE_SUFFIXES
from toolkit import ToolkitError
from toolkit.io import atomic_write_json
from toolkit.runs import resolve_run

STUDENTS = ("student.fp32", "student.int8")
ORT_DIR = "ort"
CONFIG_NAME = "required_operators.config"
ATOL = {"fp32": 1e-4, "int8": 1e-4}
"""Parity tolerance per precision: max |logit diff| of the .ort vs its source ONNX (and identical top-1)."""
EPS = {"nnapi": ("NNAPI", None), "coreml_neuralnetwork": ("CoreML NeuralNetwork", "coreml_supported_neuralnetwork_ops.md"),
       "coreml_mlprogram": ("CoreML MLProgram", "coreml_supported_mlprogram_ops.md")}
MANIFEST_FILE_NOTE = (
    "deploy.manifest requires a model's file to be a plain name beside the manifest, so the .ort files are written to "
    "export/ort/ and copied (hard-linked when possible) beside manifest.json under the same names")


def record_entries(mpath: Path, manifest: dict[str, Any], entries: dict[str, dict[str, Any]], block_key: str,
                   block: dict[str, Any]) -> None:
    """Add a target's ``entries`` and its top-level ``block_key`` block to the manifest, rewrite it atomically and read
    it back through the schema check (every target ends this way)."""
    manifest["models"].update(entries)
    manifest[block_key] = block
    atomic_write_json(mpath, manifest)
    read_manifest(mpath)


def fix_batch(src: Path, dst: Path, batch: int = 1) -> list[int]:
    """Write ``src`` with its input's symbolic batch dimension fixed to ``batch``; returns the fixed input shape."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed, make_input_shape_fixed

    model = onnx.load(str(src))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    first = dims[0]
    if first.HasField("dim_param") and first.dim_param:
        make_dim_param_fixed(model.graph, first.dim_param, batch)
    else:
        make_input_shape_fixed(model.graph, inp.name, [batch] + [d.dim_value for d in dims[1:]])
    fix_output_shapes(model)
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise DeployError(f"{src.name}: input shape {shape} still has symbolic dimensions after fixing the batch")
    onnx.save(model, str(dst))
    return shape


def convert_to_ort(onnx_dir: Path, out_dir: Path) -> None:
    """``onnxruntime.tools.convert_onnx_models_to_ort`` on every .onnx in ``onnx_dir`` (style Fixed): .ort files and
    ``required_operators.config`` in ``out_dir``."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    convert_onnx_models_to_ort(pathlib.Path(onnx_dir), output_dir=pathlib.Path(out_dir),
                               optimization_styles=[OptimizationStyle.Fixed])


def _partition(info: Any) -> dict[str, Any]:
    return {"supported_nodes": int(info.num_supported_nodes), "nodes": int(info.num_nodes),
            "coverage": round(info.num_supported_nodes / info.num_nodes, 4) if info.num_nodes else 0.0,
            "partitions": int(info.num_partitions), "suitability": info.suitability().name,
            "unsupported_ops": sorted(info.unsupported_ops),
            "nodes_unsupported_due_to_op": int(info.nodes_unsupported_due_to_op),
            "nodes_unsupported_due_to_dynamic_input": int(info.nodes_unsupported_due_to_dynamic_input)}


def mobile_usability(onnx_path: Path) -> dict[str, Any]:
    """The mobile usability checker's figures for one ONNX model, as the model stands (fixed input sizes required,
    i.e. what the provider would actually take): per provider supported nodes / total, partitions, suitability."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        basic = Path(tmp) / onnx_path.name
        optimize_model(onnx_path, basic, use_external_initializers=True)  # as check_onnx_model_mobile_usability does
        wrapper = ModelProtoWithShapeInfo(basic)
        model = wrapper.model_with_shape_info
        dynamic_inputs, num_dynamic_values = uc.check_shapes(model.graph)
        out: dict[str, Any] = {"tool": "onnxruntime.tools.check_onnx_model_mobile_usability (usability_checker)",
                               "optimized": "basic", "dynamic_inputs": [i.name for i in (dynamic_inputs or [])],
                               "dynamic_values": int(num_dynamic_values or 0)}
        for key, (_, config) in EPS.items():
            info = (uc.check_nnapi_partitions(model, True) if config is None
                    else uc.check_coreml_partitions(model, True, config))
            out[key] = _partition(info)
        del wrapper
    return out


def _image_paths(manifest: dict[str, Any], images: str | None, n: int) -> list[Path]:
    root = Path(images) if images else None
    if root is None:
        src = (manifest.get("data") or {}).get("source")
        if src and Path(src).is_dir():
            root = Path(src)
            val = root.parent / "val"
            if val.is_dir():
                root = val
    if root is None or not root.is_dir():
        return []
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) > n:
        step = len(files) / n
        files = [files[int(i * step)] for i in range(n)]
    return files


def parity_inputs(manifest: dict[str, Any], entry: dict[str, Any], images: str | None = None, n_random: int = 32,
                  n_images: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs in [0, 1] and, when the run's image folder is here, real images through the entry's
    preprocessing (normalization is in the graph)."""
    _, c, h, w = entry["input"]["shape"]
    sets = {"random": np.random.default_rng(seed).random((n_random, int(c), int(h), int(w)), dtype=np.float32)}
    paths = _image_paths(manifest, images, n_images)
    if paths:
        scale = entry["preprocessing"].get("scale", 1.0 / 255.0)
        sets["images"] = to_input(np.stack([load_image(p, (int(h), int(w))) for p in paths]), scale)
    return sets


def _run(session: Any, x: np.ndarray, batch: int) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def check_parity(candidate: Path, source: Path, sets: dict[str, np.ndarray], atol: float,
                 batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """Max |logit diff| and top-1 mismatches of ``candidate`` (.ort) vs ``source`` (.onnx), both run by ONNX Runtime
    CPU; ``passed``: max diff <= atol and no top-1 mismatch."""
    cand, ref = create_session(candidate, threads=1), create_session(source, threads=1)
    report: dict[str, Any] = {"against": source.name, "atol": atol, "sets": {}}
    worst, mismatches = 0.0, 0
    for name, x in sets.items():
        want = _run(ref, x, 64)
        d, m = 0.0, 0
        for b in batch_sizes:
            got = _run(cand, x, b)
            d = max(d, float(np.abs(got - want).max()))
            m = max(m, int((got.argmax(1) != want.argmax(1)).sum()))
        report["sets"][name] = {"n": len(x), "max_abs_diff": d, "top1_mismatches": m, "batch_sizes": list(batch_sizes)}
        worst, mismatches = max(worst, d), max(mismatches, m)
    report.update(max_abs_diff=worst, top1_mismatches=mismatches, passed=bool(worst <= atol and mismatches == 0))
    return report


def build(run_path: str | os.PathLike, images: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert, check and record; returns the ``ort_format`` block written to the manifest."""
    export_dir = Path(run_path) / "export"
    mpath = export_dir / MANIFEST_NAME
    if not mpath.is_file():
        raise DeployError(f"{mpath} missing: export the run first (make export RUN=...)")
    read_manifest(mpath)
    manifest = json.loads(mpath.read_text())
    students = [k for k in STUDENTS if k in manifest["models"]]
    if not students:
        raise DeployError(f"{mpath}: no student.fp32 / student.int8 to convert")
    final = export_dir / ORT_DIR
    stage = Path(tempfile.mkdtemp(prefix=".ort-stage-", dir=export_dir))
    try:
        onnx_dir, out_dir = stage / "onnx", stage / ORT_DIR
        onnx_dir.mkdir()
        variants: dict[str, dict[str, Any]] = {}
        for key in students:
            entry = manifest["models"][key]
            src = export_dir / entry["file"]
            shutil.copy2(src, onnx_dir / f"{key}.onnx")
            shape = fix_batch(src, onnx_dir / f"{key}.b1.onnx")
            variants[f"{key}.ort"] = {"base": key, "source": src, "onnx": onnx_dir / f"{key}.onnx", "fixed": None}
            variants[f"{key}.b1.ort"] = {"base": key, "source": src, "onnx": onnx_dir / f"{key}.b1.onnx", "fixed": shape}
        log(f"converting {len(variants)} models to ORT format")
        convert_to_ort(onnx_dir, out_dir)
        config = out_dir / CONFIG_NAME
        if not config.is_file():
            raise DeployError(f"convert_onnx_models_to_ort wrote no {CONFIG_NAME}")
        entries, failures = {}, []
        for name, v in variants.items():
            ort_file = out_dir / name
            if not ort_file.is_file():
                raise DeployError(f"convert_onnx_models_to_ort wrote no {name}")
            base = manifest["models"][v["base"]]
            sets = parity_inputs(manifest, base, images)
            batch_sizes = (1,) if v["fixed"] else (1, 16)
            parity = check_parity(ort_file, v["source"], sets, ATOL[base["precision"]], batch_sizes)
            if not parity["passed"]:
                failures.append(f"{name}: max |diff| {parity['max_abs_diff']:.3g}, {parity['top1_mismatches']} top-1 mismatches")
            usability = mobile_usability(v["onnx"])
            e = dict(base)
            e.update(file=name, sha256=sha256_file(ort_file), size_bytes=ort_file.stat().st_size, runtime="onnxruntime",
                     format="ort",
                     exporter=f"onnxruntime.tools.convert_onnx_models_to_ort (style Fixed, level all) from {base['file']}",
                     parity=parity, mobile_usability=usability,
                     ort_format={"source": v["base"], "path": f"{ORT_DIR}/{name}", "fixed_batch": bool(v["fixed"]),
                                 "reduced_operator_config": f"{ORT_DIR}/{CONFIG_NAME}"})
            if v["fixed"]:
                e["input"] = {**base["input"], "shape": v["fixed"]}
                e["output"] = {**base["output"], "shape": [v["fixed"][0]] + list(base["output"]["shape"][1:])}
            entries[name] = e
            nn = usability["nnapi"]
            log(f"{name}: {e['size_bytes']} bytes, parity max |diff| {parity['max_abs_diff']:.3g} "
                f"({'ok' if parity['passed'] else 'FAILED'}), NNAPI {nn['supported_nodes']}/{nn['nodes']} nodes in "
                f"{nn['partitions']} partition(s)")
        if failures:
            raise DeployError("ORT parity failed: " + "; ".join(failures))
        shutil.rmtree(onnx_dir)
        # publish: export/ort/ by os.replace, then the .ort files beside the manifest (plain names, as the schema asks)
        old = None
        if final.exists():
            old = stage / "old"
            os.replace(final, old)
        os.replace(out_dir, final)
        for name in entries:
            tmp = export_dir / f".{name}.tmp"
            if tmp.exists():
                tmp.unlink()
            try:
                os.link(final / name, tmp)
            except OSError:
                shutil.copy2(final / name, tmp)
            os.replace(tmp, export_dir / name)
        block = {"dir": ORT_DIR, "models": list(entries), "optimization_style": "Fixed", "optimization_level": "all",
                 "reduced_operator_config": {"file": f"{ORT_DIR}/{CONFIG_NAME}",
                                             "sha256": sha256_file(final / CONFIG_NAME),
                                             "lines": [ln for ln in (final / CONFIG_NAME).read_text().splitlines()
                                                       if ln and not ln.startswith("#")]},
                 "note": MANIFEST_FILE_NOTE}
        record_entries(mpath, manifest, entries, "ort_format", block)
        return block
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.targets.ort_format", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder with an export/ (or runs/<name>)")
    p.add_argument("--images", default=None, help="image folder for parity (default: the manifest's data source)")
    args = p.parse_args(argv)
    try:
        build(str(resolve_run(args.run)), args.images, log=lambda s: print(s, file=sys.stderr))
    except ToolkitError as exc:  # DeployError is one: bad input or a failed check, one line, exit 2 (as every command)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
