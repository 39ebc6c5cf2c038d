"""``python -m toolkit.compress --run X --budget-ms Y``: the most accurate student within a latency budget.

Errors (unknown candidate, budget <= 0, run without teacher, no candidate within the budget) print one ``error:``
line and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from toolkit import ToolkitError
from toolkit.compress.run import CompressConfig, run_compress


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m toolkit.compress", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run name (runs/<name>) or folder, with a finished teacher")
    p.add_argument("--budget-ms", type=float, default=None, help="latency budget: p50 ms per image at batch 1")
    p.add_argument("--candidates-only", action="store_true",
                   help="only write runs/<run>/candidates/ (then time it on the device with deploy.time_candidates)")
    p.add_argument("--candidates", default=None,
                   help="comma-separated model names (default: the teacher family's smaller members or truncations)")
    p.add_argument("--device-timings", default=None,
                   help="JSON from `python -m deploy.time_candidates` on the target device (default: time this host)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads when timing this host (default 1)")
    p.add_argument("--timing-runs", type=int, default=200, help="timed calls per model when timing this host")
    p.add_argument("--proxy-epochs", type=int, default=2, help="epochs of the proxy training (default 2)")
    p.add_argument("--proxy-subset", type=int, default=5000, help="training images of the proxy (default 5000; 0: all)")
    p.add_argument("--finalists", type=int, default=2, help="candidates fully distilled (default 2)")
    p.add_argument("--calib-images", type=int, default=64, help="training images calibrating the candidates' int8")
    p.add_argument("--max-float-nodes", type=int, default=None,
                   help="the winner's export: most nodes the int8 fallback keeps in float (default: the export's)")
    p.add_argument("--no-bench", action="store_true", help="export the winner but skip benchmarks.bench_edge")
    p.add_argument("--runs-dir", default="runs")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if a.budget_ms is None and not a.candidates_only:
        p.error("--budget-ms is required (or --candidates-only)")
    cc = CompressConfig(run=a.run, budget_ms=a.budget_ms,
                        candidates=[s for s in a.candidates.split(",") if s.strip()] if a.candidates else None,
                        device_timings=a.device_timings, threads=a.threads, timing_runs=a.timing_runs,
                        proxy_epochs=a.proxy_epochs, proxy_subset=a.proxy_subset or None, finalists=a.finalists,
                        calib_images=a.calib_images, max_float_nodes=a.max_float_nodes, bench=not a.no_bench,
                        candidates_only=a.candidates_only, runs_dir=a.runs_dir)
    try:
        run_compress(cc)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
