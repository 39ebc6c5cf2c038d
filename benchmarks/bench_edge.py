"""``python -m benchmarks.bench_edge --run runs/<name>``: latency, accuracy parity and an aarch64 check of an export.

Models (ONNX Runtime CPU provider, from ``runs/<name>/export/``): teacher fp32, student fp32, student int8; plus the
teacher in PyTorch eager fp32 from ``runs/<name>/teacher.pt``, the way it ran before export.

Latency (ONNX Runtime perf-test / MLPerf style): fixed seeded input, warm-up runs, then a fixed number of timed runs
(``--runs``) or a fixed duration (``--duration``, at least ``--min-runs``), per model x batch x intra-op threads;
mean/min/p50/p90/p99 ms per batch and images/s; speed-ups of the student int8 from p50s measured in the same run.
Accuracy: top-1 and per-class on the CIFAR-10 test set (``--test-subset N``: the first N images), agreement of
student int8 with student fp32 and with the teacher, int8 drop against the export's gate.
aarch64 (optional): the same ONNX files under qemu with the aarch64 ONNX Runtime (see ``benchmarks/aarch64``).
Writes ``runs/<name>/bench/report.json``, ``report.md`` and PNG plots. Exit 2 with one ``error:`` line on bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.edge_export import ExportInfo, load_export
from benchmarks.edge_latency import OrtSettings, ort_session, torch_callable, torch_threads
from edgecommon.timing import TimingPlan, fixed_input, ort_callable, summarize, time_interleaved
from toolkit import ToolkitError
from toolkit.io import atomic_write_json
from toolkit.runs import open_run, resolve_run

REPORT_SCHEMA = "edge-distill-bench-report"
ORT_ROLES = ("teacher.fp32", "student.fp32", "student.int8")
EAGER_KEY = "teacher.fp32.eager"
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8",
             "amx_bf16")


@dataclass
class BenchConfig:
    """Settings of one bench run. ``test_subset`` None: the whole test set; ``aarch64``: auto | on | off."""

    run: Path
    batches: tuple[int, ...] = (1, 8, 64)
    threads: tuple[int, ...] = (1, 2)
    timing: TimingPlan = field(default_factory=lambda: TimingPlan(warmup=5, duration_s=2.0, min_runs=10))
    rounds: int = 5
    """Timed runs are split into this many rounds alternating between the four models (see time_interleaved)."""
    seed: int = 0
    test_subset: int | None = None
    eval_batch: int = 500
    aarch64: str = "auto"
    aarch64_images: int = 500
    """Test images the int8 student runs on under emulation (~0.1 s each)."""
    aarch64_fp32_images: int = 32
    """Test images each fp32 model runs on under emulation (~1-5 s each: emulated float is slow)."""
    ort: OrtSettings = field(default_factory=OrtSettings)
    data_dir: str | None = None
    quick: bool = False

    def validate(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise ToolkitError(f"batch sizes must be >= 1, got {self.batches}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise ToolkitError(f"thread counts must be >= 1, got {self.threads}")
        if self.rounds < 1:
            raise ToolkitError(f"--rounds must be >= 1, got {self.rounds}")
        if self.test_subset is not None and self.test_subset < 1:
            raise ToolkitError(f"--test-subset must be >= 1, got {self.test_subset}")
        if self.aarch64_images < 0 or self.aarch64_fp32_images < 0:
            raise ToolkitError("aarch64 image counts must be >= 0")
        if self.aarch64 not in ("auto", "on", "off"):
            raise ToolkitError(f"aarch64 mode must be auto, on or off, got {self.aarch64}")


QUICK = {"batches": (1, 8), "threads": (1,), "timing": TimingPlan(warmup=2, duration_s=0.25, min_runs=5),
         "test_subset": 1000, "rounds": 2, "aarch64_images": 100,
         "aarch64_fp32_images": 8}


def machine_info(threads: tuple[int, ...]) -> dict:
    """CPU model, selected /proc/cpuinfo flags, library versions, usable CPUs."""
    import onnxruntime
    import torch

    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu_model": model or platform.processor() or "unknown", "cpu_flags": {f: f in flags for f in CPU_FLAGS}, "machine": platform.machine(),
            "logical_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "ort_providers": onnxruntime.get_available_providers(), "torch": torch.__version__, "numpy": np.__version__,
            "threads_benchmarked": list(threads)}


def _loadavg() -> float | None:
    """1-minute load average (runnable threads); above the CPU count, timings include waiting for a core."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _model_table(export: ExportInfo, summary: dict, teacher_ckpt: Path, teacher_params: int) -> dict:
    names = {"teacher": summary.get("teacher", {}).get("name"), "student": summary.get("student", {}).get("name")}
    table = {EAGER_KEY: {"architecture": names["teacher"], "runtime": "pytorch eager", "precision": "fp32",
                         "file": str(teacher_ckpt), "params": teacher_params}}
    for role in ORT_ROLES:
        m = export.models[role]
        table[role] = {"architecture": m.architecture or names[role.split(".")[0]], "runtime": "onnxruntime cpu",
                       "precision": role.split(".")[1], "file": str(m.path), "sha256": m.sha256,
                       "size_bytes": m.path.stat().st_size}
    return table


def input_shape(export: ExportInfo) -> tuple[int, int, int]:
    """(3, H, W) of the exported models, from the manifest's preprocessing (32x32 when absent)."""
    entry = export.manifest.models["student.fp32"] if export.manifest is not None else None
    size = entry.preprocessing.image_size if entry is not None else (32, 32)
    return (3, int(size[0]), int(size[1]))


def measure_latency(cfg: BenchConfig, export: ExportInfo, teacher) -> list[dict]:
    rows = []
    shape = input_shape(export)
    for threads in cfg.threads:
        sessions = {role: ort_session(str(export.models[role].path), threads, cfg.ort) for role in ORT_ROLES}
        for batch in cfg.batches:
            x = fixed_input(batch, cfg.seed, shape)
            fns = {EAGER_KEY: torch_callable(teacher, x), **{r: ort_callable(sessions[r], x) for r in ORT_ROLES}}
            with torch_threads(threads):
                times = time_interleaved(fns, cfg.timing, cfg.rounds)
            for key in fns:
                stats = summarize(times[key], batch)
                rows.append({"model": key, "batch": batch, "threads": threads, **stats.to_dict()})
                print(f"  latency {key:20s} batch {batch:3d} threads {threads}: p50 {stats.p50_ms:8.3f} ms "
                      f"({stats.runs} runs, {stats.images_per_s:,.0f} img/s)", flush=True)
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """Per (batch, threads): p50 ratios of the teachers (and student fp32) over the student int8, and min ratios."""
    p50 = {(r["model"], r["batch"], r["threads"]): r["p50_ms"] for r in rows}
    mins = {(r["model"], r["batch"], r["threads"]): r["min_ms"] for r in rows}
    out = []
    for batch, threads in sorted({(r["batch"], r["threads"]) for r in rows}):
        q = p50[("student.int8", batch, threads)]
        out.append({"batch": batch, "threads": threads, "basis": "p50 ms per batch",
                    "int8_vs_teacher_ort_fp32": p50[("teacher.fp32", batch, threads)] / q,
                    "int8_vs_teacher_eager": p50[(EAGER_KEY, batch, threads)] / q,
                    "student_fp32_vs_teacher_ort_fp32": p50[("teacher.fp32", batch, threads)] / p50[("student.fp32", batch, threads)],
                    "int8_vs_student_fp32": p50[("student.fp32", batch, threads)] / q,
                    "min_basis": {"int8_vs_teacher_ort_fp32": mins[("teacher.fp32", batch, threads)] / mins[("student.int8", batch, threads)],
                                  "int8_vs_teacher_eager": mins[(EAGER_KEY, batch, threads)] / mins[("student.int8", batch, threads)]}})
    return out


def ort_logits(session, images_u8: np.ndarray, batch: int) -> np.ndarray:
    """Logits (N, C) float32 for uint8 (N, 3, H, W) images, scaled to [0, 1] here."""
    name, out = session.get_inputs()[0].name, [session.get_outputs()[0].name]
    chunks = [session.run(out, {name: images_u8[i:i + batch].astype(np.float32) * np.float32(1 / 255)})[0]
              for i in range(0, len(images_u8), batch)]
    return np.concatenate(chunks).astype(np.float32)


def measure_accuracy(cfg: BenchConfig, export: ExportInfo, teacher) -> tuple[dict, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Accuracy figures, plus logits per model, the uint8 images and labels they were computed on."""
    import torch

    from deploy.export import load_run_data, read_run_config
    from toolkit.evaluate import predict_logits

    data = load_run_data(read_run_config(open_run(cfg.run)), cfg.data_dir)
    test = data.test
    n = len(test) if cfg.test_subset is None else min(cfg.test_subset, len(test))
    images, labels = test.images[:n], test.labels[:n].numpy()
    exact = None if test.exact is None else test.exact[:n].numpy().astype(bool)
    images_np = images.numpy()
    threads = max(cfg.threads)
    logits: dict[str, np.ndarray] = {}
    for role in ORT_ROLES:
        logits[role] = ort_logits(ort_session(str(export.models[role].path), threads, cfg.ort), images_np, cfg.eval_batch)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        logits[EAGER_KEY] = predict_logits(teacher, images, batch_size=cfg.eval_batch).numpy()
    finally:
        torch.set_num_threads(previous)
    pred = {k: v.argmax(1) for k, v in logits.items()}
    models = {}
    for key, p in pred.items():
        per_class = {c: float((p[labels == i] == i).mean() * 100) if (labels == i).any() else float("nan")
                     for i, c in enumerate(data.classes)}
        entry = {"top1": float((p == labels).mean() * 100), "per_class": per_class}
        if exact is not None:  # the shared copy: bit-exact images vs JPEG-decoded ones
            for name, mask in (("top1_exact_images", exact), ("top1_jpeg_images", ~exact)):
                entry[name] = float((p[mask] == labels[mask]).mean() * 100) if mask.any() else None
        if key in export.models:
            entry["export_top1"] = export.models[key].export_top1
        models[key] = entry

    def agree(a: str, b: str) -> float:
        return float((pred[a] == pred[b]).mean() * 100)

    drop = models["student.fp32"]["top1"] - models["student.int8"]["top1"]
    gate = export.max_int8_drop
    acc = {"n": int(n), "subset": cfg.test_subset is not None, "data": data.description, "source": data.source,
           "n_exact_images": None if exact is None else int(exact.sum()),
           "threads": threads, "models": models,
           "agreement": {"student.int8 vs student.fp32": agree("student.int8", "student.fp32"),
                         "student.int8 vs teacher.fp32": agree("student.int8", "teacher.fp32"),
                         "student.fp32 vs teacher.fp32": agree("student.fp32", "teacher.fp32"),
                         "teacher.fp32 vs teacher.fp32.eager": agree("teacher.fp32", EAGER_KEY)},
           "max_abs_logit_diff": {
               "teacher.fp32 vs teacher.fp32.eager": float(np.abs(logits["teacher.fp32"] - logits[EAGER_KEY]).max()),
               "student.int8 vs student.fp32": float(np.abs(logits["student.int8"] - logits["student.fp32"]).max())},
           "int8": {"drop_points": drop, "max_drop": gate, "within_gate": None if gate is None else bool(drop <= gate)}}
    return acc, logits, images_np, labels


def _aarch64(cfg: BenchConfig, export: ExportInfo, logits: dict, images: np.ndarray, labels: np.ndarray) -> dict:
    from benchmarks.edge_aarch64 import run_aarch64, target

    tgt = target()
    why = tgt.missing()
    if cfg.aarch64 == "off":
        return {"status": "skipped", "message": "disabled (--no-aarch64)"}
    if why is not None:
        print(f"note: aarch64 check skipped: {why}", file=sys.stderr)
        return {"status": "skipped", "message": why}
    counts = {"teacher.fp32": cfg.aarch64_fp32_images, "student.fp32": cfg.aarch64_fp32_images,
              "student.int8": cfg.aarch64_images}
    print(f"  aarch64 under qemu (emulated): images per model {counts} ...", flush=True)
    result = run_aarch64(export, images, labels, {r: logits[r] for r in ORT_ROLES},
                         open_run(cfg.run).bench_dir / "aarch64", counts, tgt)
    if result["status"] != "ok":
        print(f"warning: aarch64 check {result['status']}: {result['message']}", file=sys.stderr)
    else:
        print(f"  aarch64 verdict: {'PASS' if result['passed'] else 'FAIL'} (" + "; ".join(f"{k} {r['check']}: {'pass' if r['passed'] else 'FAIL'}, agreement {r['prediction_agreement']:.2f}%" for k, r in result["models"].items()) + ")", flush=True)
    return result


def run_bench(cfg: BenchConfig, command: str = "") -> dict:
    """Run everything for one run folder and write its bench outputs; returns the report dict."""
    from benchmarks.edge_report import write_outputs
    from toolkit.models.checkpoint import load_model
    from toolkit.models.profile import count_params

    cfg.validate()
    load_start = _loadavg()
    run = open_run(cfg.run)
    summary = run.read_summary()
    export = load_export(run.export_dir)
    teacher_name = summary.get("teacher", {}).get("name")
    if not teacher_name:
        raise ToolkitError(f"{run.summary} has no teacher.name")
    teacher_ckpt = run.root / summary.get("teacher", {}).get("checkpoint", "teacher.pt")
    classes = summary.get("classes") or (export.manifest.classes if export.manifest is not None else None)
    teacher = load_model(teacher_name, teacher_ckpt if teacher_ckpt.is_file() else run.checkpoint("teacher"),
                         num_classes=len(classes) if classes else 10)
    print(f"bench-edge {run.root}: teacher {teacher_name}, student {summary.get('student', {}).get('name')}, "
          f"batches {list(cfg.batches)}, threads {list(cfg.threads)}", flush=True)
    latency = measure_latency(cfg, export, teacher)
    accuracy, logits, images, labels = measure_accuracy(cfg, export, teacher)
    print(f"  accuracy on {accuracy['n']} test images: "
          + ", ".join(f"{k} {v['top1']:.2f}%" for k, v in accuracy["models"].items()), flush=True)
    aarch64 = _aarch64(cfg, export, logits, images, labels)
    report = {
        "schema": REPORT_SCHEMA, "schema_version": 1, "run": run.root.name, "run_dir": str(run.root),
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
        "preset": summary.get("preset"),
        "machine": {**machine_info(cfg.threads), "load_average_1min": {"start": load_start, "end": _loadavg()}},
        "settings": {"batches": list(cfg.batches), "threads": list(cfg.threads), "timing": asdict(cfg.timing),
                     "interleaved_rounds": cfg.rounds,
                     "seed": cfg.seed, "input": f"numpy default_rng(seed).random((batch, {', '.join(map(str, input_shape(export)))})) float32 in [0, 1)",
                     "ort_settings": cfg.ort.to_dict(), "inter_op_threads_torch": "default",
                     "test_subset": cfg.test_subset, "quick": cfg.quick, "speedup_basis": "p50"},
        "export": {"folder": str(export.folder), "schema": export.schema, "max_int8_drop": export.max_int8_drop},
        "models": _model_table(export, summary, teacher_ckpt, count_params(teacher)),
        "latency": latency, "speedups": speedups(latency), "accuracy": accuracy, "aarch64": aarch64,
    }
    bench_dir = run.bench_dir
    bench_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(report, bench_dir)
    atomic_write_json(bench_dir / "report.json", report)
    return report


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ToolkitError(f"{what} must be comma-separated integers, got '{text}'") from None
    if not values:
        raise ToolkitError(f"{what} is empty")
    return values


def config_from_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_edge", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run name (runs/<name>) or run folder, e.g. demo or runs/demo "
                   "(reads export/, teacher.pt, summary.json)")
    p.add_argument("--batches", help="comma-separated batch sizes (default 1,8,64; quick 1,8)")
    p.add_argument("--threads", help="comma-separated intra-op thread counts (default 1,2; quick 1)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--runs", type=int, help="fixed number of timed runs per configuration")
    g.add_argument("--duration", type=float, help="seconds of timed runs per configuration (default 2; quick 0.25)")
    p.add_argument("--warmup", type=int, help="untimed warm-up runs per configuration (default 5; quick 2)")
    p.add_argument("--min-runs", type=int, help="floor on timed runs in duration mode (default 10; quick 5)")
    p.add_argument("--rounds", type=int, help="timed runs split into N rounds alternating between models (default 5; quick 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed timing input")
    p.add_argument("--test-subset", type=int, help="first N test images for accuracy (default all; quick 1000)")
    p.add_argument("--quick", action="store_true", help="smoke settings (automatic when summary.json says preset smoke)")
    a = p.add_mutually_exclusive_group()
    a.add_argument("--aarch64", dest="aarch64", action="store_const", const="on",
                   help="run the aarch64 emulation check (default: when .aarch64/ is set up)")
    a.add_argument("--no-aarch64", dest="aarch64", action="store_const", const="off")
    p.add_argument("--aarch64-images", type=int, help="test images for the int8 model under emulation (default 500; quick 100)")
    p.add_argument("--aarch64-fp32-images", type=int,
                   help="test images for each fp32 model under emulation (default 32; quick 8; emulated float is slow)")
    p.add_argument("--graph-opt", default="all", choices=["disable", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimisation level (default all)")
    p.add_argument("--no-spin", action="store_true", help="disable intra-op thread spinning")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: toolkit.data search order)")
    args = p.parse_args(argv)

    run = resolve_run(args.run)
    quick = args.quick
    if not quick and (run / "summary.json").is_file():
        try:
            quick = open_run(run).read_summary().get("preset") == "smoke"
        except ToolkitError:
            pass
    base = BenchConfig(run=run, quick=quick, **(QUICK if quick else {}))
    t = base.timing
    timing = TimingPlan(warmup=t.warmup if args.warmup is None else args.warmup,
                        runs=args.runs or 0,
                        duration_s=t.duration_s if args.duration is None else args.duration,
                        min_runs=t.min_runs if args.min_runs is None else args.min_runs)
    cfg = BenchConfig(
        run=run, quick=quick, timing=timing, seed=args.seed, rounds=args.rounds or base.rounds,
        batches=_ints(args.batches, "--batches") if args.batches else base.batches,
        threads=_ints(args.threads, "--threads") if args.threads else base.threads,
        test_subset=args.test_subset if args.test_subset is not None else base.test_subset,
        aarch64=args.aarch64 or "auto",
        aarch64_images=args.aarch64_images if args.aarch64_images is not None else base.aarch64_images,
        aarch64_fp32_images=args.aarch64_fp32_images if args.aarch64_fp32_images is not None else base.aarch64_fp32_images,
        ort=OrtSettings(graph_optimization=args.graph_opt, allow_spinning=not args.no_spin),
        data_dir=args.data_dir)
    cfg.validate()
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = config_from_args(argv)
        report = run_bench(cfg, command="python -m benchmarks.bench_edge " + shlex.join(argv))
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = open_run(cfg.run).bench_dir
    for s in report["speedups"]:
        print(f"  speed-up student int8, batch {s['batch']}, {s['threads']} thread(s): "
              f"{s['int8_vs_teacher_ort_fp32']:.2f}x vs teacher ORT fp32, {s['int8_vs_teacher_eager']:.2f}x vs eager")
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, " + ", ".join(str(out / p) for p in report["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
