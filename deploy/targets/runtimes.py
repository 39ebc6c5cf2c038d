"""One call to run any exported artifact: ONNX / .ort (ONNX Runtime), OpenVINO IR, ExecuTorch .pte.

Torch-free at import: numpy and the standard library only; each runtime is imported when first asked for, so a
device with only ``onnxruntime`` can import this module. The API, shared by ``deploy.runtime``, ``deploy.predict``,
``deploy.targets`` and the benchmarks:

- ``RUNTIMES``: the runtime names a manifest entry's ``runtime`` field may hold; ``EXTRAS``: the pip extra per runtime
  (None: a base dependency);
- ``missing(runtime)``: None when the runtime imports, else a one-line reason naming the extra;
- ``runtime_of(entry)``: an entry's ``runtime`` (dict or ``ModelEntry``), default ``"onnxruntime"``;
- ``open_runner(path, runtime, threads)``: load once, return ``run(x) -> logits``; ``x`` float32 (N, 3, H, W) in
  [0, 1] (normalisation is inside our models), logits float32 (N, classes). A fixed-batch artifact (e.g. the batch-1
  ``.b1.ort`` and every ``.pte``, whose input is static ``[1, 3, H, W]``) only takes that batch: the caller passes
  exactly it (``deploy.runtime.Classifier.logits`` chunks by the entry's input shape).
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable

import numpy as np

from deploy.manifest import DeployError

RUNTIMES = ("onnxruntime", "openvino", "executorch")
EXTRAS: dict[str, str | None] = {"onnxruntime": None, "openvino": "openvino", "executorch": "executorch"}
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "executorch": "executorch.runtime"}

Runner = Callable[[np.ndarray], np.ndarray]


class RuntimeUnavailable(DeployError):
    """The runtime an artifact needs is not installed (or not a known runtime); the message names the extra."""


def _install_hint(runtime: str) -> str:
    extra = EXTRAS.get(runtime)
    return f"pip install -e '.[{extra}]'" if extra else f"pip install {runtime}"


def missing(runtime: str) -> str | None:
    """None when ``runtime`` imports here, else one line saying why and how to install it."""
    if runtime not in RUNTIMES:
        return f"unknown runtime '{runtime}' (known: {', '.join(RUNTIMES)})"
    try:
        importlib.import_module(_MODULES[runtime])
    except ImportError as exc:  # includes a module set to None in sys.modules
        module = _MODULES[runtime]
        if getattr(exc, "name", None) in (module, module.split(".")[0]):
            return f"{runtime} is not installed: {_install_hint(runtime)}"
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return f"{runtime} is not installed: {_install_hint(runtime)} ({detail})"
    except Exception as exc:  # noqa: BLE001 - a broken install (e.g. a missing shared library) is also unavailable
        return f"{runtime} cannot be imported: {str(exc).splitlines()[0][:160]}; reinstall: {_install_hint(runtime)}"
    return None


def runtime_of(entry: Any) -> str:
    """The manifest entry's ``runtime`` (a dict or a ``ModelEntry``); ``"onnxruntime"`` when absent (.onnx, .ort)."""
    value = entry.get("runtime") if isinstance(entry, dict) else getattr(entry, "runtime", None)
    return str(value) if value else "onnxruntime"


def _ort(path: str, threads: int) -> Runner:
    from deploy.runtime import create_session

    session = create_session(path, threads if threads > 0 else None)  # sequential execution, intra-op = threads, inter-op 1
    name, out = session.get_inputs()[0].name, session.get_outputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([out], {name: np.ascontiguousarray(x, dtype=np.float32)})[0], dtype=np.float32)
    return run


def openvino_config(threads: int) -> dict[str, Any]:
    """OpenVINO CPU settings of every runner: ``threads`` inference threads, latency hint, and f32 inference
    precision. OpenVINO's default on CPUs with bf16 support (AVX512-BF16 / AMX) is bf16, which moved tin29's fp32
    student's logits by up to 0.056 vs ONNX Runtime; f32 keeps fp32 models exact and int8 models' float parts f32."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _openvino(path: str, threads: int) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", openvino_config(threads))
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        result = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(result[output], dtype=np.float32, copy=True)
    return run


def _executorch(path: str, threads: int) -> Runner:
    """ExecuTorch's pybindings take torch tensors, so running a .pte from Python needs torch (the C++ runtime on a
    device does not). Threads: ``_unsafe_reset_threadpool`` resizes ExecuTorch's one process-wide threadpool (used by
    the XNNPACK delegate); it is experimental API, and the last runner opened sets it for every runner."""
    import torch
    from executorch.runtime import Runtime

    try:
        from executorch.extension.pybindings import portable_lib

        if threads > 0 and portable_lib._threadpool_get_thread_count() != int(threads):
            portable_lib._unsafe_reset_threadpool(int(threads))
    except (ImportError, AttributeError):  # API moved: keep ExecuTorch's default threadpool size
        pass
    method = Runtime.get().load_program(path).load_method("forward")
    if method is None:
        raise DeployError(f"ExecuTorch program {path} has no 'forward' method")

    def run(x: np.ndarray) -> np.ndarray:
        out = method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])
        return out[0].detach().numpy().astype(np.float32, copy=True)
    return run


_OPENERS = {"onnxruntime": _ort, "openvino": _openvino, "executorch": _executorch}


def open_runner(path: str | os.PathLike, runtime: str, threads: int = 1) -> Runner:
    """Load the artifact at ``path`` once with ``runtime`` using ``threads`` intra-op threads (0: the runtime's own
    default); returns ``run(x)``
    mapping float32 (N, 3, H, W) in [0, 1] to float32 logits (N, classes). For a fixed-batch artifact N must be its
    batch. Raises ``RuntimeUnavailable`` (runtime not installed) or ``DeployError`` (cannot load), one line each."""
    reason = missing(runtime)
    if reason:
        raise RuntimeUnavailable(reason)
    path = str(path)
    if not os.path.isfile(path):
        raise DeployError(f"model file missing: {path}")
    try:
        return _OPENERS[runtime](path, int(threads))
    except DeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own types for unreadable artifacts
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DeployError(f"{runtime} cannot load {path}: {msg}") from None
