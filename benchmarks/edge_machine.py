"""The machine a bench ran on: CPU model and flags, library and runtime versions, load average."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8",
             "amx_bf16")


def machine_info(threads: tuple[int, ...]) -> dict:
    """CPU model, selected /proc/cpuinfo flags, library versions, usable CPUs."""
    import onnxruntime
    import torch

    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu_model": model or platform.processor() or "unknown", "cpu_flags": {f: f in flags for f in CPU_FLAGS}, "machine": platform.machine(),
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
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
