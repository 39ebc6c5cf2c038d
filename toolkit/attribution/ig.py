"""Integrated-gradients maps of a teacher, one (32, 32) map per image (METHOD.md section 3).

The computation is captum's ``IntegratedGradients`` formula,
``attr = (x - x0) * sum_k w_k * dF_t/dx (x0 + a_k (x - x0))``, with captum's own quadrature nodes ``a_k`` and
weights ``w_k`` (``captum.attr._utils.approximation_methods.approximation_parameters``), evaluated for a group
of images and several steps per forward/backward pass (``DEFAULT_MAX_ROWS``). It is faster than calling captum because:
the teacher is a private eval-mode copy with BatchNorm folded into the convolutions (exact in eval mode),
parameters do not require grad, ReLU6 is out-of-place (in-place hardtanh clones its input for backward),
strided depthwise convolutions run in float32 (their bf16 gradient kernel is ~20x slower on CPU), tensors are
channels_last, CPU passes are small (cache-resident), and the rest runs under bf16 autocast when asked.
``tests/test_attribution.py`` checks the maps against captum's ``IntegratedGradients``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import nn
from tqdm.auto import tqdm

from toolkit import ToolkitError
from toolkit.config import IGConfig
from toolkit.device import autocast

DEFAULT_MAX_ROWS = {"cpu": 32, "cuda": 4096}
"""Most interpolated rows (images x steps) per forward/backward pass, by device type, when ``ig.rows`` is not timed.
On CPU small passes stay in cache: MobileNetV2-CIFAR bf16 on the 2-core EPYC ran 8.5 img/s at 32 rows, 7.8 at 64,
5.6 at 200, ~1.7 at 800."""
CPU_ROWS_CANDIDATES = (32, 64, 128)
"""``ig.rows=auto`` on CPU times these pass sizes. The best one moves with the teacher, steps, batch and threads
(2-core EPYC, bf16, 2 threads: 128 rows gave 1.10x over 32 for MobileNetV2-CIFAR and 1.19x for ResNet-56 at 50 steps
in reports/pipeline/bench-pipeline.md; 37.1 vs 32.9 img/s for ResNet-56 at 16 steps in the cpu run's own probe)."""
MIN_BATCHES_TO_TIME = 50
"""``ig.rows=auto`` times pass sizes only when at least this many IG batches follow (the probe costs about seven)."""


def ig_baseline(teacher: nn.Module, baseline: str) -> torch.Tensor:
    """The IG baseline in [0, 1] input space, (1, 3, 1, 1) float32.

    ``mean``: zeros in the teacher's normalised space = its normalisation mean colour (``teacher.normalize.mean``);
    ``black``: zeros in [0, 1].
    """
    if baseline == "black":
        return torch.zeros(1, 3, 1, 1)
    if baseline != "mean":
        raise ToolkitError(f"ig.baseline must be mean or black, got '{baseline}'")
    norm = getattr(teacher, "normalize", None)
    mean = getattr(norm, "mean", None)
    if not isinstance(mean, torch.Tensor) or mean.numel() != 3:
        raise ToolkitError("ig.baseline 'mean' needs a teacher with a 'normalize' module holding a 3-value 'mean'")
    return mean.detach().float().cpu().reshape(1, 3, 1, 1)


def quadrature(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Captum's (weights, alphas) for ``method`` and ``steps``, both float64 (steps,)."""
    try:
        step_sizes_fn, alphas_fn = approximation_parameters(method)
    except ValueError:
        raise ToolkitError(f"unknown ig.method '{method}' (use gausslegendre or riemann_left/right/middle/trapezoid)") from None
    return torch.tensor(step_sizes_fn(steps), dtype=torch.float64), torch.tensor(alphas_fn(steps), dtype=torch.float64)


class Float32Conv2d(nn.Conv2d):
    """A Conv2d that always runs in float32 (weights and input), whatever the autocast or input dtype, and returns
    the input's dtype. Same parameters and state_dict keys as the Conv2d it replaces (see ``use_fp32_strided_depthwise``).

    Reason: on CPU (oneDNN, torch 2.14) the bf16 gradient kernels of strided depthwise convolutions are about 20x
    slower than the float32 ones (measured: (200, 192, 16, 16) stride 2, input-gradient 646 ms bf16 vs 32 ms fp32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.weight if self.weight.dtype == torch.float32 else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return self._conv_forward(x.float(), weight, bias).to(x.dtype)


def is_strided_depthwise(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels and tuple(m.stride) != (1, 1)


def use_fp32_strided_depthwise(model: nn.Module) -> int:
    """Switch every strided depthwise ``nn.Conv2d`` of ``model`` to ``Float32Conv2d`` in place (parameters kept in
    float32); returns how many. Useful for bf16 training on CPU too: state_dict keys do not change."""
    count = 0
    for m in model.modules():
        if is_strided_depthwise(m):
            m.__class__ = Float32Conv2d
            m.float()
            count += 1
    return count


def low_precision_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def prepare_teacher(teacher: nn.Module, device: torch.device, channels_last: bool = True, fuse_bn: bool = True,
                    cast_dtype: torch.dtype | None = None, fp32_strided_depthwise: bool = False) -> nn.Module:
    """A private eval-mode copy of ``teacher`` for IG: BatchNorm folded into convs (when fx can trace it),
    parameters frozen (no grad), on ``device``, optionally channels_last and cast to ``cast_dtype``;
    ``fp32_strided_depthwise`` keeps strided depthwise convs in float32 (see ``Float32Conv2d``).
    The caller's module is untouched."""
    model = copy.deepcopy(teacher).eval()
    if fuse_bn:
        try:
            from torch.fx.experimental.optimization import fuse

            model = fuse(model, inplace=True)
        except Exception:  # noqa: BLE001 - untraceable models keep unfused BatchNorm (same maps, slower)
            pass
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False  # in-place ReLU6 (hardtanh_) would clone its input for the backward pass
    model = model.to(device)
    if cast_dtype is not None:
        model = model.to(cast_dtype)
    if fp32_strided_depthwise:
        use_fp32_strided_depthwise(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.eval()


def ig_attributions(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    baseline: torch.Tensor,
    weights: torch.Tensor,
    alphas: torch.Tensor,
    precision: str = "fp32",
    max_rows: int = 32,
    channels_last: bool = True,
    cast: bool = False,
) -> torch.Tensor:
    """IG attributions (B, 3, H, W) float32 of ``model`` for float inputs ``x`` (B, 3, H, W) in [0, 1].

    ``target``: (B,) class indices; ``baseline``: broadcastable to ``x``; ``weights``/``alphas``: (steps,) quadrature.
    ``precision`` bf16/fp16 runs under autocast, or, with ``cast``, feeds a model already cast to that dtype
    (see ``prepare_teacher``) with inputs cast to it; interpolation and quadrature sums stay float32.
    Rows are grouped step-major (all images at step k, then k + 1), at most ``max_rows`` per pass.
    """
    b = x.shape[0]
    device = x.device
    x = x.float()
    base = baseline.to(device=device, dtype=torch.float32).expand_as(x)
    delta = x - base
    steps = alphas.numel()
    w = weights.to(device=device, dtype=torch.float32)
    a = alphas.to(device=device, dtype=torch.float32)
    target = target.to(device)
    grad_sum = torch.zeros_like(x)
    per_pass = max(1, max_rows // max(b, 1))
    for start in range(0, steps, per_pass):
        k = slice(start, min(start + per_pass, steps))
        n = a[k].numel()
        scaled = (base.unsqueeze(0) + a[k].view(n, 1, 1, 1, 1) * delta.unsqueeze(0)).reshape(n * b, *x.shape[1:])
        if channels_last:
            scaled = scaled.contiguous(memory_format=torch.channels_last)
        scaled.requires_grad_(True)
        low = low_precision_dtype(precision)
        if cast and low is not None:
            with torch.enable_grad():
                logits = model(scaled.to(low))
        else:
            with torch.enable_grad(), autocast(device, precision):
                logits = model(scaled)
        picked = logits.float().gather(1, target.repeat(n).view(-1, 1)).sum()
        (grad,) = torch.autograd.grad(picked, scaled)
        grad_sum += (grad.float().view(n, b, *x.shape[1:]) * w[k].view(n, 1, 1, 1, 1)).sum(0)
    return delta * grad_sum


@dataclass(frozen=True)
class RowsChoice:
    """The IG pass size (``max_rows``) and how it was chosen: ``set`` (``ig.rows``), ``default``
    (``DEFAULT_MAX_ROWS``: not CPU, a small job, or several processes) or ``timed`` (fastest candidate)."""

    rows: int
    how: str
    seconds_per_image: dict[int, float] = field(default_factory=dict)
    """``timed``: best of two timings per candidate, seconds per image, keyed by rows."""

    def describe(self) -> str:
        if self.how != "timed":
            return f"IG pass size: {self.rows} rows ({'ig.rows' if self.how == 'set' else 'default for the device'})"
        times = ", ".join(f"{r} rows {1 / t:.1f} img/s" for r, t in self.seconds_per_image.items())
        return f"IG pass size: {self.rows} rows, the fastest on this machine ({times})"


def choose_ig_rows(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: IGConfig,
                   device: torch.device, precision: str) -> RowsChoice:
    """Resolve ``cfg.rows`` for an IG computation over ``images`` (uint8 (N, 3, H, W)) with ``cfg.steps`` (a number).

    ``auto`` on CPU, in one process, with at least ``MIN_BATCHES_TO_TIME`` batches of ``cfg.batch_size`` images:
    computes the first batch's maps once to warm up, then twice at each size of ``CPU_ROWS_CANDIDATES`` (sizes that
    give the same passes for this batch and step count are timed once) and keeps the fastest. Otherwise the device
    default. A set number is returned as is."""
    if cfg.rows != "auto":
        if not isinstance(cfg.rows, int) or isinstance(cfg.rows, bool) or cfg.rows < 1:
            raise ToolkitError(f"ig.rows must be a whole number >= 1 or auto, got {cfg.rows!r}")
        return RowsChoice(int(cfg.rows), "set")
    default = DEFAULT_MAX_ROWS.get(device.type, 256)
    b = max(1, min(cfg.batch_size, images.shape[0]))
    if (device.type != "cpu" or _rank_world()[1] > 1 or not isinstance(cfg.steps, int)
            or images.shape[0] < MIN_BATCHES_TO_TIME * b):
        return RowsChoice(default, "default")
    by_passes: dict[int, int] = {}  # steps per pass -> the smallest candidate giving it
    for rows in CPU_ROWS_CANDIDATES:
        by_passes.setdefault(min(cfg.steps, max(1, rows // b)), rows)
    if len(by_passes) == 1:
        return RowsChoice(default, "default")
    x, y = images[:b], labels[:b]
    run = lambda rows: compute_ig_maps(teacher, x, y, cfg, device, precision, progress=False, max_rows=rows)  # noqa: E731
    run(min(by_passes.values()))  # warm-up: first-call allocations and kernel choices
    best: dict[int, float] = {}
    for _ in range(2):
        for rows in by_passes.values():
            t0 = time.perf_counter()
            run(rows)
            best[rows] = min(best.get(rows, math.inf), (time.perf_counter() - t0) / b)
    return RowsChoice(min(best, key=best.get), "timed", dict(sorted(best.items())))


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_rows(local: torch.Tensor, n_total: int, share: int, device: torch.device) -> torch.Tensor:
    """All-gather each rank's (share, H, W) block (last one zero-padded) and return the first ``n_total`` rows."""
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros(share, *local.shape[1:], dtype=local.dtype, device=comm_device)
    padded[: local.shape[0]] = local.to(comm_device)
    blocks = [torch.empty_like(padded) for _ in range(dist.get_world_size())]
    dist.all_gather(blocks, padded)
    return torch.cat(blocks)[:n_total].cpu()


def compute_ig_maps(
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: IGConfig,
    device: torch.device,
    precision: str,
    progress: bool = True,
    *,
    max_rows: int | None = None,
    channels_last: bool = True,
    fuse_bn: bool = True,
    cast: bool = False,
    pbar: tqdm | None = None,
    compile: str = "off",
) -> torch.Tensor:
    """IG maps (N, 32, 32) float32 on CPU, row i for image i: sum over RGB of |attribution|.

    ``images``: uint8 (N, 3, H, W) in dataset order (no augmentation); ``labels``: int64 (N,).
    Target is the true label (``cfg.target == "label"``) or the teacher's fp32 top-1 (``"pred"``).
    ``cfg.batch_size`` images are processed together, in passes of up to ``max_rows`` interpolated rows
    (default: ``cfg.rows`` when a number, else ``DEFAULT_MAX_ROWS`` for the device type; ``choose_ig_rows`` times
    the sizes, as ``load_or_compute_ig_maps`` does before a large computation). Under torch.distributed
    each rank computes a contiguous share and the maps are all-gathered. ``pbar``: an outer tqdm to advance
    instead of opening one. ``cast``: for bf16/fp16 run a model copy cast to that dtype instead of autocast
    (default False: autocast was as fast on CPU and closer to fp32: map correlation 0.997 vs 0.992 on ResNet-56).
    ``compile``: ``off``/``auto``/``on``, torch.compile of the prepared teacher (``toolkit.distill.compile``: eager
    fallback with one warning line when compilation fails; ``auto`` is off on CPU, where it did not gain).
    """
    if images.dim() != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
        raise ToolkitError(f"IG images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ToolkitError(f"IG labels must be (N,) = ({images.shape[0]},), got {tuple(labels.shape)}")
    if cfg.target not in ("label", "pred"):
        raise ToolkitError(f"ig.target must be label or pred, got '{cfg.target}'")
    if cfg.steps == "auto":
        raise ToolkitError("ig.steps=auto is resolved by load_or_compute_ig_maps (toolkit.attribution.steps."
                           "choose_ig_steps); compute_ig_maps needs a whole number of steps")
    if not isinstance(cfg.steps, int) or isinstance(cfg.steps, bool) or cfg.steps < 1 or cfg.batch_size < 1:
        raise ToolkitError("ig.steps and ig.batch_size must be >= 1")
    autocast(device, precision)  # validates precision for the device (one-line error)
    if max_rows is None:
        max_rows = cfg.rows if cfg.rows != "auto" else DEFAULT_MAX_ROWS.get(device.type, 256)
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
        raise ToolkitError(f"ig.rows must be a whole number >= 1 or auto, got {max_rows!r}")
    weights, alphas = quadrature(cfg.method, cfg.steps)
    baseline = ig_baseline(teacher, cfg.baseline)

    n_total = images.shape[0]
    rank, world = _rank_world()
    share = math.ceil(n_total / world) if world > 1 else n_total
    lo, hi = min(rank * share, n_total), min((rank + 1) * share, n_total)
    cast = cast and low_precision_dtype(precision) is not None
    low = low_precision_dtype(precision)
    model = prepare_teacher(teacher, device, channels_last=channels_last, fuse_bn=fuse_bn,
                            cast_dtype=low if cast else None, fp32_strided_depthwise=low is not None and device.type == "cpu")
    from toolkit.distill.compile import maybe_compile

    model = maybe_compile(model, compile, device, "IG teacher", dynamic=False)
    reference = copy.deepcopy(teacher).eval().to(device) if cfg.target == "pred" else None
    if reference is not None:
        for p in reference.parameters():
            p.requires_grad_(False)

    out = torch.empty(hi - lo, *images.shape[2:], dtype=torch.float32)
    bar = pbar
    own_bar = bar is None and progress and rank == 0
    if own_bar:
        bar = tqdm(total=hi - lo, unit="img", desc=f"IG ({cfg.steps} steps, {precision})", dynamic_ncols=True)
    try:
        for start in range(lo, hi, cfg.batch_size):
            stop = min(start + cfg.batch_size, hi)
            x = images[start:stop].to(device).float().div_(255.0)
            if reference is not None:
                with torch.no_grad():
                    target = reference(x).argmax(1)
            else:
                target = labels[start:stop].to(device)
            attr = ig_attributions(model, x, target, baseline, weights, alphas, precision, max_rows, channels_last, cast)
            out[start - lo : stop - lo] = attr.abs().sum(1).cpu()
            if bar is not None and (own_bar or rank == 0):
                bar.update(stop - start)
    finally:
        if own_bar and bar is not None:
            bar.close()
    if world > 1:
        return _gather_rows(out, n_total, share, device)
    return out
