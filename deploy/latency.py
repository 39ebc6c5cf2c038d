"""Quick latency check of exported models: ``python -m deploy.latency runs/<name>/export [--threads 1 --batch 1]``.

Times ONNX Runtime (CPU) ``session.run`` on a fixed random input with the project's one timer (``edgecommon.timing``):
warm-up, then ``--repeats`` timed runs per round, ``--rounds`` rounds alternating between the models; prints the
median of the per-round p50s in milliseconds per batch. A quick sanity check that int8 is faster than fp32;
``benchmarks.bench_edge`` is the full benchmark. Imports only numpy, onnxruntime, the standard library and ``edgecommon``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np

from edgecommon import ToolkitError
from edgecommon.timing import TimingPlan, fixed_input, measure, ort_callable, percentile, time_rounds
from deploy.manifest import read_manifest
from deploy.runtime import create_session


def time_model(path: str | Path, batch: int = 1, threads: int = 1, warmup: int = 50, repeats: int = 500,
               image_size: tuple[int, int] = (32, 32)) -> dict[str, float]:
    """Latency of one model in ms per batch: {"p50", "p90", "p99", "mean"}; ``repeats`` timed runs after ``warmup``."""
    x = fixed_input(batch, seed=0, shape=(3, *image_size))
    plan = TimingPlan(warmup=warmup, runs=repeats, duration_s=0)
    stats = measure(ort_callable(create_session(path, threads), x), plan, batch)
    return {"p50": stats.p50_ms, "p90": stats.p90_ms, "p99": stats.p99_ms, "mean": stats.mean_ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.latency", description=__doc__.splitlines()[0])
    p.add_argument("manifest", help="export manifest.json or its folder")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--repeats", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3, help="alternate the models this many times (fairer on a busy CPU)")
    args = p.parse_args(argv)
    try:
        path = Path(args.manifest)
        folder = path if path.is_dir() else path.parent
        manifest = read_manifest(path)
        fns = {}
        for key, entry in manifest.models.items():
            x = fixed_input(args.batch, seed=0, shape=(3, *(int(v) for v in entry.preprocessing.image_size)))
            fns[key] = ort_callable(create_session(folder / entry.file, args.threads), x)
        plan = TimingPlan(warmup=args.warmup, runs=args.repeats * args.rounds, duration_s=0)
        rounds = time_rounds(fns, plan, args.rounds)
    except ToolkitError as exc:  # DeployError is one
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# {platform.processor() or platform.machine()}, batch {args.batch}, {args.threads} thread(s), "
          f"{args.repeats} runs x {args.rounds} rounds; median of per-round p50, ms per batch")
    for key, per_round in rounds.items():
        values = [percentile(t, 50) for t in per_round]
        print(f"{key:14s} p50 {np.median(values):.3f} ms (rounds: {', '.join(f'{v:.3f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
