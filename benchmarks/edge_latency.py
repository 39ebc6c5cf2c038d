"""Latency measurement in the manner of ONNX Runtime's perf test and MLPerf single-stream.

A fixed, seeded input batch; ``warmup`` untimed runs; then either a fixed number of timed runs or timed runs until a
fixed duration has passed (with a floor of ``min_runs``). Each run is timed alone with ``time.perf_counter_ns``;
figures are milliseconds per batch, and throughput is images per second from the mean.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from toolkit import ToolkitError

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class TimingPlan:
    """How many runs to time: ``runs`` > 0 fixes the count; otherwise run for ``duration_s`` (at least ``min_runs``)."""

    warmup: int = 10
    runs: int = 0
    duration_s: float = 3.0
    min_runs: int = 10
    max_runs: int = 100_000

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.runs < 0 or self.min_runs < 1 or self.duration_s < 0:
            raise ToolkitError(f"bad timing plan {self}: warmup/runs >= 0, min_runs >= 1, duration >= 0")
        if self.runs == 0 and self.duration_s == 0:
            raise ToolkitError("timing plan needs --runs N > 0 or --duration S > 0")


@dataclass
class LatencyStats:
    """Milliseconds per batch over ``runs`` timed runs; ``images_per_s`` = batch * 1000 / mean_ms."""

    runs: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    images_per_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values_ms, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks (numpy's default method)."""
    arr = np.asarray(values_ms, dtype=np.float64)
    if arr.size == 0:
        raise ToolkitError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise ToolkitError(f"percentile q must be in [0, 100], got {q}")
    return float(np.percentile(arr, q))


def summarize(times_ms, batch: int) -> LatencyStats:
    """Statistics of per-batch times in ms for batch size ``batch``."""
    arr = np.asarray(times_ms, dtype=np.float64)
    if arr.size == 0:
        raise ToolkitError("no timed runs to summarize")
    p50, p90, p99 = (float(v) for v in np.percentile(arr, PERCENTILES))
    mean = float(arr.mean())
    return LatencyStats(runs=int(arr.size), mean_ms=mean, std_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
                        min_ms=float(arr.min()), p50_ms=p50, p90_ms=p90, p99_ms=p99, max_ms=float(arr.max()),
                        images_per_s=batch * 1000.0 / mean if mean > 0 else float("inf"))


def time_callable(fn: Callable[[], object], plan: TimingPlan) -> list[float]:
    """Per-call wall times in ms of ``fn()`` after ``plan.warmup`` untimed calls."""
    for _ in range(plan.warmup):
        fn()
    times: list[float] = []
    clock = time.perf_counter_ns
    if plan.runs > 0:
        for _ in range(plan.runs):
            t0 = clock()
            fn()
            times.append((clock() - t0) / 1e6)
        return times
    deadline = clock() + int(plan.duration_s * 1e9)
    while len(times) < plan.max_runs:
        t0 = clock()
        fn()
        t1 = clock()
        times.append((t1 - t0) / 1e6)
        if t1 >= deadline and len(times) >= plan.min_runs:
            break
    return times


def time_interleaved(fns: dict[str, Callable[[], object]], plan: TimingPlan, rounds: int = 5) -> dict[str, list[float]]:
    """Per-call ms for several callables, timed in ``rounds`` rounds that alternate between them.

    Each callable gets ``plan.warmup`` untimed calls first; then every round gives each callable its share of the
    plan (``runs / rounds`` calls, or ``duration_s / rounds`` seconds with at least ``min_runs / rounds`` calls), so a
    slow period of a shared CPU falls on all of them alike and their ratios stay comparable.
    """
    if rounds < 1:
        raise ToolkitError(f"rounds must be >= 1, got {rounds}")
    for fn in fns.values():
        for _ in range(plan.warmup):
            fn()
    share = TimingPlan(warmup=0, runs=-(-plan.runs // rounds) if plan.runs else 0, duration_s=plan.duration_s / rounds,
                       min_runs=max(1, -(-plan.min_runs // rounds)), max_runs=max(1, plan.max_runs // rounds))
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key] += time_callable(fn, share)
    if plan.runs:
        times = {key: t[:plan.runs] for key, t in times.items()}
    return times


def fixed_input(batch: int, seed: int = 0, shape: tuple[int, int, int] = (3, 32, 32)) -> np.ndarray:
    """A float32 (batch, C, H, W) array in [0, 1), the same for a given seed and batch on every machine."""
    rng = np.random.default_rng(seed)
    return rng.random((batch, *shape), dtype=np.float32)


# --- ONNX Runtime sessions ----------------------------------------------------------------------------------------

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


def ort_callable(session, x: np.ndarray) -> Callable[[], object]:
    """``session.run`` on ``x`` (N, C, H, W) float32, with IO names taken from the session."""
    name = session.get_inputs()[0].name
    out = [session.get_outputs()[0].name]
    feed = {name: x}
    return lambda: session.run(out, feed)


def torch_callable(model, x: np.ndarray) -> Callable[[], object]:
    """PyTorch eager fp32 ``model(x)`` under ``torch.no_grad`` (threads: set ``torch.set_num_threads`` around it)."""
    import torch

    xt = torch.from_numpy(x)
    model.eval()

    def call():
        with torch.no_grad():
            return model(xt)

    return call


def time_ort(session, x: np.ndarray, plan: TimingPlan) -> LatencyStats:
    """Latency of ``session.run`` on ``x`` (N, C, H, W) float32."""
    return summarize(time_callable(ort_callable(session, x), plan), len(x))


def time_torch(model, x: np.ndarray, threads: int, plan: TimingPlan) -> LatencyStats:
    """Latency of PyTorch eager fp32 ``model(x)`` under ``torch.no_grad`` with ``threads`` intra-op threads."""
    with torch_threads(threads):
        return summarize(time_callable(torch_callable(model, x), plan), len(x))


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
