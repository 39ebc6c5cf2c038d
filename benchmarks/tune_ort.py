"""Tune ONNX Runtime CPU session options (and compare int8 recipes) on random-weight teacher/student pairs.

    python -m benchmarks.tune_ort [--pairs resnet56:resnet20,mobilenetv2_cifar:mobilenetv2_cifar_L5]
                                  [--threads 1] [--batch 1] [--runs 300] [--out runs/_tune/tune.json]

For each pair: export teacher and student (random weights, fixed seed) to ONNX and quantize the student with each int8
recipe (a ``deploy.steps.QuantizeConfig``), with the toolkit's own export steps (``deploy.steps``: TorchScript
exporter, ``quantize_onnx``), then time every model under each session-option variant (batch and threads as given) with
the one timer (``edgecommon.timing``) and print p50 latency and the speed-ups student int8 vs teacher ORT fp32 and vs
teacher PyTorch eager, measured in the same process. All sessions of a pair are timed interleaved (rounds alternating
between them), so a busy period of a shared CPU affects every variant alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edgecommon.timing import TimingPlan, fixed_input, ort_callable, summarize, time_interleaved
from benchmarks.edge_latency import OrtSettings, ort_session, torch_callable, torch_threads
from deploy.steps import ExportOnnxConfig, QuantizeConfig, export_onnx, quantize_onnx
from toolkit import ToolkitError
from toolkit.io import atomic_write_json
from toolkit.models import build_model

SESSION_VARIANTS: dict[str, OrtSettings] = {
    "ort-defaults": OrtSettings(graph_optimization="all", allow_spinning=True, inter_op_threads=0),
    "basic-opt": OrtSettings(graph_optimization="basic"),
    "extended-opt": OrtSettings(graph_optimization="extended"),
    "all-opt": OrtSettings(graph_optimization="all"),
    "all-opt+no-spin": OrtSettings(graph_optimization="all", allow_spinning=False),
    "all-opt+no-mem-pattern+no-arena": OrtSettings(graph_optimization="all", enable_mem_pattern=False,
                                                   enable_cpu_mem_arena=False),
    "all-opt+parallel": OrtSettings(graph_optimization="all", execution_mode="parallel", inter_op_threads=2),
}

INT8_RECIPES: dict[str, QuantizeConfig] = {
    "u8s8-per-channel": QuantizeConfig(),
    "u8s8-per-channel+no-preprocess": QuantizeConfig(preprocess=False),
    "u8s8-per-tensor": QuantizeConfig(per_channel=False),
    "s8s8-per-channel": QuantizeConfig(activation_type="QInt8"),
    "u8s8-per-channel+extra-options": QuantizeConfig(extra_options={"ForceQuantizeNoInputCheck": True,
                                                                     "QDQKeepRemovableActivations": False}),
}
EXPORT = ExportOnnxConfig(exporter="torchscript", opset=17)


def calibration_images(n: int = 128, seed: int = 0) -> np.ndarray:
    """Real CIFAR-10 training images when the data is present (better calibration), else seeded noise."""
    try:
        from toolkit.data import load_cifar10

        images = load_cifar10().train.images[:n].numpy()
        return images.astype(np.float32) / 255.0
    except ToolkitError:
        return fixed_input(n, seed)


def tune_pair(teacher_name: str, student_name: str, workdir: Path, batch: int, threads: int, plan: TimingPlan,
              variants: dict[str, OrtSettings], recipes: dict[str, QuantizeConfig], rounds: int = 10) -> dict:
    """Time every (session variant x model) of one pair, interleaved in ``rounds`` so CPU contention hits all alike."""
    torch.manual_seed(0)
    teacher, student = build_model(teacher_name).eval(), build_model(student_name).eval()
    paths = {"teacher.fp32": workdir / f"{teacher_name}.fp32.onnx",
             "student.fp32": workdir / f"{student_name}.fp32.onnx"}
    export_onnx(teacher, paths["teacher.fp32"], EXPORT)
    export_onnx(student, paths["student.fp32"], EXPORT)
    calib = calibration_images()
    for i, (name, recipe) in enumerate(recipes.items()):
        paths[f"student.int8[{name}]"] = workdir / f"{student_name}.int8.{i}.onnx"
        quantize_onnx(paths["student.fp32"], paths[f"student.int8[{name}]"], recipe, calib)
    x = fixed_input(batch)
    fns = {"teacher.eager": torch_callable(teacher, x)}
    for vname, settings in variants.items():
        for key, path in paths.items():
            fns[f"{vname}|{key}"] = ort_callable(ort_session(str(path), threads, settings), x)
    with torch_threads(threads):
        times = time_interleaved(fns, plan, rounds)
    stats = {key: summarize(t, batch) for key, t in times.items()}
    eager = stats["teacher.eager"].p50_ms
    result = {"teacher": teacher_name, "student": student_name, "batch": batch, "threads": threads,
              "teacher_eager": stats["teacher.eager"].to_dict(), "variants": {}}
    print(f"\n{teacher_name} -> {student_name}: batch {batch}, {threads} thread(s); teacher eager p50 {eager:.3f} ms "
          f"(min {stats['teacher.eager'].min_ms:.3f})")
    for vname, settings in variants.items():
        t, s_ = stats[f"{vname}|teacher.fp32"], stats[f"{vname}|student.fp32"]
        row = {"settings": settings.to_dict(), "teacher_fp32": t.to_dict(), "student_fp32": s_.to_dict(), "int8": {}}
        for rname in recipes:
            q = stats[f"{vname}|student.int8[{rname}]"]
            row["int8"][rname] = {**q.to_dict(), "vs_teacher_ort_fp32": t.p50_ms / q.p50_ms, "vs_teacher_eager": eager / q.p50_ms}
            print(f"  {vname:32s} teacher fp32 {t.p50_ms:7.3f}  student fp32 {s_.p50_ms:7.3f}  int8[{rname:30s}] "
                  f"{q.p50_ms:7.3f} ms -> {t.p50_ms / q.p50_ms:5.2f}x ORT fp32, {eager / q.p50_ms:5.2f}x eager")
        result["variants"][vname] = row
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune_ort", description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default="resnet56:resnet20,mobilenetv2_cifar:mobilenetv2_cifar_L5")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds over all sessions")
    p.add_argument("--variants", default=",".join(SESSION_VARIANTS), help="comma-separated names of session variants")
    p.add_argument("--recipes", default=",".join(INT8_RECIPES), help="comma-separated names of int8 recipes")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    try:
        variants = {v: SESSION_VARIANTS[v] for v in args.variants.split(",")}
        recipes = {r: INT8_RECIPES[r] for r in args.recipes.split(",")}
        pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
        plan = TimingPlan(warmup=args.warmup, runs=args.runs)
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for teacher_name, student_name in pairs:
                results.append(tune_pair(teacher_name, student_name, Path(tmp), args.batch, args.threads, plan,
                                         variants, recipes, args.rounds))
        if args.out:
            atomic_write_json(args.out, {"plan": asdict(plan), "results": results})
    except (ToolkitError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
