"""The machine a bench ran on: CPU model and flags, library and runtime versions, load average."""

from __future__ import annotations

import os
import platform

import numpy as np

from edgecommon.machine import cpu_model_and_flags, load_average

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8",
             "amx_bf16")


def machine_info(threads: tuple[int, ...]) -> dict:
    """CPU model, selected /proc/cpuinfo flags, library versions, usable CPUs."""
    import onnxruntime
    import torch

    model, flags = cpu_model_and_flags()
    return {"cpu_model": model, "cpu_flags": {f: f in flags for f in CPU_FLAGS}, "machine": platform.machine(),
            "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "ort_providers": onnxruntime.get_available_providers(), "torch": torch.__version__, "numpy": np.__version__,
            "threads_benchmarked": list(threads), **_runtime_versions()}


def _runtime_versions() -> dict:
    """openvino / executorch versions when installed here."""
    from importlib.metadata import PackageNotFoundError, version

    from deploy.targets.runtimes import missing

    out = {}
    for name in ("openvino", "executorch"):
        try:
            out[name] = version(name) if missing(name) is None else None
        except PackageNotFoundError:
            out[name] = None
    return out


def _loadavg() -> float | None:
    """1-minute load average (runnable threads); above the CPU count, timings include waiting for a core."""
    load = load_average()
    return None if load is None else load[0]
