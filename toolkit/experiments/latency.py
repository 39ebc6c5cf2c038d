"""Cheap single-image latency of an architecture for the sweep: ONNX Runtime fp32, batch 1, 1 thread.

The model is exported with ``torch.onnx.export`` (TorchScript exporter) to a temporary file; if export or ONNX
Runtime fails, PyTorch eager fp32 with 1 thread is timed instead and the method says so. Timing: the project's one
timer (``edgecommon.timing``), warm-up runs, then ``repeats`` timed single calls; median and 90th percentile in
milliseconds. Weights do not change the cost, so the randomly initialised architecture is timed.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from edgecommon.timing import TimingPlan, measure, ort_callable
from toolkit.models import build_model


def _figures(fn, warmup: int, repeats: int) -> dict:
    stats = measure(fn, TimingPlan(warmup=warmup, runs=repeats, duration_s=0))
    return {"median_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "repeats": stats.runs}


def _onnxruntime_latency(model: torch.nn.Module, warmup: int, repeats: int) -> dict:
    import onnxruntime as ort

    x = torch.rand(1, 3, 32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["input"], output_names=["logits"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return {"method": f"ONNX Runtime {ort.__version__} fp32, CPUExecutionProvider, batch 1, 1 thread",
            **_figures(ort_callable(session, x.numpy()), warmup, repeats)}


def _eager_latency(model: torch.nn.Module, warmup: int, repeats: int) -> dict:
    x = torch.rand(1, 3, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            figures = _figures(lambda: model(x), warmup, repeats)
    finally:
        torch.set_num_threads(threads)
    return {"method": f"PyTorch {torch.__version__} eager fp32, batch 1, 1 thread", **figures}


def measure_latency(model_name: str, warmup: int = 20, repeats: int = 100, prefer: str = "onnxruntime") -> dict:
    """{"method", "median_ms", "p90_ms", "repeats"} for one (1, 3, 32, 32) image through ``model_name``."""
    model = build_model(model_name).eval()
    if prefer == "onnxruntime":
        try:
            return _onnxruntime_latency(model, warmup, repeats)
        except Exception as exc:  # noqa: BLE001 - any export/runtime failure falls back to eager, labelled
            result = _eager_latency(model, warmup, repeats)
            result["method"] += f" (ONNX Runtime failed: {type(exc).__name__})"
            return result
    return _eager_latency(model, warmup, repeats)
