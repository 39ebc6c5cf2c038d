"""Peak resident memory of one inference session, measured in a fresh subprocess per artifact.

The child (``python -m benchmarks.edge_memory --path P --runtime R``) imports numpy and the runtime, reads its peak
resident set (``VmHWM`` in ``/proc/self/status``; ``getrusage(RUSAGE_SELF).ru_maxrss`` where there is no /proc) as
the baseline, opens the artifact with ``deploy.targets.runtimes.open_runner`` (1 thread), runs it ``--runs`` times at
its batch (1 unless fixed otherwise) and reads the peak again. ``session_mib`` = peak - baseline: what loading and
running the model added; ``peak_rss_mib``: the whole process (interpreter and runtime libraries included). A fresh
process per artifact keeps other sessions (and the bench's own) out of the figures. ExecuTorch's Python bindings take
torch tensors, so its baseline includes torch; the eager teacher's (``--runtime pytorch``) includes torch and the toolkit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = 20
METHOD = ("fresh subprocess per artifact: peak RSS (VmHWM) after load + {runs} runs at batch 1 (its fixed batch "
          "where fixed), 1 thread, minus the peak after importing numpy and the runtime")


def _kib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_kib() -> float:
    hwm = _kib("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def _child(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.edge_memory")
    p.add_argument("--path", required=True)
    p.add_argument("--runtime", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--shape", default="3,32,32")
    p.add_argument("--runs", type=int, default=RUNS)
    p.add_argument("--model", help="architecture (--runtime pytorch)")
    p.add_argument("--num-classes", type=int, default=10)
    a = p.parse_args(argv)
    import importlib

    import numpy as np

    shape = tuple(int(v) for v in a.shape.split(","))
    x = np.random.default_rng(0).random((a.batch, *shape), dtype=np.float32)
    if a.runtime == "pytorch":
        import torch

        from toolkit.models.checkpoint import load_model

        torch.set_num_threads(1)
        base = peak_kib()
        model = load_model(a.model, a.path, num_classes=a.num_classes).eval()
        xt = torch.from_numpy(x)
        with torch.no_grad():
            for _ in range(a.runs):
                model(xt)
    else:
        from deploy.targets import runtimes

        reason = runtimes.missing(a.runtime)
        if reason:
            print(json.dumps({"error": reason}))
            return 0
        importlib.import_module(runtimes._MODULES[a.runtime])
        if a.runtime == "onnxruntime":
            import deploy.runtime  # noqa: F401 - open_runner's ORT session comes from there
        if a.runtime == "executorch":
            import torch  # noqa: F401 - the pybindings take torch tensors
        base = peak_kib()
        run = runtimes.open_runner(a.path, a.runtime, 1)
        for _ in range(a.runs):
            run(x)
    peak = peak_kib()
    print(json.dumps({"baseline_mib": base / 1024, "peak_rss_mib": peak / 1024, "session_mib": (peak - base) / 1024,
                      "runs": a.runs, "batch": a.batch}))
    return 0


def measure(path: Path, runtime: str, batch: int = 1, shape=(3, 32, 32), runs: int = RUNS, model: str | None = None,
            num_classes: int = 10, timeout: float = 300) -> dict:
    """The child's figures for one artifact, or ``{"error": one line}``."""
    cmd = [sys.executable, "-m", "benchmarks.edge_memory", "--path", str(path), "--runtime", runtime, "--batch",
           str(batch), "--shape", ",".join(map(str, shape)), "--runs", str(runs), "--num-classes", str(num_classes)]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"error": f"memory check timed out after {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        err = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:200]
        return {"error": err}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"error": lines[-1][:200]}


def measure_all(arts, shape, eager: dict | None = None, runs: int = RUNS) -> dict[str, dict]:
    """``{row key: figures}`` for every artifact (``benchmarks.edge_runtimes.Artifact``) and the eager teacher
    (``eager``: ``{"key", "path", "model", "num_classes"}``), one subprocess each, one after the other."""
    out = {}
    if eager:
        out[eager["key"]] = {**measure(Path(eager["path"]), "pytorch", 1, shape, runs, eager["model"],
                                       eager["num_classes"]), "size_bytes": None}
    for a in arts:
        out[a.key] = {**measure(a.path, a.runtime, a.fixed_batch or 1, shape, runs), "size_bytes": a.size_bytes}
    for key, m in out.items():
        shown = (f"session {m['session_mib']:.1f} MiB, peak RSS {m['peak_rss_mib']:.1f} MiB" if "error" not in m
                 else f"not measured: {m['error']}")
        print(f"  memory {key:28s}: {shown}", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
