"""``python -m benchmarks.bench_edge --run runs/<name>``: latency, accuracy parity and an aarch64 check of an export.

Models: every artifact in ``runs/<name>/export/manifest.json`` (teacher fp32/int8, student fp32/int8, .ort and
batch-1 .ort, OpenVINO IR, ExecuTorch .pte, ...) on its runtime, each ONNX file also on every other installed runtime
that reads ONNX (OpenVINO) (``benchmarks.edge_runtimes``; a missing runtime or an artifact that fails to load is one
skip line); plus the teacher in PyTorch eager fp32 from ``runs/<name>/teacher.pt``, the way it ran before export.

Latency (ONNX Runtime perf-test / MLPerf style): fixed seeded input, warm-up runs, then a fixed number of timed runs
(``--runs``) or a fixed duration (``--duration``, at least ``--min-runs``), per model x batch x intra-op threads;
mean/min/p50/p90/p99 ms per batch and images/s; speed-ups of the student int8 from p50s measured in the same run.
Accuracy: top-1 and per-class on the CIFAR-10 test set (``--test-subset N``: the first N images), agreement of
student int8 with student fp32 and with the teacher, int8 drop against the export's gate.
Fixed-batch artifacts (.b1.ort, .pte) are timed at their batch only and scored at it on at most
``--fixed-batch-images`` test images; every artifact's agreement is against its fp32 ONNX twin. Peak resident memory
per session in a fresh subprocess each (``benchmarks.edge_memory``); the accuracy-latency Pareto frontier with the
artifact to ship per latency budget (``benchmarks.edge_pareto``); speed-ups of the shipped student on each runtime.
aarch64 (optional): the same ONNX files under qemu with the aarch64 ONNX Runtime (see ``benchmarks/aarch64``).
Writes ``runs/<name>/bench/report.json``, ``report.md`` and PNG plots. Exit 2 with one ``error:`` line on bad input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import edge_runtimes
from benchmarks.edge_accuracy import ORT_ROLES, measure_accuracy, ort_logits  # noqa: F401 - ort_logits re-exported
from benchmarks.edge_export import ExportInfo, load_export
from benchmarks.edge_machine import CPU_FLAGS, _loadavg, machine_info  # noqa: F401 - CPU_FLAGS re-exported
from benchmarks.edge_latency import OrtSettings
from benchmarks import edge_memory
from benchmarks.edge_pareto import common_accuracy, pareto
from benchmarks.edge_runtimes import EAGER_KEY
from edgecommon.hashing import sha256_file
from edgecommon.timing import TimingPlan
from toolkit import ToolkitError
from toolkit.io import atomic_write_json
from toolkit.runs import open_run, resolve_run

REPORT_SCHEMA = "edge-distill-bench-report"
SCHEMA_VERSION = 2
"""2: latency rows carry runtime/format/precision and cover every artifact; models/accuracy gain the other artifacts;
new keys artifacts, skipped, memory, pareto, runtime_speedups (version 1's keys are all still there)."""

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
    aarch64_openvino_images: int = 16
    """Test images each ONNX file runs on with OpenVINO under emulation (when set up; 0: not at all)."""
    ort: OrtSettings = field(default_factory=OrtSettings)
    data_dir: str | None = None
    quick: bool = False
    fixed_batch_images: int = 100_000
    """Test images (the first ones, within the test subset) each fixed-batch artifact is scored on, in a loop
    (default: all of them). The Pareto view compares every artifact on the images they all saw."""
    memory: bool = True
    memory_runs: int = 20

    def validate(self) -> None:
        if not self.batches or any(b < 1 for b in self.batches):
            raise ToolkitError(f"batch sizes must be >= 1, got {self.batches}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise ToolkitError(f"thread counts must be >= 1, got {self.threads}")
        if self.rounds < 1:
            raise ToolkitError(f"--rounds must be >= 1, got {self.rounds}")
        if self.test_subset is not None and self.test_subset < 1:
            raise ToolkitError(f"--test-subset must be >= 1, got {self.test_subset}")
        if self.aarch64_images < 0 or self.aarch64_fp32_images < 0 or self.aarch64_openvino_images < 0:
            raise ToolkitError("aarch64 image counts must be >= 0")
        if self.fixed_batch_images < 1 or self.memory_runs < 1:
            raise ToolkitError(f"--fixed-batch-images and memory runs must be >= 1, got {self.fixed_batch_images}, "
                               f"{self.memory_runs}")
        if self.aarch64 not in ("auto", "on", "off"):
            raise ToolkitError(f"aarch64 mode must be auto, on or off, got {self.aarch64}")


QUICK = {"batches": (1, 8), "threads": (1,), "timing": TimingPlan(warmup=2, duration_s=0.25, min_runs=5),
         "test_subset": 1000, "rounds": 2, "aarch64_images": 100,
         "aarch64_fp32_images": 8, "aarch64_openvino_images": 8}


def _model_table(export: ExportInfo, summary: dict, teacher_ckpt: Path, teacher_params: int, arts) -> dict:
    names = {"teacher": summary.get("teacher", {}).get("name"), "student": summary.get("student", {}).get("name")}
    table = {EAGER_KEY: {"architecture": names["teacher"], "runtime": "pytorch eager", "precision": "fp32",
                         "file": str(teacher_ckpt), "params": teacher_params}}
    for role in ORT_ROLES:
        m = export.models[role]
        table[role] = {"architecture": m.architecture or names[role.split(".")[0]], "runtime": "onnxruntime cpu",
                       "precision": role.split(".")[1], "file": str(m.path), "sha256": m.sha256,
                       "size_bytes": m.path.stat().st_size, "format": "onnx"}
    for a in arts:
        if a.key not in table:
            table[a.key] = {"architecture": a.architecture or names.get(a.role), "runtime": a.runtime,
                            "precision": a.precision, "file": str(a.path), "size_bytes": a.size_bytes, "format": a.format,
                            "fixed_batch": a.fixed_batch, "manifest_entry": a.entry}
    return table


def input_shape(export: ExportInfo) -> tuple[int, int, int]:
    """(3, H, W) of the exported models, from the manifest's preprocessing (32x32 when absent)."""
    entry = export.manifest.models["student.fp32"] if export.manifest is not None else None
    size = entry.preprocessing.image_size if entry is not None else (32, 32)
    return (3, int(size[0]), int(size[1]))


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


def _aarch64(cfg: BenchConfig, export: ExportInfo, logits: dict, images: np.ndarray, labels: np.ndarray) -> dict:
    from benchmarks.edge_aarch64 import onnx_roles, run_aarch64, target

    tgt = target()
    why = tgt.missing()
    if cfg.aarch64 == "off":
        return {"status": "skipped", "message": "disabled (--no-aarch64)"}
    if why is not None:
        print(f"note: aarch64 check skipped: {why}", file=sys.stderr)
        return {"status": "skipped", "message": why}
    counts = {"teacher.fp32": cfg.aarch64_fp32_images, "student.fp32": cfg.aarch64_fp32_images,
              "student.int8": cfg.aarch64_images}
    ov_counts = {role: cfg.aarch64_openvino_images for role in onnx_roles(export)}
    print(f"  aarch64 under qemu (emulated): images per model {counts}, OpenVINO {ov_counts} ...", flush=True)
    result = run_aarch64(export, images, labels, {r: logits[r] for r in ORT_ROLES},
                         open_run(cfg.run).bench_dir / "aarch64", counts, tgt, openvino_counts=ov_counts)
    if result["status"] != "ok":
        print(f"warning: aarch64 check {result['status']}: {result['message']}", file=sys.stderr)
    else:
        def row(k, r):
            if r["status"] != "ok":
                return f"{k} skipped: {r['message']}"
            return f"{k} {r['check']}: {'pass' if r['passed'] else 'FAIL'}, agreement {r['prediction_agreement']:.2f}%"
        by_rt = ", ".join(f"{rt} {'pass' if ok else 'FAIL'}" for rt, ok in result.get("passed_by_runtime", {}).items())
        print(f"  aarch64 verdict: {'PASS' if result['passed'] else 'FAIL'} [{by_rt}] ("
              + "; ".join(row(k, r) for k, r in result["models"].items()) + ")", flush=True)
    return result


def _artifacts(export: ExportInfo):
    """Every (artifact, runtime) row of the manifest (``edge_runtimes.enumerate_artifacts``); an artifact beyond the
    three checked by ``load_export`` whose file fails its sha256 becomes a skip line."""
    arts, skipped = edge_runtimes.enumerate_artifacts(export.manifest, export.folder)
    digests: dict[str, str] = {}
    kept = []
    for a in arts:
        if a.entry not in ORT_ROLES:
            want = export.manifest.models[a.entry].sha256.lower()
            got = digests.setdefault(a.entry, sha256_file(a.path))
            if got != want:
                skipped.append({"key": a.key, "reason": f"{a.path.name} fails its sha256 check (manifest {want[:12]}..., "
                                                        f"file {got[:12]}...)"})
                continue
        kept.append(a)
    return kept, skipped


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
    arts, skipped = _artifacts(export)
    for line in edge_runtimes.skip_lines(skipped):
        print(f"  {line}", flush=True)
    shape = input_shape(export)
    latency = edge_runtimes.measure_latency(arts, teacher, cfg.batches, cfg.threads, cfg.timing, cfg.rounds, cfg.seed,
                                            shape, cfg.ort, skipped)
    lost = [s for s in skipped if s["key"] in ORT_ROLES]
    if lost:
        raise ToolkitError(f"{lost[0]['key']} cannot run on ONNX Runtime: {lost[0]['reason']}")
    accuracy, logits, images, labels = measure_accuracy(cfg, export, teacher)
    for key in accuracy["models"]:
        accuracy["models"][key]["n"] = accuracy["n"]
    edge_runtimes.add_twin_figures(accuracy["models"], logits)
    classes_ = list(next(iter(accuracy["models"].values()))["per_class"])
    export_top1 = {k: (e.accuracy or {}).get("top1") for k, e in export.manifest.models.items()}
    accuracy["models"].update(edge_runtimes.measure_accuracy(
        arts, logits, images, labels, classes_, max(cfg.threads), cfg.eval_batch, cfg.fixed_batch_images, cfg.ort,
        skipped, export_top1))
    accuracy["fixed_batch_images"] = min(cfg.fixed_batch_images, accuracy["n"])
    print(f"  accuracy on {accuracy['n']} test images: "
          + ", ".join(f"{k} {v['top1']:.2f}%" + (f" (n={v['n']})" if v.get("n") != accuracy["n"] else "")
                      for k, v in accuracy["models"].items()), flush=True)
    arts = [a for a in arts if not any(s["key"] == a.key for s in skipped)]
    memory = None
    if cfg.memory:
        n_classes = len(classes) if classes else 10
        eager = {"key": EAGER_KEY, "path": str(teacher_ckpt if teacher_ckpt.is_file() else run.checkpoint("teacher")),
                 "model": teacher_name, "num_classes": n_classes}
        memory = {"method": edge_memory.METHOD.format(runs=cfg.memory_runs),
                  "models": edge_memory.measure_all(arts, shape, eager, cfg.memory_runs)}
    aarch64 = _aarch64(cfg, export, logits, images, labels)
    ship = export.manifest.shipped_student
    report = {
        "schema": REPORT_SCHEMA, "schema_version": SCHEMA_VERSION, "run": run.root.name, "run_dir": str(run.root),
        "created_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command,
        "preset": summary.get("preset"),
        "machine": {**machine_info(cfg.threads), "load_average_1min": {"start": load_start, "end": _loadavg()}},
        "settings": {"batches": list(cfg.batches), "threads": list(cfg.threads), "timing": asdict(cfg.timing),
                     "interleaved_rounds": cfg.rounds,
                     "seed": cfg.seed, "input": f"numpy default_rng(seed).random((batch, {', '.join(map(str, input_shape(export)))})) float32 in [0, 1)",
                     "ort_settings": cfg.ort.to_dict(), "inter_op_threads_torch": "default",
                     "test_subset": cfg.test_subset, "quick": cfg.quick, "speedup_basis": "p50",
                     "fixed_batch_images": cfg.fixed_batch_images, "memory": cfg.memory, "memory_runs": cfg.memory_runs},
        "export": {"folder": str(export.folder), "schema": export.schema, "max_int8_drop": export.max_int8_drop},
        "models": _model_table(export, summary, teacher_ckpt, count_params(teacher), arts),
        "latency": latency, "speedups": speedups(latency), "accuracy": accuracy, "aarch64": aarch64,
        "artifacts": [a.to_dict() for a in arts], "skipped": skipped, "memory": memory,
        "pareto": pareto(latency, common_accuracy(logits, labels)), "ship": ship,
        "runtime_speedups": edge_runtimes.runtime_speedups(latency, arts, ship),
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
    p.add_argument("--aarch64-openvino-images", type=int,
                   help="test images for each ONNX file on OpenVINO under emulation (default 16; quick 8; 0: none)")
    p.add_argument("--graph-opt", default="all", choices=["disable", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimisation level (default all)")
    p.add_argument("--no-spin", action="store_true", help="disable intra-op thread spinning")
    p.add_argument("--data-dir", help="CIFAR-10 folder (default: toolkit.data search order)")
    p.add_argument("--fixed-batch-images", type=int, default=100_000,
                   help="test images each fixed-batch artifact (.b1.ort, .pte) is scored on, in a loop at its batch "
                        "(default: all, within --test-subset; the Pareto view uses the images every artifact saw)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory check (one fresh subprocess per artifact)")
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
        aarch64_openvino_images=(args.aarch64_openvino_images if args.aarch64_openvino_images is not None
                                 else base.aarch64_openvino_images),
        ort=OrtSettings(graph_optimization=args.graph_opt, allow_spinning=not args.no_spin),
        data_dir=args.data_dir, fixed_batch_images=args.fixed_batch_images, memory=args.memory)
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
