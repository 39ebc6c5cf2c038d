"""bench-edge across runtimes: every artifact of the export manifest, on every installed runtime that reads it.

:func:`enumerate_artifacts` turns each manifest entry into one row per (model, precision, runtime, format): the entry
on its own runtime (``deploy.targets.runtimes.runtime_of``: the .onnx and .ort files on ONNX Runtime, OpenVINO IR on
OpenVINO, .pte on ExecuTorch), plus each ONNX file on every other installed runtime that reads ONNX directly
(OpenVINO). Row keys: the manifest key for an entry on its own runtime (``student.int8``, ``student.fp32.b1.ort``,
``student.int8.openvino``), ``<key>@<runtime>`` for an ONNX file read by another runtime (``student.int8@openvino``).
A runtime that is not installed, or an artifact that fails to load or run, becomes one skip line, never a crash.
Fixed-batch artifacts (``.b1.ort``, ``.pte``) are timed only at their batch and scored in a loop at that batch on at
most ``fixed_batch_images`` test images; agreement is against the entry's fp32 ONNX twin (``<role>.fp32``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.edge_latency import OrtSettings, ort_session, torch_callable, torch_threads
from deploy.manifest import Manifest
from deploy.targets import runtimes
from edgecommon.timing import TimingPlan, fixed_input, summarize, time_interleaved

EAGER_KEY = "teacher.fp32.eager"
ONNX_READERS = ("openvino",)
"""Runtimes other than ONNX Runtime that read an .onnx file directly."""
FORMATS = {".onnx": "onnx", ".ort": "ort", ".xml": "openvino-ir", ".pte": "pte"}


@dataclass(frozen=True)
class Artifact:
    key: str
    """Row key: the manifest key, or ``<key>@<runtime>`` for an ONNX file on another runtime."""
    entry: str
    role: str
    precision: str
    runtime: str
    format: str
    path: Path
    fixed_batch: int | None
    twin: str | None
    """Row key of the fp32 ONNX twin on ONNX Runtime (``<role>.fp32``) that agreement is measured against."""
    size_bytes: int
    architecture: str | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


def _format(entry, path: Path) -> str:
    fmt = getattr(entry, "format", None)
    suffix = FORMATS.get(path.suffix, path.suffix.lstrip(".") or "?")
    return suffix if not fmt or (fmt == "onnx" and suffix != "onnx") else str(fmt)


def _size(path: Path) -> int:
    bin_ = path.with_suffix(".bin")
    return path.stat().st_size + (bin_.stat().st_size if path.suffix == ".xml" and bin_.is_file() else 0)


def enumerate_artifacts(manifest: Manifest, folder: Path,
                        missing: Callable[[str], str | None] | None = None) -> tuple[list[Artifact], list[dict]]:
    """Every (artifact, runtime) pair to bench, and ``{"key", "reason"}`` skip lines for the ones that cannot run
    here (runtime missing or unknown, file missing). One line per other ONNX-reading runtime that is missing."""
    missing = missing or runtimes.missing
    arts: list[Artifact] = []
    skipped: list[dict] = []
    readers_missing: dict[str, str] = {}
    for key, e in manifest.models.items():
        path = folder / e.file
        own, fmt = runtimes.runtime_of(e), _format(e, path)
        batch0 = e.input.shape[0] if e.input.shape else None
        fixed = batch0 if isinstance(batch0, int) and not isinstance(batch0, bool) else None
        twin = f"{e.role}.fp32" if f"{e.role}.fp32" in manifest.models else None
        pairs = [(own, key)] + ([(r, f"{key}@{r}") for r in ONNX_READERS if r != own] if fmt == "onnx" else [])
        for runtime, row in pairs:
            why = missing(runtime)
            if why is not None:
                if row == key:
                    skipped.append({"key": row, "reason": why})
                else:
                    readers_missing.setdefault(runtime, why)
                continue
            if not path.is_file():
                skipped.append({"key": row, "reason": f"file missing: {path}"})
                continue
            arts.append(Artifact(row, key, e.role, e.precision, runtime, fmt, path, fixed,
                                 None if row == twin else twin, _size(path), e.architecture))
    for runtime, why in readers_missing.items():
        skipped.append({"key": f"*.onnx@{runtime}", "reason": why})
    return arts, skipped


def open_run(art: Artifact, threads: int, ort: OrtSettings) -> Callable[[np.ndarray], np.ndarray]:
    """``run(x) -> logits`` for one artifact: ONNX Runtime through the bench's session options (``ort``), the others
    through ``deploy.targets.runtimes.open_runner``. One-line ToolkitError when it cannot load."""
    if art.runtime != "onnxruntime":
        return runtimes.open_runner(art.path, art.runtime, threads)
    session = ort_session(str(art.path), threads, ort)
    name, out = session.get_inputs()[0].name, [session.get_outputs()[0].name]
    return lambda x: session.run(out, {name: x})[0]


def _skip(skipped: list[dict], key: str, exc: Exception) -> None:
    msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    if not any(s["key"] == key for s in skipped):
        skipped.append({"key": key, "reason": msg})
        print(f"  skipped {key}: {msg}", flush=True)


def measure_latency(arts: list[Artifact], teacher, batches, threads_list, timing: TimingPlan, rounds: int, seed: int,
                    shape: tuple[int, int, int], ort: OrtSettings, skipped: list[dict]) -> list[dict]:
    """Rows ``{model, runtime, format, precision, batch, threads, <LatencyStats>}`` for the eager teacher and every
    artifact, timed in interleaved rounds per (threads, batch); fixed-batch artifacts only at their batch. An artifact
    that fails to load or run is added to ``skipped`` and left out."""
    info = {a.key: a for a in arts}
    rows = []
    for threads in threads_list:
        runners = {}
        for a in arts:
            if any(s["key"] == a.key for s in skipped):
                continue
            try:
                runners[a.key] = open_run(a, threads, ort)
            except Exception as exc:  # noqa: BLE001 - one skip line whatever the runtime raised
                _skip(skipped, a.key, exc)
        for batch in batches:
            x = fixed_input(batch, seed, shape)
            fns = {EAGER_KEY: torch_callable(teacher, x)}
            for key, run in runners.items():
                if info[key].fixed_batch not in (None, batch) or any(s["key"] == key for s in skipped):
                    continue
                try:
                    run(x)
                except Exception as exc:  # noqa: BLE001
                    _skip(skipped, key, exc)
                    continue
                fns[key] = (lambda run=run, x=x: run(x))
            with torch_threads(threads):
                times = time_interleaved(fns, timing, rounds)
            for key in fns:
                stats = summarize(times[key], batch)
                a = info.get(key)
                rows.append({"model": key, "runtime": a.runtime if a else "pytorch", "format": a.format if a else "eager",
                             "precision": a.precision if a else "fp32", "batch": batch, "threads": threads,
                             **stats.to_dict()})
                print(f"  latency {key:28s} batch {batch:3d} threads {threads}: p50 {stats.p50_ms:8.3f} ms "
                      f"({stats.runs} runs, {stats.images_per_s:,.0f} img/s)", flush=True)
    return rows


def _logits(run, images_u8: np.ndarray, batch: int) -> np.ndarray:
    """Logits of ``run`` on uint8 images in chunks of ``batch`` (a fixed-batch artifact gets a multiple of it)."""
    return np.concatenate([np.asarray(run(images_u8[i:i + batch].astype(np.float32) * np.float32(1 / 255)),
                                      dtype=np.float32) for i in range(0, len(images_u8), batch)])


def measure_accuracy(arts: list[Artifact], known: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
                     classes, threads: int, eval_batch: int, fixed_batch_images: int, ort: OrtSettings,
                     skipped: list[dict], export_top1: dict[str, float | None]) -> dict[str, dict]:
    """Test top-1 (and per class) of every artifact not already in ``known`` (logits per row key on ``images``);
    agreement and max |logit diff| with its fp32 ONNX twin on the same images. Fixed-batch artifacts run in a loop
    at their batch on the first ``fixed_batch_images`` images."""
    out = {}
    for a in arts:
        if a.key in known or any(s["key"] == a.key for s in skipped):
            continue
        n = len(images) if a.fixed_batch is None else min(len(images), fixed_batch_images)
        n -= n % (a.fixed_batch or 1)
        try:
            run = open_run(a, threads, ort)
            logits = _logits(run, images[:n], a.fixed_batch or eval_batch)
        except Exception as exc:  # noqa: BLE001
            _skip(skipped, a.key, exc)
            continue
        known[a.key] = logits
        pred, y = logits.argmax(1), labels[:n]
        entry = {"top1": float((pred == y).mean() * 100), "n": int(n), "subset_for_fixed_batch": a.fixed_batch is not None,
                 "per_class": {c: float((pred[y == i] == i).mean() * 100) if (y == i).any() else float("nan")
                               for i, c in enumerate(classes)},
                 "export_top1": export_top1.get(a.entry), "twin": a.twin}
        if a.twin in known:
            tw = known[a.twin][:n]
            entry["agreement_with_twin"] = float((tw.argmax(1) == pred).mean() * 100)
            entry["max_abs_logit_diff_vs_twin"] = float(np.abs(tw - logits).max())
        out[a.key] = entry
    return out


def add_twin_figures(models: dict[str, dict], logits: dict[str, np.ndarray]) -> None:
    """Agreement and max |logit diff| with the fp32 ONNX twin for the rows ``bench_edge.measure_accuracy`` scores
    (the student int8 and the eager teacher), as :func:`measure_accuracy` gives them for the other artifacts."""
    for key, twin in (("student.int8", "student.fp32"), (EAGER_KEY, "teacher.fp32")):
        if key in models and key in logits and twin in logits:
            a, b = logits[key], logits[twin]
            models[key].update({"twin": twin, "agreement_with_twin": float((a.argmax(1) == b.argmax(1)).mean() * 100),
                                "max_abs_logit_diff_vs_twin": float(np.abs(a - b).max())})


def shipped_twins(arts: list[Artifact], ship: str) -> list[Artifact]:
    """The shipped student (manifest ``ship.model``) and its twins: the same entry on other runtimes and the entries
    converted from it (``<ship>.ort``, ``<ship>.b1.ort``, ``<ship>.openvino``, ``<ship>.pte``)."""
    return [a for a in arts if a.role == "student" and (a.entry == ship or a.entry.startswith(ship + "."))]


def runtime_speedups(rows: list[dict], arts: list[Artifact], ship: str) -> list[dict]:
    """Per shipped-student row (see :func:`shipped_twins`) and (batch, threads): p50 ratios of the teacher on ORT
    fp32, the teacher in PyTorch eager and the teacher int8 on the same runtime (same format preferred) over it."""
    p50 = {(r["model"], r["batch"], r["threads"]): r["p50_ms"] for r in rows}
    out = []
    for a in shipped_twins(arts, ship):
        t8 = sorted((t for t in arts if t.role == "teacher" and t.precision == "int8" and t.runtime == a.runtime),
                    key=lambda t: (t.format != a.format, t.fixed_batch is not None, t.key))
        for batch, threads in sorted({(r["batch"], r["threads"]) for r in rows if r["model"] == a.key}):
            q = p50[(a.key, batch, threads)]

            def ratio(key):
                v = p50.get((key, batch, threads)) if key else None
                return None if v is None or q <= 0 else v / q
            t8key = next((t.key for t in t8 if (t.key, batch, threads) in p50), None)
            out.append({"model": a.key, "runtime": a.runtime, "format": a.format, "batch": batch, "threads": threads,
                        "basis": "p50 ms per batch", "vs_teacher_ort_fp32": ratio("teacher.fp32"),
                        "vs_teacher_eager": ratio(EAGER_KEY), "teacher_int8_same_runtime": t8key,
                        "vs_teacher_int8_same_runtime": ratio(t8key)})
    return out


def skip_lines(skipped: list[dict]) -> list[str]:
    """The skip lines as report text: ``<key>: skipped: <reason>``."""
    return [f"{s['key']}: skipped: {s['reason']}" for s in skipped]
