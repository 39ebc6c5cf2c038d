"""What bench-edge and tune-ort time, on top of the one timer (``edgecommon.timing``): ONNX Runtime CPU sessions with
explicit session options, and PyTorch eager callables with a set number of threads.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from toolkit import ToolkitError


@dataclass(frozen=True)
class OrtSettings:
    """ONNX Runtime CPU session options used for timing.

    ``graph_optimization``: disable | basic | extended | all (ORT_ENABLE_ALL includes layout/NCHWc transforms).
    ``execution_mode``: sequential | parallel. ``allow_spinning``: whether idle intra-op threads spin (latency vs
    CPU use). ``inter_op_threads``: 0 lets ORT choose (it only matters in parallel mode).
    """

    graph_optimization: str = "all"
    execution_mode: str = "sequential"
    inter_op_threads: int = 1
    allow_spinning: bool = True
    enable_mem_pattern: bool = True
    enable_cpu_mem_arena: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def ort_session(path: str, intra_op_threads: int, settings: OrtSettings | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU provider for ``path`` with ``settings``."""
    import onnxruntime as ort

    s = settings or OrtSettings()
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    modes = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}
    if s.graph_optimization not in levels or s.execution_mode not in modes:
        raise ToolkitError(f"bad ORT settings {s}: graph_optimization in {list(levels)}, execution_mode in {list(modes)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[s.graph_optimization]
    opts.execution_mode = modes[s.execution_mode]
    opts.intra_op_num_threads = int(intra_op_threads)
    opts.inter_op_num_threads = int(s.inter_op_threads)
    opts.enable_mem_pattern = s.enable_mem_pattern
    opts.enable_cpu_mem_arena = s.enable_cpu_mem_arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if s.allow_spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if s.allow_spinning else "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several exception types for unreadable models
        raise ToolkitError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}") from None


def torch_callable(model, x: np.ndarray) -> Callable[[], object]:
    """PyTorch eager fp32 ``model(x)`` under ``torch.no_grad`` (threads: set ``torch.set_num_threads`` around it)."""
    import torch

    xt = torch.from_numpy(x)
    model.eval()

    def call():
        with torch.no_grad():
            return model(xt)

    return call


@contextlib.contextmanager
def torch_threads(threads: int):
    """Set ``torch.set_num_threads(threads)`` inside the block, restoring the previous value after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
