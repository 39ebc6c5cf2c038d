"""ExecuTorch: the run's PyTorch student (and teacher) as XNNPACK-delegated .pte programs, fp32 and int8.

For each role (``student``; ``teacher`` unless ``teacher=False``) with a ``<role>.fp32`` entry in the manifest, the
checkpoint named by ``summary.json`` (``toolkit.models.checkpoint.load_model``, as ``benchmarks.bench_edge``) is
lowered with a static batch-1 input ``[1, 3, H, W]`` (H, W: the manifest's input size):

- fp32: ``torch.export.export`` -> ``executorch.exir.to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``
  -> ``.to_executorch()``;
- int8: PT2E with torchao's ``prepare_pt2e`` / ``convert_pt2e`` and ExecuTorch's ``XNNPACKQuantizer``
  (``get_symmetric_quantization_config(is_per_channel=True)``: int8 per-channel weights, int8 activations),
  calibrated on ``N_CALIB`` seeded training images of the run (the export's calibration source,
  ``deploy.export_data.load_run_data``), then lowered the same way.

Recorded per program: nodes delegated to XNNPACK vs left to ExecuTorch's portable kernels
(``executorch.devtools.backend_debug.get_delegation_info``); parity on ``N_TEST`` test images of the run (evenly spaced):
fp32 vs PyTorch eager, max |logit diff| <= 1e-3 and identical top-1; int8 vs the fp32 .pte, top-1 agreement and
accuracy drop, which must be <= ``INT8_MAX_DROP`` points. Files ``<role>.<precision>.pte`` beside ``manifest.json``
(staged, then ``os.replace``), entries of the same key with runtime ``executorch`` / format ``pte``; the manifest is
rewritten atomically and read back. Needs torch, torchao and the ``executorch`` extra.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deploy.manifest import MANIFEST_NAME, DeployError, read_manifest
from deploy.targets.ort_format import record_entries
from deploy.targets.runtimes import RuntimeUnavailable, missing, open_runner
from edgecommon.hashing import sha256_file

N_CALIB = 256
N_TEST = 256
FP32_ATOL = 1e-3
INT8_MAX_DROP = 2.0
"""Largest top-1 drop (percentage points) of the int8 .pte vs the fp32 .pte on the N_TEST test images."""
QUANTIZER = "executorch XNNPACKQuantizer, get_symmetric_quantization_config(is_per_channel=True), torchao PT2E"


def _lower(exported: Any) -> tuple[bytes, dict[str, Any]]:
    """An ExportedProgram lowered to XNNPACK: the .pte bytes and the delegation counts."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.backend_debug import get_delegation_info
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    info = get_delegation_info(edge.exported_program().graph_module)
    left = {op: int(b.non_delegated) for op, b in info.delegation_by_operator.items() if int(b.non_delegated)}
    delegation = {"backend": "XnnpackBackend", "delegated_nodes": int(info.num_delegated_nodes),
                  "non_delegated_nodes": int(info.num_non_delegated_nodes),
                  "delegated_subgraphs": int(info.num_delegated_subgraphs), "non_delegated_ops": left}
    return edge.to_executorch().buffer, delegation


def fp32_program(model: Any, shape: tuple[int, ...]) -> tuple[bytes, dict[str, Any]]:
    """``model`` (eval, float input in [0, 1] of ``shape``) lowered to an XNNPACK fp32 .pte."""
    import torch

    return _lower(torch.export.export(model, (torch.zeros(shape),)))


def int8_program(model: Any, shape: tuple[int, ...], calib: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """``model`` quantized by PT2E with the XNNPACK quantizer, calibrated on ``calib`` float32 (N, 3, H, W) in
    [0, 1] one image at a time (the static batch-1 graph), then lowered to an XNNPACK .pte."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = (torch.zeros(shape),)
    graph = torch.export.export(model, example).module()
    prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i:i + 1]))
    converted = convert_pt2e(prepared)
    return _lower(torch.export.export(converted, example))


def _per_image(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.concatenate([run(x[i:i + 1]) for i in range(len(x))])


def run_data(run_root: Path, n_calib: int = N_CALIB, n_test: int = N_TEST, seed: int = 0) -> dict[str, np.ndarray]:
    """``calib`` (``n_calib`` seeded training images) and ``test`` / ``labels`` (``n_test`` test images evenly spaced
    over the test split, which may be sorted by class) of the run, float32 NCHW in [0, 1], from the run's own data
    settings (``deploy.export_data.load_run_data``)."""
    from deploy.export_data import load_run_data, read_run_config
    from toolkit.runs import open_run

    data = load_run_data(read_run_config(open_run(run_root)))
    idx = np.sort(np.random.default_rng(seed).choice(len(data.train), min(n_calib, len(data.train)), replace=False))
    test = np.unique(np.linspace(0, len(data.test) - 1, min(n_test, len(data.test))).round().astype(np.int64))
    return {"calib": data.train.images.numpy()[idx].astype(np.float32) / 255,
            "test": data.test.images.numpy()[test].astype(np.float32) / 255,
            "labels": data.test.labels.numpy()[test].astype(np.int64)}


def build(run_path: str | os.PathLike, data: dict[str, np.ndarray] | None = None, teacher: bool = True,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Lower, check and record; ``data``: ``run_data``'s dict (default: read from the run). Returns the top-level
    ``executorch`` block written to the manifest."""
    reason = missing("executorch")
    if reason:
        raise RuntimeUnavailable(reason)
    import executorch.version
    import torch

    from toolkit.models.checkpoint import load_model

    root = Path(run_path)
    export_dir = root / "export"
    mpath = export_dir / MANIFEST_NAME
    if not mpath.is_file():
        raise DeployError(f"{mpath} missing: export the run first (make export RUN=...)")
    read_manifest(mpath)
    manifest = json.loads(mpath.read_text())
    summary_path = root / "summary.json"
    if not summary_path.is_file():
        raise DeployError(f"{summary_path} missing: ExecuTorch programs are built from the run's checkpoints")
    summary = json.loads(summary_path.read_text())
    roles = [r for r in (("student", "teacher") if teacher else ("student",)) if f"{r}.fp32" in manifest["models"]]
    if not roles:
        raise DeployError(f"{mpath}: no student.fp32 entry to take the input size and preprocessing from")
    data = data if data is not None else run_data(root)
    stage = Path(tempfile.mkdtemp(prefix=".executorch-stage-", dir=export_dir))
    try:
        entries, failures = {}, []
        for role in roles:
            base = manifest["models"][f"{role}.fp32"]
            name, ckpt = summary.get(role, {}).get("name"), root / summary.get(role, {}).get("checkpoint", f"{role}.pt")
            if not name or not ckpt.is_file():
                raise DeployError(f"{role}: no checkpoint ({ckpt}) or name in {summary_path}")
            model = load_model(name, ckpt, num_classes=len(manifest["classes"])).eval()
            _, c, h, w = base["input"]["shape"]
            shape = (1, int(c), int(h), int(w))
            with torch.no_grad():
                eager = model(torch.from_numpy(data["test"])).numpy()
            outs: dict[str, np.ndarray] = {}
            for precision in ("fp32", "int8"):
                key = f"{role}.{precision}.pte"
                t = time.perf_counter()
                buf, delegation = (fp32_program(model, shape) if precision == "fp32"
                                   else int8_program(model, shape, data["calib"]))
                seconds = time.perf_counter() - t
                (stage / key).write_bytes(buf)
                got = outs[precision] = _per_image(open_runner(stage / key, "executorch", 1), data["test"])
                acc = float((got.argmax(1) == data["labels"]).mean() * 100) if len(got) else 0.0
                if precision == "fp32":
                    d = float(np.abs(got - eager).max())
                    m = int((got.argmax(1) != eager.argmax(1)).sum())
                    parity = {"against": f"PyTorch eager ({ckpt.name})", "n": len(got), "max_abs_diff": d,
                              "top1_mismatches": m, "rule": f"max |diff| <= {FP32_ATOL} and identical top-1",
                              "passed": bool(d <= FP32_ATOL and m == 0)}
                else:
                    ref = outs["fp32"]
                    acc32 = float((ref.argmax(1) == data["labels"]).mean() * 100)
                    parity = {"against": f"{role}.fp32.pte", "n": len(got),
                              "max_abs_diff": float(np.abs(got - ref).max()),
                              "top1_agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4),
                              "top1": acc, "fp32_top1": acc32, "drop": round(acc32 - acc, 3),
                              "rule": f"top-1 drop vs the fp32 .pte <= {INT8_MAX_DROP} points",
                              "passed": bool(acc32 - acc <= INT8_MAX_DROP)}
                if not parity["passed"]:
                    failures.append(f"{key}: " + (f"max |diff| {parity['max_abs_diff']:.3g}, {parity['top1_mismatches']}"
                                                  " top-1 mismatches" if precision == "fp32"
                                                  else f"top-1 drop {parity['drop']:.2f} points"))
                e = dict(base)
                for drop in ("ort_format", "openvino", "extra_files", "quantization", "parity"):
                    e.pop(drop, None)
                e.update(file=key, sha256=sha256_file(stage / key), size_bytes=len(buf), precision=precision,
                         runtime="executorch", format="pte", opset=base.get("opset", 0),
                         input={**base["input"], "shape": list(shape)},
                         output={**base["output"], "shape": [1] + list(base["output"]["shape"][1:])},
                         source_checkpoint={"path": str(ckpt), "sha256": sha256_file(ckpt)},
                         accuracy={"top1": acc, "n": len(got), "split": "test (evenly spaced)", "runtime": "executorch"},
                         exporter=f"executorch {executorch.version.__version__}: torch.export -> "
                                  "to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch",
                         parity=parity, executorch={"delegation": delegation, "lower_seconds": round(seconds, 1),
                                                    "static_batch": 1})
                if precision == "int8":
                    e["quantization"] = {"scheme": QUANTIZER, "calibration_images": len(data["calib"])}
                entries[key] = e
                log(f"{key}: {len(buf)} bytes, {delegation['delegated_nodes']} nodes delegated to XNNPACK "
                    f"({delegation['non_delegated_nodes']} not), top-1 {acc:.1f}% on {len(got)} test images, parity "
                    f"{'ok' if parity['passed'] else 'FAILED'}")
        if failures:
            raise DeployError("ExecuTorch parity failed: " + "; ".join(failures))
        for key in entries:
            os.replace(stage / key, export_dir / key)
        block = {"models": list(entries), "version": executorch.version.__version__, "backend": "XNNPACK",
                 "quantizer": QUANTIZER, "static_input": "batch 1", "test_images": len(data["test"])}
        record_entries(mpath, manifest, entries, "executorch", block)
        return block
    finally:
        shutil.rmtree(stage, ignore_errors=True)
