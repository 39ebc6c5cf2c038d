"""Host side of the aarch64 target: run the export's ONNX files with the aarch64 ONNX Runtime under qemu user-mode.

``benchmarks/aarch64/setup.sh`` prepares ``<repo>/.aarch64`` (qemu-aarch64, an arm64 Python 3.11 sysroot, aarch64
wheels). Here the x86 side saves the test images, runs ``benchmarks/aarch64/infer.py`` under emulation and compares
its logits with the x86 ones: top-1 per model, prediction agreement (int8 should match), max |logit| difference
(fp32 should be within 1e-5). Timings under emulation are labelled "emulated"; they are not device latency.

OpenVINO (optional, when setup.sh found an aarch64 wheel that imports under qemu): every ONNX file of the export
(student/teacher fp32/int8) also runs with OpenVINO under qemu, in a second guest process, on a few images
(``openvino_counts``), and is compared with x86 OpenVINO on the same file (``deploy.targets.runtimes.open_runner(path,
"openvino", 1)``) by the same rules; rows ``<role>@openvino``. OpenVINO missing, crashing or running past its timeout
under qemu makes those rows ``status: skipped`` with a one-line reason; the ONNX Runtime rows stand. ExecuTorch is not
checked: its Python bindings take torch tensors and the guest has no torch.
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


    def openvino_missing(self) -> str | None:
        """None when setup.sh found OpenVINO importable under qemu (READY line ``openvino: openvino <version> ...``),
        else why not (one line)."""
        line = next((ln for ln in (self.root / "READY").read_text().splitlines() if ln.startswith("openvino:")), None)
        if line is None:
            return f"OpenVINO not set up for aarch64: re-run `bash {SETUP_SCRIPT.relative_to(REPO_ROOT)}`"
        state = line.split(":", 1)[1].strip()
        return None if state.startswith("openvino ") else f"OpenVINO on aarch64: {state}"


def target(root: str | Path | None = None) -> Aarch64Target:
    return Aarch64Target(Path(root or os.environ.get("AARCH64_ROOT", DEFAULT_ROOT)))


OPENVINO_INT8_MISMATCH = 0.05
"""OpenVINO int8 rows may differ from x86 on at most max(1, 5%) of the images: its int8 kernels differ by ISA (x86
VNNI vs Arm), and on runs/cpu aarch64 OpenVINO int8 matched x86 ONNX Runtime int8 exactly while x86 OpenVINO int8 did
not (96.9% agreement on 128 images); ONNX Runtime int8 rows must match exactly."""


def compare(role: str, arm: np.ndarray, x86: np.ndarray, labels: np.ndarray, int8_tolerance: float = 0.0) -> dict:
    """Parity of aarch64 logits with x86 logits (both (N, C)) for one model; ``int8_tolerance``: the share of int8
    predictions allowed to differ (at least one image when > 0)."""
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
        allowed = max(1, int(int8_tolerance * len(labels))) if int8_tolerance > 0 else 0
        out["check"] = ("predictions match" if allowed == 0 else f"at most {allowed} of {len(labels)} predictions differ")
        out["passed"] = out["prediction_mismatches"] <= allowed
    else:
        scale = max(1.0, float(np.abs(x86).max())) if x86.size else 1.0
        out["check"] = f"max abs diff <= {FP32_LOGIT_TOL:g} x max(1, max abs logit) = {FP32_LOGIT_TOL * scale:.2g}"
        out["passed"] = out["max_abs_logit_diff"] <= FP32_LOGIT_TOL * scale
    return out


def onnx_roles(export: ExportInfo) -> dict[str, Path]:
    """Every ONNX file of the export by manifest key (student/teacher fp32/int8): the files OpenVINO also reads."""
    if export.manifest is None:
        return {role: m.path for role, m in export.models.items()}
    return {key: export.folder / e.file for key, e in export.manifest.models.items()
            if e.format == "onnx" and e.file.endswith(".onnx")}


def _last_line(text: str, default: str) -> str:
    return (text.strip().splitlines() or [default])[-1][:300]


def _chunked(run, images_u8: np.ndarray, batch: int = 100) -> np.ndarray:
    """Logits in the guest's chunks (``infer.py --batch``, default 100), from uint8 images scaled as the guest does."""
    scaled = [np.ascontiguousarray(images_u8[i:i + batch].astype(np.float32) * np.float32(1 / 255))
              for i in range(0, len(images_u8), batch)]
    return np.concatenate([np.asarray(run(x), dtype=np.float32) for x in scaled])


def run_openvino(export: ExportInfo, images: np.ndarray, labels: np.ndarray, workdir: Path, counts: dict[str, int],
                 tgt: Aarch64Target, cmd: list[str], env: dict, timeout_s: float) -> tuple[dict, dict]:
    """``(rows, summary)``: OpenVINO under qemu vs x86 OpenVINO on each ONNX file in ``counts`` (role -> images), rows
    keyed ``<role>@openvino``; a row that cannot run is ``{"status": "skipped", "message": ...}``. ``cmd`` is the
    guest command without ``--counts`` / ``--runtime``."""
    from deploy.targets import runtimes

    paths = onnx_roles(export)
    counts = {r: n for r, n in counts.items() if r in paths and n > 0}

    def skip_all(why: str) -> tuple[dict, dict]:
        return ({f"{r}@openvino": {"status": "skipped", "message": why, "runtime": "openvino", "n": 0} for r in counts},
                {"status": "skipped", "message": why})

    if not counts:
        return {}, {"status": "skipped", "message": "no images requested for OpenVINO under qemu"}
    if (why := tgt.openvino_missing()) is not None:
        return skip_all(why)
    if (why := runtimes.missing("openvino")) is not None:
        return skip_all(f"x86 side: {why}")
    for old in [workdir / "guest_openvino.json", *workdir.glob("logits_*@openvino.npy")]:
        old.unlink(missing_ok=True)
    t0 = time.perf_counter()
    message = None
    try:
        proc = subprocess.run([*cmd, "--runtime", "openvino", "--counts",
                               ",".join(f"{r}={n}" for r, n in counts.items())],
                              env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            message = f"OpenVINO guest exited {proc.returncode} under qemu: {_last_line(proc.stderr, '(no stderr)')}"
    except subprocess.TimeoutExpired:
        message = f"OpenVINO under qemu exceeded {timeout_s:.0f} s (emulated float too slow)"
    wall = time.perf_counter() - t0
    gpath = workdir / "guest_openvino.json"
    guest = json.loads(gpath.read_text()) if gpath.is_file() else {}
    if guest.get("openvino_missing"):
        return skip_all(f"OpenVINO does not import under qemu: {guest['openvino_missing']}")
    rows, done = {}, guest.get("models", {})
    for role, n in counts.items():
        key, g = f"{role}@openvino", done.get(role)
        if g is None or "error" in g or not (workdir / f"logits_{key}.npy").is_file():
            why = (g or {}).get("error") or message or "OpenVINO guest wrote no logits"
            rows[key] = {"status": "skipped", "message": why, "runtime": "openvino", "n": 0}
            continue
        try:
            x86 = _chunked(runtimes.open_runner(paths[role], "openvino", 1), images[:n])
        except Exception as exc:  # noqa: BLE001 - x86 OpenVINO refusing the file: that row only
            rows[key] = {"status": "skipped", "message": f"x86 OpenVINO: {_last_line(str(exc), type(exc).__name__)}",
                         "runtime": "openvino", "n": 0}
            continue
        arm = np.load(workdir / f"logits_{key}.npy")
        rows[key] = {"status": "ok", **compare(role, arm, x86, labels[:n], OPENVINO_INT8_MISMATCH), **g}
    ran = [r for r in rows.values() if r["status"] == "ok"]
    summary = {"status": "ok" if len(ran) == len(rows) else ("partial" if ran else "skipped"),
               "version": guest.get("openvino"), "emulated_wall_s": wall, "images": counts}
    if message:
        summary["message"] = message
    elif not ran:
        summary["message"] = next(iter(rows.values()))["message"]
    return rows, summary


def run_aarch64(export: ExportInfo, images: np.ndarray, labels: np.ndarray, x86_logits: dict[str, np.ndarray],
                workdir: Path, counts: dict[str, int], tgt: Aarch64Target | None = None, timeout_s: float = 1800,
                latency_runs: int = 5, openvino_counts: dict[str, int] | None = None,
                openvino_timeout_s: float = 1200) -> dict:
    """Run the guest on the first ``counts[role]`` of ``images`` uint8 (N, 3, 32, 32) per model and compare with
    ``x86_logits`` (role -> (N, C), same images). fp32 runs ~1 s per image under emulation, int8 ~0.1 s. Then, when
    ``openvino_counts`` (ONNX role -> images) is given, OpenVINO on those files (:func:`run_openvino`)."""
    tgt = tgt or target()
    counts = {role: min(int(n), len(images)) for role, n in counts.items() if int(n) > 0}
    ov_counts = {role: min(int(n), len(images)) for role, n in (openvino_counts or {}).items() if int(n) > 0}
    if (why := tgt.missing()) is not None:
        return {"status": "not set up", "message": why}
    workdir.mkdir(parents=True, exist_ok=True)
    if not counts:
        return {"status": "skipped", "message": "no images requested for the aarch64 check"}
    np.save(workdir / "images.npy", np.ascontiguousarray(images[:max([*counts.values(), *ov_counts.values()])],
                                                         dtype=np.uint8))
    roles = list(counts)
    cpu = os.environ.get("AARCH64_CPU", DEFAULT_CPU)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tgt.pylib}{os.pathsep}{REPO_ROOT}", "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}
    cmd = [str(tgt.qemu), "-cpu", cpu, "-L", str(tgt.sysroot), str(tgt.python), str(GUEST_SCRIPT), "--export", str(export.folder.resolve()),
           "--images", str((workdir / "images.npy").resolve()), "--out", str(workdir.resolve()),
           "--latency-runs", str(latency_runs)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([*cmd, "--counts", ",".join(f"{r}={n}" for r, n in counts.items())],
                              env=env, capture_output=True, text=True, timeout=timeout_s)
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
        models[role] = {"status": "ok", **compare(role, arm, x86_logits[role][:n], labels[:n]), **guest["models"][role]}
    out = {"status": "ok", "n_images": counts, "guest": {k: v for k, v in guest.items() if k != "models"},
           "emulator": (tgt.root / "READY").read_text().splitlines()[0], "qemu_cpu": cpu, "emulated_wall_s": wall}
    if openvino_counts is not None:
        ov_rows, out["openvino"] = run_openvino(export, images, labels, workdir, ov_counts, tgt, cmd, env,
                                                openvino_timeout_s)
        models.update(ov_rows)
    # Skipped rows (OpenVINO that cannot run under qemu) do not count; every row that ran must pass.
    out["passed"] = all(m["passed"] for m in models.values() if m["status"] == "ok")
    by_rt: dict[str, list[bool]] = {}
    for key, m in models.items():
        if m["status"] == "ok":
            by_rt.setdefault("openvino" if key.endswith("@openvino") else "onnxruntime", []).append(m["passed"])
    out["passed_by_runtime"] = {rt: all(v) for rt, v in by_rt.items()}  # a runtime with no row that ran is absent
    return {**out, "models": models,
            "note": "latency under qemu user-mode emulation on an x86 host: emulated, not device latency"}
