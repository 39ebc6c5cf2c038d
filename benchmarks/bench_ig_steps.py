"""``ig.steps=auto`` on real teachers: the steps it chooses, its completeness error and map correlation against the
50-step reference, and the IG time per image at the chosen count against 50 steps, measured side by side.

    python -m benchmarks.bench_ig_steps [--teachers resnet56,resnet20] [--sample 32] [--time-images 16]
        [--repeats 3] [--threads 2] [--out reports/pipeline] [--quick]

Each teacher is a trained checkpoint from ``../shared/checkpoints`` (the ResNet-CIFAR-10 family: no MobileNetV2-CIFAR
teacher checkpoint is stored there, so MobileNetV2 is reported as missing unless ``--mobilenet-checkpoint`` names
one; ``--allow-random mobilenetv2_cifar`` reports a random-init one, labelled as such). The choice runs exactly as the
pipeline's (``toolkit.attribution.steps.choose_ig_steps``: seeded sample of CIFAR-10 training images, bf16 autocast on
CPU). Timing: ``compute_ig_maps`` over ``--time-images`` training images at the chosen count and at 50 steps,
alternated ``--repeats`` times (median, min-max). Writes ``ig-steps.json`` and ``ig-steps.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from toolkit import ToolkitError

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = {
    "resnet56": "../shared/checkpoints/resnet-cifar10/resnet56-4bfd9763.th",
    "resnet44": "../shared/checkpoints/resnet-cifar10/resnet44-014dd654.th",
    "resnet32": "../shared/checkpoints/resnet-cifar10/resnet32-d509ac18.th",
    "resnet20": "../shared/checkpoints/resnet-cifar10/resnet20-12fca82f.th",
}


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 6) for v in values]}


def bench_teacher(name: str, checkpoint: str | None, data, args) -> dict:
    from toolkit.attribution import compute_ig_maps
    from toolkit.attribution.steps import choose_ig_steps
    from toolkit.config import IGConfig
    from toolkit.models import build_model, load_model

    cpu = torch.device("cpu")
    if checkpoint:
        path = Path(checkpoint)
        path = path if path.is_absolute() or path.exists() else REPO / checkpoint
        teacher = load_model(name, path).eval()
        weights = f"trained ({Path(checkpoint).name})"
        from toolkit.models.checkpoint import read_checkpoint

        recorded = ((read_checkpoint(path).get("meta") or {}).get("result") or {})  # a toolkit teacher.pt records its run
        if isinstance(recorded.get("test_acc"), (int, float)):
            weights = (f"trained ({checkpoint}: {recorded.get('epochs')} epochs on {recorded.get('train_size'):,} images, "
                       f"test top-1 {recorded['test_acc']:.2f}%)")
    else:
        torch.manual_seed(0)
        teacher = build_model(name).eval()
        weights = "random init (no trained checkpoint stored)"
    cfg = IGConfig(steps="auto", auto_sample=args.sample, auto_seed=args.seed, batch_size=16)
    t0 = time.perf_counter()
    choice = choose_ig_steps(teacher, data.train.images, data.train.labels, cfg, cpu, args.precision)
    search_s = time.perf_counter() - t0
    chosen = next((c for c in choice.candidates if c.steps == choice.steps), None)
    n = min(args.time_images, len(data.train))
    g = torch.Generator().manual_seed(args.seed + 1)
    rows = torch.randperm(len(data.train), generator=g)[:n].sort().values
    images, labels = data.train.images[rows], data.train.labels[rows]
    timings: dict[int, list[float]] = {choice.steps: [], choice.reference_steps: []}
    compute_ig_maps(teacher, images[:2], labels[:2], dataclasses.replace(cfg, steps=2), cpu, args.precision, progress=False)
    for _ in range(args.repeats):
        for steps in timings:  # alternate: contention hits both counts alike
            t = time.perf_counter()
            compute_ig_maps(teacher, images, labels, dataclasses.replace(cfg, steps=steps), cpu, args.precision, progress=False)
            timings[steps].append((time.perf_counter() - t) / n)
    per_chosen, per_ref = _spread(timings[choice.steps]), _spread(timings[choice.reference_steps])
    ratio = [r / c for r, c in zip(timings[choice.reference_steps], timings[choice.steps])]
    return {
        "teacher": name, "weights": weights, "checkpoint": checkpoint, "chosen_steps": choice.steps, "fell_back": choice.fell_back,
        "completeness_error_chosen": chosen.completeness_error if chosen else choice.reference_completeness_error,
        "completeness_error_50": choice.reference_completeness_error,
        "correlation_vs_50": chosen.correlation if chosen else 1.0,
        "candidates": [dataclasses.asdict(c) for c in choice.candidates],
        "search_seconds": search_s, "sample_size": choice.sample_size, "sample_seed": choice.sample_seed,
        "tolerance": choice.tolerance, "min_corr": choice.min_corr,
        "time_images": n, "seconds_per_image_chosen": per_chosen, "seconds_per_image_50": per_ref,
        "speedup_vs_50": _spread(ratio),
        "time_saved_vs_50_per_20000_images_min": (per_ref["median"] - per_chosen["median"]) * 20000 / 60,
    }


def write_reports(out: Path, result: dict) -> None:
    from toolkit.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "ig-steps.json", result)
    lines = ["# ig.steps=auto on real teachers", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpu']} ({result['machine']['cores']} cores; flags "
             f"{', '.join(result['machine']['flags']) or 'none of note'}), torch {result['machine']['torch']}, "
             f"{result['threads']} threads, precision {result['precision']}; load average (1 min) "
             f"{result['load_start'][0]:.2f} at start, {result['load_end'][0]:.2f} at end. Data: {result['data']}.", "",
             "Choice on a seeded sample of CIFAR-10 training images (`toolkit.attribution.steps.choose_ig_steps`, "
             "tolerance: mean relative completeness error <= 0.05, or the 50-step reference's own error when that is larger, "
             "and mean per-image map correlation >= 0.99 vs 50 steps). "
             "Time per image: `compute_ig_maps`, chosen count and 50 steps alternated; median (min-max) of the repeats.", "",
             "| teacher | weights | steps chosen | completeness err (chosen / 50) | map corr vs 50 | s/img chosen | s/img 50 | "
             "speed-up vs 50 | saved on 20,000 images at these timings |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["teachers"]:
        if "missing" in r:
            lines.append(f"| {r['teacher']} | {r['missing']} | - | - | - | - | - | - | - |")
            continue
        c, f, s = r["seconds_per_image_chosen"], r["seconds_per_image_50"], r["speedup_vs_50"]
        lines.append(f"| {r['teacher']} | {r['weights']} | {r['chosen_steps']}{' (fell back)' if r['fell_back'] else ''} | "
                     f"{r['completeness_error_chosen']:.4f} / {r['completeness_error_50']:.4f} | {r['correlation_vs_50']:.4f} | "
                     f"{1000 * c['median']:.1f} ms ({1000 * c['min']:.1f}-{1000 * c['max']:.1f}) | "
                     f"{1000 * f['median']:.1f} ms ({1000 * f['min']:.1f}-{1000 * f['max']:.1f}) | "
                     f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f}) | "
                     f"{r['time_saved_vs_50_per_20000_images_min']:.1f} min |")
    lines += ["", "Candidates tried (steps: completeness error, correlation):", ""]
    for r in result["teachers"]:
        if "candidates" in r:
            lines.append(f"- {r['teacher']}: " + "; ".join(f"{c['steps']}: {c['completeness_error']:.4f}, {c['correlation']:.4f}"
                                                          for c in r["candidates"]))
    atomic_write_text(out / "ig-steps.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    from benchmarks.bench_pipeline import load_average, machine_info

    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_ig_steps", description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", default="resnet56,resnet20,mobilenetv2_cifar")
    p.add_argument("--mobilenet-checkpoint", default=None)
    p.add_argument("--allow-random", default="", help="comma list of teachers measured random-init when no checkpoint exists")
    p.add_argument("--sample", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-images", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="bf16")
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny sizes (tests): 4-image sample, 2 timing images, 1 repeat")
    p.add_argument("--out", default="reports/pipeline")
    args = p.parse_args(argv)
    if args.quick:
        args.sample, args.time_images, args.repeats = 4, 2, 1
    try:
        from toolkit.data import load_cifar10, make_synthetic

        torch.set_num_threads(args.threads)
        data = make_synthetic(n_train_per_class=4) if args.synthetic else load_cifar10()
        load_start = load_average()
        checkpoints = dict(CHECKPOINTS)
        if args.mobilenet_checkpoint:
            checkpoints["mobilenetv2_cifar"] = args.mobilenet_checkpoint
        results = []
        for name in [t.strip() for t in args.teachers.split(",") if t.strip()]:
            ckpt = checkpoints.get(name)
            if ckpt is None and name not in args.allow_random.split(","):
                results.append({"teacher": name, "missing": "no trained checkpoint in ../shared/checkpoints (not measured)"})
                print(f"{name}: no trained checkpoint stored; skipped (--allow-random measures a random-init one)")
                continue
            r = bench_teacher(name, ckpt, data, args)
            print(f"{name}: chose {r['chosen_steps']} steps, completeness err {r['completeness_error_chosen']:.4f}, corr "
                  f"{r['correlation_vs_50']:.4f}, {r['speedup_vs_50']['median']:.2f}x faster than 50 steps", flush=True)
            results.append(r)
        result = {"command": "python -m benchmarks.bench_ig_steps " + " ".join(sys.argv[1:] if argv is None else argv),
                  "machine": machine_info(), "threads": args.threads, "precision": args.precision, "data": data.description,
                  "load_start": load_start, "load_end": load_average(), "teachers": results}
        write_reports(Path(args.out), result)
        print(f"wrote {Path(args.out) / 'ig-steps.json'} and ig-steps.md")
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
