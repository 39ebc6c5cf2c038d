"""Quick latency check of exported models: ``python -m deploy.latency runs/<name>/export [--threads 1 --batch 1]``.

Times ONNX Runtime (CPU) ``session.run`` on a fixed random input after a warm-up, and prints percentiles in
milliseconds per batch. A quick sanity check that int8 is faster than fp32; ``benchmarks.bench_edge`` is the full
benchmark. Imports only numpy, onnxruntime and the standard library.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from deploy.manifest import DeployError, read_manifest
from deploy.runtime import create_session


def time_model(path: str | Path, batch: int = 1, threads: int = 1, warmup: int = 50, repeats: int = 500,
               image_size: tuple[int, int] = (32, 32)) -> dict[str, float]:
    """Latency of one model in ms per batch: {"p50", "p90", "p99", "mean"}; ``repeats`` timed runs after ``warmup``."""
    session = create_session(path, threads)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((batch, 3, *image_size), dtype=np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean())}


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
        results: dict[str, list[float]] = {k: [] for k in manifest.models}
        for _ in range(args.rounds):
            for key, entry in manifest.models.items():
                size = (int(entry.preprocessing.image_size[0]), int(entry.preprocessing.image_size[1]))
                results[key].append(time_model(folder / entry.file, args.batch, args.threads, args.warmup, args.repeats, size)["p50"])
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"# {platform.processor() or platform.machine()}, batch {args.batch}, {args.threads} thread(s), "
          f"{args.repeats} runs x {args.rounds} rounds; median of per-round p50, ms per batch")
    for key, values in results.items():
        print(f"{key:14s} p50 {np.median(values):.3f} ms (rounds: {', '.join(f'{v:.3f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
