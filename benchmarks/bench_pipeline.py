"""Pipeline speed, side by side on one machine: the reference way vs this toolkit's way, one row per change.

    python -m benchmarks.bench_pipeline [--model mobilenetv2_cifar_L5] [--teachers mobilenetv2_cifar,resnet56]
        [--train-images 2048] [--ig-images 16] [--repeats 3] [--threads 2] [--compile on|off] [--quick]
        [--out reports/pipeline]

Training (student ``--model``, plain CE; the first ``--warmup-batches`` of every epoch are not timed):
  reference   torchvision PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor) through a
              DataLoader over PIL images, fp32 eager, Adam, batch 64 (the reference code's way)
  ours rows   uint8 tensors + batched crop/flip (toolkit.data.augment), batch 128, then one change per row:
              fp32 -> bf16 autocast + channels_last + fp32 strided depthwise -> + torch.compile -> + fused optimizer
IG (each of ``--teachers``, ``--ig-steps`` Gauss-Legendre steps, ``--ig-images`` training images):
  reference   captum IntegratedGradients, fp32, internal_batch_size 200 (the reference code's plain use)
  ours rows   compute_ig_maps fp32 -> bf16 -> larger passes (max_rows) -> compiled -> 16 steps -> ig.steps=auto's count

Arithmetic ceiling: the same command times a large matrix product in fp32 and in bf16 (the machine's reachable
GFLOP/s at ``--threads``) and gives each IG row's achieved GFLOP/s (images/s x steps x 2 x the teacher's forward
MFLOPs: a forward and an input-gradient backward, weights frozen), so the report says how far any kernel could take
IG at the same step count (bf16 matmul rate / the reference's achieved rate).

Every variant is built once; then its timed pass is repeated ``--repeats`` times, the variants alternated within each
repeat (the reference first), so other jobs on a shared CPU slow both sides alike. Each row gives the median and
min-max of images/s and of the per-repeat ratio to the reference (same repeat) and to the row it builds on.
Writes ``bench-pipeline.json`` and ``bench-pipeline.md`` under ``--out`` (atomic), with the command, CPU model and
flags, torch version, threads and the load average at start and end.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from edgecommon.machine import cpu_model_and_flags
from edgecommon.machine import load_average as edge_load_average
from toolkit import ToolkitError
from toolkit.config import IGConfig, OverlayConfig

REPO = Path(__file__).resolve().parents[1]
FLAGS_OF_NOTE = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
                 "asimd", "sve", "bf16", "i8mm")
TEACHER_CHECKPOINTS = {"resnet56": "../shared/checkpoints/resnet-cifar10/resnet56-4bfd9763.th",
                       "resnet20": "../shared/checkpoints/resnet-cifar10/resnet20-12fca82f.th"}


# ---------------------------------------------------------------- machine


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (NaN where the OS has none)."""
    return edge_load_average() or [float("nan")] * 3


def machine_info() -> dict:
    name, flags = cpu_model_and_flags()
    try:
        mkldnn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001
        mkldnn_bf16 = None
    return {"cpu": name, "cores": os.cpu_count(), "flags": [f for f in FLAGS_OF_NOTE if f in flags],
            "amx": any(f.startswith("amx") for f in flags), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkldnn_bf16": mkldnn_bf16,
            "python": platform.python_version(), "platform": platform.platform()}


# ---------------------------------------------------------------- statistics


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 4) for v in values]}


# ---------------------------------------------------------------- training variants


class _PILDataset(torch.utils.data.Dataset):
    """CIFAR10-style dataset: PIL images made from uint8 (N, 32, 32, 3) arrays, transformed per item."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        from PIL import Image

        self.images = [Image.fromarray(a) for a in images_hwc]
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def _timed_epoch(step: Callable, batches, warmup: int) -> float:
    """Run ``step(x, y)`` over ``batches``; images per wall second, the first ``warmup`` batches excluded."""
    t0, seen = None, 0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        step(x, y)
        if i >= warmup:
            seen += x.shape[0]
    if t0 is None or seen == 0:
        raise ToolkitError("too few training images for the warm-up batches; raise --train-images")
    return seen / (time.perf_counter() - t0)


@dataclasses.dataclass
class Variant:
    key: str
    label: str
    base: str | None
    """The row this one adds its change to (``None``: the reference)."""
    run: Callable[[], float]
    """One timed pass; returns images per wall second."""
    setup_s: float = 0.0
    note: str = ""
    rates: list = dataclasses.field(default_factory=list)


def train_reference(model_name: str, images: torch.Tensor, labels: torch.Tensor, batch: int, workers: int, warmup: int) -> Callable[[], float]:
    from torchvision import transforms

    from toolkit.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    ds = _PILDataset(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)

    def step(x, y):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return lambda: _timed_epoch(step, loader, warmup)


def train_ours(model_name: str, images: torch.Tensor, labels: torch.Tensor, batch: int, warmup: int, *, precision: str,
               channels_last: bool, fp32_depthwise: bool, compile_mode: str = "off", fused: bool = False
               ) -> tuple[Callable[[], float], "object | None"]:
    """Our training step as toolkit.distill.trainer runs it (one change at a time). Returns (timed pass, the
    CompiledOrEager wrapper or None)."""
    from toolkit.attribution.ig import use_fp32_strided_depthwise
    from toolkit.data import index_batches, random_crop_flip, to_float
    from toolkit.device import autocast
    from toolkit.distill.compile import maybe_compile
    from toolkit.models import build_model

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = build_model(model_name).train()
    if fp32_depthwise:
        use_fp32_strided_depthwise(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    fwd = maybe_compile(model, compile_mode, cpu, "student", dynamic=False)
    g = torch.Generator().manual_seed(0)

    def batches():
        for idx in index_batches(images.shape[0], batch, g, drop_last=True):
            x, _ = random_crop_flip(to_float(images[idx]), g, 4)
            yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), labels[idx]

    def step(x, y):
        with autocast(cpu, precision):
            loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return (lambda: _timed_epoch(step, batches(), warmup)), (fwd if fwd is not model else None)


# ---------------------------------------------------------------- KD teacher forward variants


def teacher_forward(teacher, images: torch.Tensor, batch: int, how: str) -> tuple[Callable[[], float], dict]:
    """The frozen teacher's inference forward as KD runs it every student step (bf16 autocast, channels_last,
    ``batch`` images), ``how``: ``eager`` (the trainer's way today) or ``inductor_freezing`` (torch.compile with
    inductor's weight freezing: constant-folded BatchNorm, oneDNN-packed weights). Returns (timed pass over
    ``images``, a box with the last logits and the compile seconds)."""
    from toolkit.device import autocast

    cpu = torch.device("cpu")
    model = teacher.eval().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    xs = [(images[i:i + batch].float() / 255).contiguous(memory_format=torch.channels_last)
          for i in range(0, images.shape[0] - batch + 1, batch)]
    box: dict = {"compile_s": 0.0}
    fwd = model
    if how == "inductor_freezing":
        import torch._inductor.config as inductor_config

        fwd = torch.compile(model, dynamic=False)
        t0 = time.perf_counter()
        with inductor_config.patch(freezing=True), torch.no_grad(), autocast(cpu, "bf16"):
            fwd(xs[0])
        box["compile_s"] = time.perf_counter() - t0
    elif how != "eager":
        raise ToolkitError(f"unknown teacher forward variant {how!r}")

    def run() -> float:
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(cpu, "bf16"):
            box["logits"] = torch.cat([fwd(x).float() for x in xs])
        return len(xs) * batch / (time.perf_counter() - t0)

    return run, box


# ---------------------------------------------------------------- IG variants


def ig_reference(teacher, images: torch.Tensor, labels: torch.Tensor, steps: int, internal_batch: int, group: int
                 ) -> tuple[Callable[[], float], dict]:
    """captum's plain use: IntegratedGradients(teacher).attribute(x, baselines, target, n_steps, gausslegendre,
    internal_batch_size) in fp32, ``group`` images per call. Returns (timed pass, a dict receiving the maps)."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(teacher)
    x = images.float() / 255.0
    base = teacher.normalize.mean.detach().reshape(1, 3, 1, 1).expand_as(x)
    box: dict = {}
    ig.attribute(x[:1], baselines=base[:1], target=labels[:1], n_steps=2, method="gausslegendre", internal_batch_size=internal_batch)

    def run() -> float:
        t0 = time.perf_counter()
        attr = torch.cat([ig.attribute(x[i:i + group], baselines=base[i:i + group], target=labels[i:i + group], n_steps=steps,
                                       method="gausslegendre", internal_batch_size=max(internal_batch, min(group, len(x) - i)))
                          for i in range(0, x.shape[0], group)])
        box["maps"] = attr.abs().sum(1).detach()
        return x.shape[0] / (time.perf_counter() - t0)

    return run, box


def ig_ours(teacher, images: torch.Tensor, labels: torch.Tensor, cfg: IGConfig, precision: str, max_rows: int,
            compile_mode: str = "off") -> tuple[Callable[[], float], dict]:
    """compute_ig_maps' computation (same teacher preparation, batches and passes), with the prepared teacher made
    (and compiled) once, as one compute_ig_maps call does for all its images. Returns (timed pass, maps box)."""
    from toolkit.attribution.ig import (ig_attributions, ig_baseline, low_precision_dtype, prepare_teacher, quadrature)
    from toolkit.distill.compile import maybe_compile

    cpu = torch.device("cpu")
    low = low_precision_dtype(precision)
    model = prepare_teacher(teacher, cpu, fp32_strided_depthwise=low is not None)
    model = maybe_compile(model, compile_mode, cpu, "IG teacher", dynamic=False)
    weights, alphas = quadrature(cfg.method, cfg.steps)
    baseline = ig_baseline(teacher, cfg.baseline)
    box: dict = {"wrapper": model if compile_mode != "off" else None}

    def run() -> float:
        t0 = time.perf_counter()
        maps = []
        for s in range(0, images.shape[0], cfg.batch_size):
            x = images[s:s + cfg.batch_size].float().div_(255.0)
            attr = ig_attributions(model, x, labels[s:s + cfg.batch_size], baseline, weights, alphas, precision, max_rows)
            maps.append(attr.abs().sum(1))
        box["maps"] = torch.cat(maps)
        return images.shape[0] / (time.perf_counter() - t0)

    if compile_mode == "off":
        w2, a2 = quadrature(cfg.method, 2)
        ig_attributions(model, images[:1].float() / 255, labels[:1], baseline, w2, a2, precision, max_rows)  # warm-up
    return run, box


def map_agreement(maps: torch.Tensor, ref: torch.Tensor) -> dict:
    """Pearson correlation, relative L2 error, mean overlay change (prob 1, [0, 1] units) against ``ref``."""
    from toolkit.attribution import apply_ig_overlay

    a, b = maps.float().flatten(), ref.float().flatten()
    x = torch.full((maps.shape[0], 3, *maps.shape[1:]), 0.5)
    cfg = OverlayConfig(prob=1.0)
    oa, _ = apply_ig_overlay(x, maps, cfg, torch.Generator().manual_seed(0))
    ob, _ = apply_ig_overlay(x, ref, cfg, torch.Generator().manual_seed(0))
    return {"corr": float(torch.corrcoef(torch.stack([a, b]))[0, 1]), "rel_l2": float((a - b).norm() / b.norm()),
            "overlay_mean_abs": float((oa - ob).abs().mean()), "overlay_max_abs": float((oa - ob).abs().max())}


def student_logit_agreement(model_name: str, images: torch.Tensor) -> dict:
    """bf16 autocast vs fp32 logits of a fresh eval-mode student on the same images: top-1 agreement, max |diff|."""
    from toolkit.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name).eval()
    x = images.float() / 255.0
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.contiguous(memory_format=torch.channels_last)).float()
    return {"top1_agree": float((ref.argmax(1) == low.argmax(1)).float().mean()), "max_abs_logit_diff": float((ref - low).abs().max()),
            "logit_scale": float(ref.abs().max())}


def matmul_gflops(dtype: torch.dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of repeated (size x size) @ (size x size) products in ``dtype`` on the CPU at the current thread count
    (best of 3 timed bursts of about ``seconds`` each): what dense kernels reach on this machine."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b  # warm-up
    best, flop = 0.0, 2.0 * size ** 3
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            n += 1
        best = max(best, n * flop / (time.perf_counter() - t0) / 1e9)
    return best


def ig_gflops(img_per_s: float, steps: int, teacher_mflops: float) -> float:
    """Achieved GFLOP/s of an IG computation: a forward and an input-gradient backward (about one forward's FLOPs,
    weights frozen) per step and image."""
    return img_per_s * steps * 2 * teacher_mflops / 1e3


# ---------------------------------------------------------------- running and reporting


def measure(variants: list[Variant], repeats: int, log: Callable[[str], None]) -> None:
    """``repeats`` rounds; in each, every variant's timed pass once, in order (the reference first)."""
    for r in range(repeats):
        for v in variants:
            v.rates.append(v.run())
        log(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{v.key} {v.rates[-1]:.2f}" for v in variants))


def rows_of(variants: list[Variant]) -> list[dict]:
    by_key = {v.key: v for v in variants}
    ref = variants[0]
    rows = []
    for v in variants:
        row = {"key": v.key, "label": v.label, "base": v.base, "note": v.note, "setup_s": round(v.setup_s, 2),
               "img_per_s": spread(v.rates), "vs_reference": spread([a / b for a, b in zip(v.rates, ref.rates)])}
        if v.base is not None:
            base = by_key[v.base]
            row["vs_base"] = spread([a / b for a, b in zip(v.rates, base.rates)])
        rows.append(row)
    return rows


def _fmt_spread(s: dict, unit: str = "", digits: int = 2) -> str:
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def write_reports(out: Path, result: dict) -> None:
    from toolkit.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench-pipeline.json", result)
    m = result["machine"]
    lines = ["# Pipeline speed: ours vs the reference way, side by side", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, flags {', '.join(m['flags']) or 'none of note'} "
             f"(AMX: {'yes' if m['amx'] else 'no'}); torch {m['torch']} (CPU capability {m['cpu_capability']}); "
             f"{result['threads']} threads; load average (1/5/15 min) {' / '.join(f'{v:.2f}' for v in result['load_start'])} "
             f"at start, {' / '.join(f'{v:.2f}' for v in result['load_end'])} at end; {result['wall_s']:.0f} s wall. "
             f"Data: {result['data']}.", "",
             f"Each figure: median (min-max) over {result['repeats']} repeats; the variants alternate within each repeat, "
             "and each ratio is taken within one repeat (same load). 'vs base' is the gain of the row's one change over "
             "the row named in 'builds on'.", ""]
    if "train" in result:
        t = result["train"]
        lines += [f"## Training: {t['model']}, {t['images']} images per pass ({t['warmup_batches']} warm-up batches "
                  "excluded), plain CE", "",
                  "| row | builds on | img/s | vs reference | vs base | set-up s | note |", "|---|---|---:|---:|---:|---:|---|"]
        for r in t["rows"]:
            lines.append(f"| {r['label']} | {r['base'] or '-'} | {_fmt_spread(r['img_per_s'], '', 1)} | "
                         f"{_fmt_spread(r['vs_reference'], 'x')} | {_fmt_spread(r['vs_base'], 'x') if 'vs_base' in r else '-'} | "
                         f"{r['setup_s']:.1f} | {r['note']} |")
        if "bf16_logits" in t:
            a = t["bf16_logits"]
            lines += ["", f"bf16 cost proxy: a fresh student's logits bf16 vs fp32 on 256 images: top-1 agreement "
                          f"{a['top1_agree']:.3f}, max |diff| {a['max_abs_logit_diff']:.3g} (logit scale {a['logit_scale']:.3g})."]
        lines.append("")
    if "teacher_forward" in result:
        tf = result["teacher_forward"]
        lines += [f"## KD teacher forward: {tf['teacher']} ({tf['weights']}), {tf['images']} images in batches of "
                  f"{tf['batch']} (inference, frozen; every distilled student step runs it)", "",
                  "| row | img/s | vs eager | set-up s | top-1 agreement vs eager | max logit diff | note |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in tf["rows"]:
            lines.append(f"| {r['label']} | {_fmt_spread(r['img_per_s'], '', 0)} | {_fmt_spread(r['vs_reference'], 'x')} | "
                         f"{r['setup_s']:.1f} | {r['top1_agree_vs_eager']:.4f} | {r['max_abs_logit_diff']:.3g} | {r['note']} |")
        lines += ["", "Not wired into training yet: the figure says what compiling the teacher's forward would gain.", ""]
    if "distill" in result:
        d = result["distill"]
        t = d.get("timing") or {}
        acc = ", ".join(f"{k} {v:.2f}%" for k, v in d["test_acc"].items())
        lines += [f"## make distill: {d['run']} (preset {d['preset']})", "",
                  f"Wall time {d['seconds'] / 60:.1f} min, from the run's own summary.json; test top-1 {acc}."]
        if t:
            lines += ["", "| stage | minutes |", "|---|---:|"]
            lines += [f"| {k} | {v / 60:.1f} |" for k, v in t["stage_seconds"].items()]
            load = t.get("load_average_start"), t.get("load_average_end")
            lines += ["", f"Recorded by the run: {t['cpu']}, {t['torch_threads']} threads x {t['world_size']} process(es), "
                          f"torch {t['torch']}; load average (1/5/15 min) {load[0]} at start, {load[1]} at end."]
        lines.append("")
    peak = result.get("matmul_gflops")
    for ig in result.get("ig", []):
        lines += [f"## IG: {ig['teacher']} ({ig['weights']}), {ig['images']} images, {ig['steps']} steps unless the row "
                  "says otherwise", "",
                  "| row | builds on | img/s | vs reference | vs base | GFLOP/s | set-up s | maps vs captum fp32 (corr) | note |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in ig["rows"]:
            corr = r.get("agreement", {}).get("corr")
            gf = r.get("gflops")
            lines.append(f"| {r['label']} | {r['base'] or '-'} | {_fmt_spread(r['img_per_s'], '', 2)} | "
                         f"{_fmt_spread(r['vs_reference'], 'x')} | {_fmt_spread(r['vs_base'], 'x') if 'vs_base' in r else '-'} | "
                         f"{'-' if gf is None else f'{gf:.0f}'} | "
                         f"{r['setup_s']:.1f} | {'-' if corr is None else f'{corr:.4f}'} | {r['note']} |")
        if peak and "teacher_mflops" in ig:
            ceiling = ig_ceiling(ig, peak)
            lines += ["", f"Teacher forward: {ig['teacher_mflops']:.1f} MFLOPs per image. GFLOP/s = img/s x steps x 2 x "
                          f"that (forward + input-gradient backward). A {peak['size']}x{peak['size']} matrix product ran "
                          f"{peak['fp32']:.0f} GFLOP/s in fp32 and {peak['bf16']:.0f} in bf16 on this machine in this "
                          f"command: the reference reaches {ceiling['reference_fraction_of_fp32']:.0%} of the fp32 rate, "
                          f"so even IG running at the bf16 matrix-product rate would be {ceiling['ceiling_x']:.1f}x the "
                          f"reference at {ig['steps']} steps; beyond that only fewer steps (ig.steps=auto) gain."]
        lines.append("")
    if peak:
        lines += [f"Dense-kernel rates measured in this command ({result['threads']} threads): fp32 {peak['fp32']:.0f} "
                  f"GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s ({peak['size']}x{peak['size']} matrix products, best of 3).", ""]
    if result.get("aims"):
        lines += ["## Aims", "", "| aim | target | best measured (median, min-max) | row | met |", "|---|---:|---:|---|---|"]
        for a in result["aims"]:
            lines.append(f"| {a['aim']} | {a['target']} | {a['measured']} | {a['row']} | {a['met']} |")
        lines.append("")
    atomic_write_text(out / "bench-pipeline.md", "\n".join(lines))


DISTILL_AIM_MIN = 25.0
"""The issue's aim: `make distill` of the cpu preset within 25 minutes of wall time on 2 cores."""


def distill_run_timing(run_dir: Path) -> dict:
    """What a finished ``make distill`` run recorded about its own wall time (summary.json): total, per stage when
    the run recorded them, machine and load, and its test accuracies."""
    import json

    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ToolkitError(f"--distill-run: no readable summary.json in {run_dir} ({exc}); finish the run first") from None
    if "seconds" not in summary or "student" not in summary:
        raise ToolkitError(f"--distill-run: {path} has no wall time or student: not a finished make distill run")
    out = {"run": str(run_dir), "preset": summary.get("preset"), "seconds": summary["seconds"],
           "timing": summary.get("timing"), "test_acc": {r: summary[r]["test_acc"] for r in ("teacher", "student", "baseline")
                                                         if r in summary},
           "student_seconds": summary["student"].get("seconds"),
           "baseline_seconds": summary.get("baseline", {}).get("seconds")}
    return out


def ig_ceiling(ig: dict, peak: dict) -> dict:
    """How far IG could go at the reference's step count on this machine: the bf16 matrix-product rate over the
    reference's achieved GFLOP/s (an upper bound for any kernel at the same arithmetic)."""
    ref = ig["rows"][0]
    ref_gf = ig_gflops(ref["img_per_s"]["median"], ig["steps"], ig["teacher_mflops"])
    return {"reference_gflops": ref_gf, "reference_fraction_of_fp32": ref_gf / peak["fp32"],
            "ceiling_x": peak["bf16"] / ref_gf}


def _aims(result: dict) -> list[dict]:
    aims = []
    if "distill" in result:
        d = result["distill"]
        minutes = d["seconds"] / 60
        stages = (d.get("timing") or {}).get("stage_seconds")
        row = f"{d['run']} (preset {d['preset']})" + (
            ": " + ", ".join(f"{k} {v / 60:.1f}" for k, v in stages.items()) + " min" if stages else "")
        aims.append({"aim": "make distill, cpu preset, wall time", "target": f"<= {DISTILL_AIM_MIN:.0f} min",
                     "measured": f"{minutes:.1f} min", "row": row,
                     "met": "yes" if minutes <= DISTILL_AIM_MIN else f"no ({minutes - DISTILL_AIM_MIN:.1f} min over)"})
    if "train" in result:
        best = max(result["train"]["rows"][1:], key=lambda r: r["vs_reference"]["median"])
        s = best["vs_reference"]
        aims.append({"aim": f"train {result['train']['model']} vs the reference way", "target": ">= 2.5x",
                     "measured": _fmt_spread(s, "x"), "row": best["label"],
                     "met": "yes" if s["median"] >= 2.5 else f"no ({s['median'] / 2.5:.1%} of it)"})
    for ig in result.get("ig", []):
        same = [r for r in ig["rows"][1:] if r.get("steps") == ig["steps"]]
        for what, rows in (("same steps", same), ("with fewer steps", ig["rows"][1:])):
            if not rows:
                continue
            best = max(rows, key=lambda r: r["vs_reference"]["median"])
            s = best["vs_reference"]
            met = "yes" if s["median"] >= 8 else f"no ({s['median'] / 8:.1%} of it)"
            if what == "same steps" and result.get("matmul_gflops") and "teacher_mflops" in ig:
                met += f"; ceiling on this machine {ig_ceiling(ig, result['matmul_gflops'])['ceiling_x']:.1f}x"
            aims.append({"aim": f"IG {ig['teacher']} vs captum's plain use ({what})", "target": ">= 8x",
                         "measured": _fmt_spread(s, "x"), "row": best["label"], "met": met})
    return aims


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenetv2_cifar_L5", help="student trained in the training benchmark")
    p.add_argument("--teachers", default="mobilenetv2_cifar,resnet56",
                   help="teachers for the IG benchmark (resnet56/resnet20 load ../shared/checkpoints; others random init)")
    p.add_argument("--train-images", type=int, default=2048)
    p.add_argument("--ig-images", type=int, default=16)
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--ig-rows", default="32,64,128", help="max_rows per IG pass to try (the first is the default)")
    p.add_argument("--ref-ig-internal-batch", type=int, default=200, help="captum internal_batch_size (the reference's 200)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ref-batch-size", type=int, default=64, help="reference training batch (the paper's 64)")
    p.add_argument("--batch-size", type=int, default=128, help="our training batch")
    p.add_argument("--ref-workers", type=int, default=0, help="DataLoader workers for the reference")
    p.add_argument("--compile", choices=["on", "train", "off"], default="on",
                   help="include the torch.compile rows (train: the training row only)")
    p.add_argument("--warmup-batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="alternated repeats of every variant (median, min-max)")
    p.add_argument("--skip", choices=["train", "teacher", "ig"], action="append", default=[],
                   help="skip a part (teacher: the KD teacher-forward rows)")
    p.add_argument("--synthetic", action="store_true", help="synthetic images instead of CIFAR-10")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests: synthetic data, 96 training images in batches of 16/32, 2 IG images at 4 "
                        "steps, 2 repeats, 1 thread, no compile rows, teacher mobilenetv2_cifar only")
    p.add_argument("--distill-run", default=None,
                   help="a finished `make distill` run folder (runs/<name>) whose summary.json wall time is reported "
                        "against the 25-minute aim of the cpu preset")
    p.add_argument("--out", default="reports/pipeline", help="folder for bench-pipeline.json and .md")
    args = p.parse_args(argv)
    args.command = "python -m benchmarks.bench_pipeline" + ("".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)))
    if args.quick:
        args.synthetic, args.train_images, args.ig_images, args.ig_steps, args.repeats = True, 96, 2, 4, 2
        args.batch_size, args.ref_batch_size, args.warmup_batches, args.compile = 32, 16, 1, "off"
        args.teachers, args.ig_rows, args.threads = "mobilenetv2_cifar", "32,64", 1
    try:
        return _run(args)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _write_partial(args: argparse.Namespace, result: dict, t_start: float) -> None:
    """Write the report of what is measured so far (each section as it finishes)."""
    result["aims"] = _aims(result)
    result["load_end"] = load_average()
    result["wall_s"] = time.perf_counter() - t_start
    write_reports(Path(args.out), result)


def _run(args: argparse.Namespace) -> int:
    from toolkit.data import load_cifar10, make_synthetic
    from toolkit.models import build_model, get_spec, load_model
    from toolkit.models.profile import forward_mflops

    if min(args.threads, args.train_images, args.ig_images, args.repeats) < 1:
        raise ToolkitError("--threads, --train-images, --ig-images and --repeats must be >= 1")
    distill = distill_run_timing(Path(args.distill_run)) if args.distill_run else None  # bad folder: fail first
    teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    ig_rows = [int(r) for r in args.ig_rows.split(",") if r.strip()]
    get_spec(args.model)
    for t in teachers:
        get_spec(t)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = load_average()
    data = make_synthetic(n_train_per_class=max(args.train_images, args.ig_images) // 10 + 1) if args.synthetic else load_cifar10()
    train = data.train
    n_train = min(args.train_images, len(train))
    images, labels = train.images[:n_train], train.labels[:n_train]
    machine = machine_info()
    print(f"hardware: {machine['cpu']}, {machine['cores']} cores, flags {' '.join(machine['flags'])}; torch {torch.__version__}; "
          f"threads {args.threads}; load average at start {load_start}")
    result: dict = {"command": args.command, "machine": machine, "threads": args.threads, "data": data.description,
                    "repeats": args.repeats, "load_start": load_start, "units": "images per wall-clock second"}

    def log(text: str) -> None:
        print(text, flush=True)

    if "train" not in args.skip:
        log(f"\n== student training: {args.model}, {n_train} images per pass ==")
        w = args.warmup_batches
        common = dict(model_name=args.model, images=images, labels=labels, batch=args.batch_size, warmup=w)
        variants = [Variant("reference", f"reference: PIL + DataLoader(workers={args.ref_workers}), fp32, batch {args.ref_batch_size}",
                            None, train_reference(args.model, images, labels, args.ref_batch_size, args.ref_workers, w))]
        specs = [("fp32", "ours: uint8 tensors + batched crop/flip, fp32, batch %d" % args.batch_size, "reference",
                  dict(precision="fp32", channels_last=False, fp32_depthwise=False)),
                 ("bf16", "+ bf16 autocast + channels_last + fp32 strided depthwise", "fp32",
                  dict(precision="bf16", channels_last=True, fp32_depthwise=True)),
                 ("fused", "+ fused optimizer (Adam fused=True)", "bf16",
                  dict(precision="bf16", channels_last=True, fp32_depthwise=True, fused=True))]
        if args.compile in ("on", "train"):
            specs.insert(2, ("compile", "+ torch.compile (inductor, student forward+backward)", "bf16",
                             dict(precision="bf16", channels_last=True, fp32_depthwise=True, compile_mode="on")))
        for key, label, base, kw in specs:
            run, wrapper = train_ours(**common, **kw)
            v = Variant(key, label, base, run)
            if wrapper is not None:  # compile now (probe on the first batches), outside the timed passes
                t0 = time.perf_counter()
                run()
                v.setup_s = time.perf_counter() - t0
                v.note = f"compile + first pass {v.setup_s:.0f} s" + (f"; FELL BACK to eager: {wrapper.reason}" if wrapper.fell_back else "")
            variants.append(v)
        measure(variants, args.repeats, log)
        result["train"] = {"model": args.model, "images": n_train, "warmup_batches": w, "ref_batch": args.ref_batch_size,
                           "our_batch": args.batch_size, "rows": rows_of(variants)}
        result["train"]["bf16_logits"] = student_logit_agreement(args.model, images[:256])
        _write_partial(args, result, t_start)

    if "teacher" not in args.skip:
        name = teachers[-1] if teachers else "resnet56"
        ckpt = TEACHER_CHECKPOINTS.get(name)
        trained = bool(ckpt and not args.synthetic and (REPO / ckpt).is_file())
        torch.manual_seed(0)
        teacher = load_model(name, REPO / ckpt) if trained else build_model(name)
        weights = f"trained, {Path(ckpt).name}" if trained else "random-init weights (speed does not depend on them)"
        n_fwd = min(images.shape[0], max(args.batch_size, 8 * args.batch_size if not args.quick else args.batch_size))
        log(f"\n== KD teacher forward: {name} ({weights}), {n_fwd} images in batches of {args.batch_size} ==")
        variants, boxes = [], {}
        for key, label, base in (("eager", "eager, bf16 autocast, channels_last (the trainer's way)", None),
                                 ("inductor_freezing", "torch.compile (inductor, weight freezing)", "eager")):
            if key != "eager" and args.compile == "off":
                continue
            run, box = teacher_forward(teacher, images[:n_fwd], args.batch_size, key)
            v = Variant(key, label, base, run, setup_s=box["compile_s"])
            if box["compile_s"]:
                v.note = f"compile + first batch {box['compile_s']:.0f} s (once per run and batch shape)"
            variants.append(v)
            boxes[key] = box
        measure(variants, args.repeats, log)
        rows = rows_of(variants)
        ref_logits = boxes["eager"]["logits"]
        for row in rows:
            lg = boxes[row["key"]]["logits"]
            row["top1_agree_vs_eager"] = float((lg.argmax(1) == ref_logits.argmax(1)).float().mean())
            row["max_abs_logit_diff"] = float((lg - ref_logits).abs().max())
        result["teacher_forward"] = {"teacher": name, "weights": weights, "images": n_fwd, "batch": args.batch_size,
                                     "rows": rows}
        _write_partial(args, result, t_start)

    if distill is not None:
        result["distill"] = distill
        _write_partial(args, result, t_start)

    if "ig" not in args.skip:
        result["matmul_gflops"] = {"size": 1024, "fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
        log(f"\ndense kernels: fp32 {result['matmul_gflops']['fp32']:.0f} GFLOP/s, bf16 {result['matmul_gflops']['bf16']:.0f} GFLOP/s")
        result["ig"] = []
        n_ig = min(args.ig_images, len(train))
        ig_images, ig_labels = train.images[:n_ig], train.labels[:n_ig]
        for name in teachers:
            ckpt = TEACHER_CHECKPOINTS.get(name)
            if ckpt and not args.synthetic and (REPO / ckpt).is_file():
                teacher, weights = load_model(name, REPO / ckpt).eval(), f"trained, {Path(ckpt).name}"
            else:
                torch.manual_seed(0)
                teacher, weights = build_model(name).eval(), "random-init weights (speed does not depend on them)"
            log(f"\n== IG: {name} ({weights}), {n_ig} images, {args.ig_steps} steps ==")
            cfg = IGConfig(steps=args.ig_steps)
            ref_run, ref_box = ig_reference(teacher, ig_images, ig_labels, args.ig_steps, args.ref_ig_internal_batch, 16)
            variants = [Variant("reference", f"reference: captum IntegratedGradients fp32, internal_batch_size "
                                             f"{args.ref_ig_internal_batch}", None, ref_run)]
            boxes, steps_of = {"reference": ref_box}, {"reference": args.ig_steps}

            def add(key, label, base, cfg_, precision, rows, compile_mode="off", note=""):
                run, box = ig_ours(teacher, ig_images, ig_labels, cfg_, precision, rows, compile_mode)
                v = Variant(key, label, base, run, note=note)
                if compile_mode != "off":
                    t0 = time.perf_counter()
                    run()
                    v.setup_s = time.perf_counter() - t0
                    v.note = (note + "; " if note else "") + f"compile + first pass {v.setup_s:.0f} s"
                    if box["wrapper"].fell_back:
                        v.note += f"; FELL BACK to eager: {box['wrapper'].reason}"
                variants.append(v)
                boxes[key], steps_of[key] = box, cfg_.steps

            add("fp32", f"ours fp32 (BN folded, frozen, channels_last, {ig_rows[0]}-row passes)", "reference", cfg, "fp32", ig_rows[0])
            add("bf16", "+ bf16 autocast (fp32 strided depthwise)", "fp32", cfg, "bf16", ig_rows[0])
            for rows in ig_rows[1:]:
                add(f"bf16_rows{rows}", f"bf16, {rows}-row passes (larger IG batches)", "bf16", cfg, "bf16", rows)
            if args.compile == "on":
                add("compile", f"bf16 + torch.compile of the IG teacher, {ig_rows[0]}-row passes", "bf16", cfg, "bf16",
                    ig_rows[0], "on")
            add("steps16", "bf16, 16 steps (the cpu preset's)", "bf16", dataclasses.replace(cfg, steps=16), "bf16", ig_rows[0])
            auto_note = ""
            if not args.synthetic and not weights.startswith("random"):
                from toolkit.attribution.steps import choose_ig_steps

                t0 = time.perf_counter()
                choice = choose_ig_steps(teacher, train.images, train.labels, IGConfig(steps="auto", auto_sample=32), torch.device("cpu"), "bf16")
                auto_note = (f"chosen on 32 seeded train images in {time.perf_counter() - t0:.0f} s (one-off; "
                             f"reports/pipeline/ig-steps.md)")
                add("auto", f"bf16, ig.steps=auto -> {choice.steps} steps", "steps16", dataclasses.replace(cfg, steps=choice.steps),
                    "bf16", ig_rows[0], note=auto_note)
            measure(variants, args.repeats, log)
            rows = rows_of(variants)
            mflops = forward_mflops(teacher)
            for row in rows:
                row["steps"] = steps_of[row["key"]]
                row["gflops"] = ig_gflops(row["img_per_s"]["median"], row["steps"], mflops)
                if row["key"] != "reference" and steps_of[row["key"]] == args.ig_steps:
                    row["agreement"] = map_agreement(boxes[row["key"]]["maps"], ref_box["maps"])
            result["ig"].append({"teacher": name, "weights": weights, "images": n_ig, "steps": args.ig_steps, "rows": rows,
                                 "teacher_mflops": mflops})
            _write_partial(args, result, t_start)

    result.pop("partial", None)
    out = Path(args.out)
    _write_partial(args, result, t_start)
    print(f"\nwrote {out / 'bench-pipeline.json'} and {out / 'bench-pipeline.md'}")
    for a in result["aims"]:
        print(f"aim {a['aim']}: target {a['target']}, measured {a['measured']} ({a['row']}): {a['met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
