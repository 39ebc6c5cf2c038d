"""Host side of the aarch64 target: run the export's ONNX files with the aarch64 ONNX Runtime under qemu user-mode.

``benchmarks/aarch64/setup.sh`` prepares ``<repo>/.aarch64`` (qemu-aarch64, an arm64 Python 3.11 sysroot, aarch64
wheels). Here the x86 side saves the test images, runs ``benchmarks/aarch64/infer.py`` under emulation and compares
its logits with the x86 ones: top-1 per model, prediction agreement (int8 should match), max |logit| difference
(fp32 should be within 1e-5). Timings under emulation are labelled "emulated"; they are not device latency.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.edge_export import ExportInfo
from toolkit import ToolkitError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO_ROOT / ".aarch64"
GUEST_SCRIPT = Path(__file__).resolve().parent / "aarch64" / "infer.py"
SETUP_SCRIPT = Path(__file__).resolve().parent / "aarch64" / "setup.sh"
FP32_LOGIT_TOL = 1e-5
"""fp32 parity bound: max |logit diff| <= FP32_LOGIT_TOL * max(1, max |x86 logit|) (relative for large logits)."""
DEFAULT_CPU = "cortex-a76"
"""qemu CPU model: an ARMv8.2-A edge core with dot-product instructions (as in a Raspberry Pi 5); AARCH64_CPU overrides."""


@dataclass(frozen=True)
class Aarch64Target:
    root: Path

    @property
    def qemu(self) -> Path:
        return self.root / "qemu" / "usr" / "bin" / "qemu-aarch64"

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    @property
    def pylib(self) -> Path:
        return self.root / "pylib"

    def missing(self) -> str | None:
        """None when set up, else what is missing (one line)."""
        for path in (self.root / "READY", self.qemu, self.python, self.pylib):
            if not path.exists():
                shown = os.path.relpath(path, REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
                return f"{shown} missing: run `bash {SETUP_SCRIPT.relative_to(REPO_ROOT)}` to set up the aarch64 target"
        return None


def target(root: str | Path | None = None) -> Aarch64Target:
    return Aarch64Target(Path(root or os.environ.get("AARCH64_ROOT", DEFAULT_ROOT)))


def compare(role: str, arm: np.ndarray, x86: np.ndarray, labels: np.ndarray) -> dict:
    """Parity of aarch64 logits with x86 logits (both (N, C)) for one model."""
    if arm.shape != x86.shape:
        raise ToolkitError(f"aarch64 logits for {role} have shape {arm.shape}, x86 {x86.shape}")
    diff = np.abs(arm.astype(np.float64) - x86.astype(np.float64))
    agree = arm.argmax(1) == x86.argmax(1)
    out = {"n": int(len(labels)), "top1_aarch64": float((arm.argmax(1) == labels).mean() * 100),
           "top1_x86": float((x86.argmax(1) == labels).mean() * 100),
           "prediction_agreement": float(agree.mean() * 100), "prediction_mismatches": int((~agree).sum()),
           "max_abs_logit_diff": float(diff.max()) if diff.size else 0.0,
           "mean_abs_logit_diff": float(diff.mean()) if diff.size else 0.0}
    if role.endswith("int8"):
        out["check"] = "predictions match" if out["prediction_mismatches"] == 0 else "predictions differ"
        out["passed"] = out["prediction_mismatches"] == 0
    else:
        scale = max(1.0, float(np.abs(x86).max())) if x86.size else 1.0
        out["check"] = f"max abs diff <= {FP32_LOGIT_TOL:g} x max(1, max abs logit) = {FP32_LOGIT_TOL * scale:.2g}"
        out["passed"] = out["max_abs_logit_diff"] <= FP32_LOGIT_TOL * scale
    return out


def run_aarch64(export: ExportInfo, images: np.ndarray, labels: np.ndarray, x86_logits: dict[str, np.ndarray],
                workdir: Path, counts: dict[str, int], tgt: Aarch64Target | None = None, timeout_s: float = 1800,
                latency_runs: int = 5) -> dict:
    """Run the guest on the first ``counts[role]`` of ``images`` uint8 (N, 3, 32, 32) per model and compare with
    ``x86_logits`` (role -> (N, C), same images). fp32 runs ~1 s per image under emulation, int8 ~0.1 s."""
    tgt = tgt or target()
    counts = {role: min(int(n), len(images)) for role, n in counts.items() if int(n) > 0}
    if (why := tgt.missing()) is not None:
        return {"status": "not set up", "message": why}
    workdir.mkdir(parents=True, exist_ok=True)
    if not counts:
        return {"status": "skipped", "message": "no images requested for the aarch64 check"}
    np.save(workdir / "images.npy", np.ascontiguousarray(images[:max(counts.values())], dtype=np.uint8))
    roles = list(counts)
    cpu = os.environ.get("AARCH64_CPU", DEFAULT_CPU)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tgt.pylib}{os.pathsep}{REPO_ROOT}", "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    cmd = [str(tgt.qemu), "-cpu", cpu, "-L", str(tgt.sysroot), str(tgt.python), str(GUEST_SCRIPT), "--export", str(export.folder.resolve()),
           "--images", str((workdir / "images.npy").resolve()), "--out", str(workdir.resolve()),
           "--counts", ",".join(f"{r}={n}" for r, n in counts.items()),
           "--latency-runs", str(latency_runs)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "message": f"aarch64 guest exceeded {timeout_s:.0f} s under qemu"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1][:300]
        return {"status": "failed", "message": f"aarch64 guest exited {proc.returncode}: {tail}"}
    guest = json.loads((workdir / "guest.json").read_text())
    models = {}
    for role in roles:
        arm = np.load(workdir / f"logits_{role}.npy")
        n = counts[role]
        models[role] = {**compare(role, arm, x86_logits[role][:n], labels[:n]), **guest["models"][role]}
    passed = all(m["passed"] for m in models.values())
    return {"status": "ok", "passed": passed, "n_images": counts, "guest": {k: v for k, v in guest.items() if k != "models"},
            "emulator": (tgt.root / "READY").read_text().splitlines()[0], "qemu_cpu": cpu, "emulated_wall_s": wall,
            "models": models,
            "note": "latency under qemu user-mode emulation on an x86 host: emulated, not device latency"}
