"""Pipeline speed, side by side on one machine: the reference way vs this toolkit's way.

    python -m benchmarks.bench_pipeline [--model mobilenetv2_cifar_L5] [--teacher mobilenetv2_cifar]
        [--train-images 2048] [--ig-images 16] [--threads 2]

(a) reference: torchvision PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor) through a
    DataLoader over PIL images, fp32 eager student training with Adam (batch 64); captum IntegratedGradients,
    fp32, internal_batch_size 8.
(b) ours: in-memory uint8 tensors, batched crop/flip (toolkit.data.augment), bf16 autocast + channels_last
    training; toolkit.attribution.compute_ig_maps (bf16).
Prints images/s and the speed-up for student training and IG precomputation, and the bf16 cost proxies
(IG map agreement with captum fp32, overlay change, student logits agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from toolkit import ToolkitError
from toolkit.config import IGConfig, OverlayConfig


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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


class Rate:
    """Images per wall-clock second, and per CPU-second of this process (all threads): the second is less
    sensitive to other jobs sharing the CPU."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, images: int) -> tuple[float, float]:
        return images / (time.perf_counter() - self.wall), images / max(time.process_time() - self.cpu, 1e-9)


def _fmt(rate: tuple[float, float]) -> str:
    return f"{rate[0]:8.2f} img/s  ({rate[1]:.2f} img per CPU-s)"


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """Best wall rate and best CPU rate over repeats (other jobs on a shared CPU only ever slow a run down)."""
    return max(r[0] for r in runs), max(r[1] for r in runs)


def _timed_epoch(step, batches, warmup: int) -> tuple[float, float]:
    """Run ``step(batch)`` over ``batches``; return the Rate excluding the first ``warmup`` batches."""
    clock, seen = None, 0
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            clock = Rate()
        step(x, y)
        if i >= warmup:
            seen += x.shape[0]
    if clock is None or seen == 0:
        raise ToolkitError("too few training images for the warm-up batches; raise --train-images")
    return clock.stop(seen)


def bench_train_reference(model_name: str, images: torch.Tensor, labels: torch.Tensor, batch: int, workers: int,
                          warmup: int) -> tuple[float, float]:
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

    return _timed_epoch(step, loader, warmup)


def bench_train_ours(model_name: str, images: torch.Tensor, labels: torch.Tensor, batch: int, precision: str, compile_model: bool,
                     warmup: int, fp32_depthwise: bool = True) -> tuple[float, float]:
    from toolkit.attribution.ig import use_fp32_strided_depthwise
    from toolkit.data import index_batches, random_crop_flip, to_float
    from toolkit.device import autocast
    from toolkit.models import build_model

    torch.manual_seed(0)
    device = torch.device("cpu")
    model = build_model(model_name).train().to(memory_format=torch.channels_last)
    if fp32_depthwise:
        use_fp32_strided_depthwise(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fwd = torch.compile(model) if compile_model else model
    g = torch.Generator().manual_seed(0)

    def batches():
        for idx in index_batches(images.shape[0], batch, g, drop_last=True):
            x, _ = random_crop_flip(to_float(images[idx]), g, 4)
            yield x.contiguous(memory_format=torch.channels_last), labels[idx]

    def step(x, y):
        with autocast(device, precision):
            loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _timed_epoch(step, batches(), warmup + (2 if compile_model else 0))


def bench_ig_reference(teacher, images: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[tuple[float, float], torch.Tensor]:
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(teacher)
    x = images.float() / 255.0
    base = teacher.normalize.mean.expand_as(x)
    ig.attribute(x[:1], baselines=base[:1], target=labels[:1], n_steps=steps, method="gausslegendre", internal_batch_size=8)
    clock = Rate()
    # groups of 8 images, so captum really runs 8 interpolated rows per pass (it refuses fewer rows than images)
    attr = torch.cat([ig.attribute(x[i : i + 8], baselines=base[i : i + 8], target=labels[i : i + 8], n_steps=steps,
                                   method="gausslegendre", internal_batch_size=8) for i in range(0, x.shape[0], 8)])
    return clock.stop(x.shape[0]), attr.abs().sum(1).detach()


def bench_ig_ours(teacher, images: torch.Tensor, labels: torch.Tensor, cfg: IGConfig, precision: str) -> tuple[tuple[float, float], torch.Tensor]:
    from toolkit.attribution import compute_ig_maps

    cpu = torch.device("cpu")
    compute_ig_maps(teacher, images[:1], labels[:1], cfg, cpu, precision, progress=False)
    clock = Rate()
    maps = compute_ig_maps(teacher, images, labels, cfg, cpu, precision, progress=False)
    return clock.stop(images.shape[0]), maps


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenetv2_cifar_L5", help="student trained in the training benchmark")
    p.add_argument("--teacher", default="mobilenetv2_cifar", help="teacher for the IG benchmark")
    p.add_argument("--teacher-checkpoint", default=None, help="trained teacher weights (default: random init)")
    p.add_argument("--train-images", type=int, default=2048)
    p.add_argument("--ig-images", type=int, default=16)
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ref-batch-size", type=int, default=64, help="reference training batch (the paper's 64)")
    p.add_argument("--batch-size", type=int, default=128, help="our training batch")
    p.add_argument("--ref-workers", type=int, default=0, help="DataLoader workers for the reference")
    p.add_argument("--compile", action="store_true", help="torch.compile our student (adds compile time before timing)")
    p.add_argument("--warmup-batches", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="alternate the variants this many times; report the best")
    p.add_argument("--skip", choices=["train", "ig"], action="append", default=[], help="skip a part")
    p.add_argument("--synthetic", action="store_true", help="synthetic images instead of CIFAR-10")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    try:
        return _run(args)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from toolkit.data import load_cifar10, make_synthetic
    from toolkit.models import build_model, get_spec, load_model

    if min(args.threads, args.train_images, args.ig_images, args.repeats) < 1:
        raise ToolkitError("--threads, --train-images, --ig-images and --repeats must be >= 1")
    get_spec(args.model)
    get_spec(args.teacher)
    torch.set_num_threads(args.threads)
    data = make_synthetic(n_train_per_class=max(args.train_images, args.ig_images) // 10 + 1) if args.synthetic else load_cifar10()
    train = data.train
    n_train = min(args.train_images, len(train))
    images, labels = train.images[:n_train], train.labels[:n_train]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"hardware: {_cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; threads {args.threads}; "
          f"load average at start {load:.2f}")
    print(f"data: {data.description}")
    results: dict = {"threads": args.threads, "cpu": _cpu_name(), "data": data.description, "load_at_start": load}

    if "train" not in args.skip:
        print(f"\n== student training: {args.model}, {n_train} images, warm-up {args.warmup_batches} batches excluded, "
              f"best of {args.repeats} alternated runs ==")
        tag = " + torch.compile" if args.compile else ""
        runs: dict[str, list] = {"ref": [], "plain": [], "ours": []}
        for _ in range(args.repeats):
            runs["ref"].append(bench_train_reference(args.model, images, labels, args.ref_batch_size, args.ref_workers, args.warmup_batches))
            runs["plain"].append(bench_train_ours(args.model, images, labels, args.batch_size, "bf16", args.compile, args.warmup_batches, False))
            runs["ours"].append(bench_train_ours(args.model, images, labels, args.batch_size, "bf16", args.compile, args.warmup_batches, True))
        ref, plain, ours = _best(runs["ref"]), _best(runs["plain"]), _best(runs["ours"])
        print(f"(a)  reference PIL transforms + DataLoader(workers={args.ref_workers}), fp32, batch {args.ref_batch_size}: {_fmt(ref)}")
        print(f"(b0) ours      uint8 tensors + batched crop/flip, bf16 autocast + channels_last{tag}, batch {args.batch_size}: "
              f"{_fmt(plain)}")
        print(f"(b)  ours      (b0) + strided depthwise convs in fp32 (Float32Conv2d): {_fmt(ours)}")
        print(f"     speed-up (b)/(a): {ours[0] / ref[0]:.2f}x wall, {ours[1] / ref[1]:.2f}x per CPU-s;  "
              f"(b0)/(a): {plain[0] / ref[0]:.2f}x wall, {plain[1] / ref[1]:.2f}x per CPU-s")
        results["train"] = {"model": args.model, "images": n_train, "reference": ref, "ours": ours, "ours_without_fp32_depthwise": plain,
                            "speedup_wall": ours[0] / ref[0], "speedup_cpu": ours[1] / ref[1], "ref_batch": args.ref_batch_size,
                            "our_batch": args.batch_size, "compile": args.compile, "units": "[img/s wall, img per CPU-s]"}
        agree = student_logit_agreement(args.model, images[:256])
        print(f"    bf16 proxy: student logits bf16 vs fp32 on 256 images: top-1 agreement {agree['top1_agree']:.3f}, "
              f"max |diff| {agree['max_abs_logit_diff']:.3g} (logit scale {agree['logit_scale']:.3g})")
        results["train"]["bf16_logits"] = agree

    if "ig" not in args.skip:
        teacher = (load_model(args.teacher, args.teacher_checkpoint) if args.teacher_checkpoint else build_model(args.teacher)).eval()
        n_ig = min(args.ig_images, len(train))
        ig_images, ig_labels = train.images[:n_ig], train.labels[:n_ig]
        weights = "trained weights " + args.teacher_checkpoint if args.teacher_checkpoint else "random-init weights"
        print(f"\n== IG precomputation: {args.teacher} ({weights}), {n_ig} images, {args.ig_steps} Gauss-Legendre steps, "
              f"best of {args.repeats} alternated runs ==")
        cfg = IGConfig(steps=args.ig_steps)
        runs = {"ref": [], "ours": []}
        for _ in range(args.repeats):
            rate, ref_maps = bench_ig_reference(teacher, ig_images, ig_labels, args.ig_steps)
            runs["ref"].append(rate)
            rate, ours_maps = bench_ig_ours(teacher, ig_images, ig_labels, cfg, "bf16")
            runs["ours"].append(rate)
        ref_rate, ours_rate = _best(runs["ref"]), _best(runs["ours"])
        print(f"(a) reference  captum IntegratedGradients, fp32, internal_batch_size 8: {_fmt(ref_rate)}")
        print(f"(b) ours       compute_ig_maps bf16 autocast (BN folded, fp32 strided depthwise, channels_last, "
              f"32-row passes): {_fmt(ours_rate)}")
        print(f"    speed-up {ours_rate[0] / ref_rate[0]:.2f}x wall, {ours_rate[1] / ref_rate[1]:.2f}x per CPU-s")
        fp32_rate, fp32_maps = bench_ig_ours(teacher, ig_images, ig_labels, cfg, "fp32")
        print(f"    ours fp32 (for the accuracy check): {_fmt(fp32_rate)}")
        results["ig"] = {"teacher": args.teacher, "teacher_weights": weights, "images": n_ig, "steps": args.ig_steps,
                         "reference": ref_rate, "ours_bf16": ours_rate, "ours_fp32": fp32_rate,
                         "speedup_wall": ours_rate[0] / ref_rate[0], "speedup_cpu": ours_rate[1] / ref_rate[1],
                         "units": "[img/s wall, img per CPU-s]"}
        for name, maps in (("ours bf16", ours_maps), ("ours fp32", fp32_maps)):
            a = map_agreement(maps, ref_maps)
            print(f"    {name} vs captum fp32 maps: corr {a['corr']:.5f}, rel L2 err {a['rel_l2']:.2e}, overlay change "
                  f"mean {a['overlay_mean_abs']:.2e} / max {a['overlay_max_abs']:.2e} ([0,1] units, prob 1, w 0.5)")
            results["ig"][name.replace(" ", "_") + "_vs_captum_fp32"] = a
    if args.json:
        from toolkit.io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
