"""The one latency timer, in the manner of ONNX Runtime's perf test and MLPerf single-stream.

A fixed, seeded input; ``warmup`` untimed calls; then either a fixed number of timed calls or timed calls until a
fixed duration has passed (with a floor of ``min_runs``). Each call is timed alone with ``time.perf_counter_ns``.
Several candidates can be timed in rounds that alternate between them, so a busy spell of a shared CPU falls on all
alike. Figures are milliseconds per call (per batch): mean, std, min, p50/p90/p99 (numpy's linear percentiles), max,
and images per second from the mean.

Standard library and numpy only: ``benchmarks.bench_edge``, ``benchmarks.tune_ort``, the sweep's latency
(``toolkit.experiments.latency``), ``deploy.latency`` and the aarch64 guest all time with it. What is timed is a
plain callable; :func:`ort_callable` wraps an ONNX Runtime session without importing onnxruntime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from edgecommon import ToolkitError

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class TimingPlan:
    """How many calls to time: ``runs`` > 0 fixes the count; otherwise time for ``duration_s`` (at least
    ``min_runs`` calls, at most ``max_runs``). ``warmup`` untimed calls come first."""

    warmup: int = 10
    runs: int = 0
    duration_s: float = 3.0
    min_runs: int = 10
    max_runs: int = 100_000

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.runs < 0 or self.min_runs < 1 or self.duration_s < 0:
            raise ToolkitError(f"bad timing plan {self}: warmup/runs >= 0, min_runs >= 1, duration >= 0")
        if self.runs == 0 and self.duration_s == 0:
            raise ToolkitError("timing plan needs a number of runs > 0 or a duration > 0")

    def share(self, rounds: int) -> TimingPlan:
        """The part of this plan one of ``rounds`` rounds gets (no warm-up: that is done once, before the rounds)."""
        return TimingPlan(warmup=0, runs=-(-self.runs // rounds) if self.runs else 0,
                          duration_s=self.duration_s / rounds, min_runs=max(1, -(-self.min_runs // rounds)),
                          max_runs=max(1, self.max_runs // rounds))


@dataclass
class LatencyStats:
    """Milliseconds per call over ``runs`` timed calls; ``images_per_s`` = batch * 1000 / mean_ms."""

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


def summarize(times_ms, batch: int = 1) -> LatencyStats:
    """Statistics of per-call times in ms, for calls on ``batch`` images each."""
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


def measure(fn: Callable[[], object], plan: TimingPlan, batch: int = 1) -> LatencyStats:
    """Time ``fn()`` (calls on ``batch`` images each) by ``plan`` and summarize."""
    return summarize(time_callable(fn, plan), batch)


def time_rounds(fns: dict[str, Callable[[], object]], plan: TimingPlan,
                rounds: int = 5) -> dict[str, list[list[float]]]:
    """Per-call ms for several callables, per round: ``{key: [round 1 times, round 2 times, ...]}``.

    Each callable gets ``plan.warmup`` untimed calls first; then every round gives each callable in turn its share of
    the plan (``runs / rounds`` calls, or ``duration_s / rounds`` seconds with at least ``min_runs / rounds`` calls).
    """
    if rounds < 1:
        raise ToolkitError(f"rounds must be >= 1, got {rounds}")
    for fn in fns.values():
        for _ in range(plan.warmup):
            fn()
    share = plan.share(rounds)
    times: dict[str, list[list[float]]] = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            times[key].append(time_callable(fn, share))
    return times


def time_interleaved(fns: dict[str, Callable[[], object]], plan: TimingPlan, rounds: int = 5) -> dict[str, list[float]]:
    """Per-call ms for several callables, timed in ``rounds`` rounds that alternate between them (:func:`time_rounds`),
    so a slow period of a shared CPU falls on all of them alike and their ratios stay comparable. With a fixed
    ``plan.runs`` each callable gets exactly that many timed calls."""
    times = {key: [t for r in per_round for t in r] for key, per_round in time_rounds(fns, plan, rounds).items()}
    if plan.runs:
        times = {key: t[:plan.runs] for key, t in times.items()}
    return times


def fixed_input(batch: int, seed: int = 0, shape: tuple[int, int, int] = (3, 32, 32)) -> np.ndarray:
    """A float32 (batch, C, H, W) array in [0, 1), the same for a given seed and batch on every machine."""
    rng = np.random.default_rng(seed)
    return rng.random((batch, *shape), dtype=np.float32)


def ort_callable(session, x: np.ndarray) -> Callable[[], object]:
    """``session.run`` of an ``onnxruntime.InferenceSession`` on ``x``, with IO names taken from the session."""
    feed = {session.get_inputs()[0].name: x}
    out = [session.get_outputs()[0].name]
    return lambda: session.run(out, feed)
