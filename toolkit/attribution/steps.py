"""``ig.steps=auto``: the fewest integrated-gradients steps that are as good as 50, checked on a sample of images.

IG has its own correctness check, *completeness*: the attributions of an image, summed over pixels and channels,
equal ``F(x) - F(baseline)`` for the target logit (captum's convergence delta is the difference). On a seeded sample
of training images (``ig.auto_sample``, ``ig.auto_seed``) a ``REFERENCE_STEPS``-step reference is computed (signed
attributions and the maps as the cache stores them); then ``CANDIDATE_STEPS`` are tried in increasing order and the
first whose mean relative completeness error ``|sum(attr) - (F(x) - F(b))| / |F(x) - F(b)|`` is at most
``ig.auto_tolerance`` (or the reference's own error, when that is larger: no count can be asked to be more complete
than the reference it replaces, whose error at low precision is partly rounding) *and* whose maps correlate at least ``ig.auto_min_corr`` (mean per-image Pearson) with the
reference maps is chosen; when none qualifies, ``REFERENCE_STEPS``. See docs/method-choices.md.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from toolkit import ToolkitError
from toolkit.attribution.ig import (DEFAULT_MAX_ROWS, ig_attributions, ig_baseline, low_precision_dtype,
                                    prepare_teacher, quadrature)
from toolkit.config import IGConfig
from toolkit.device import autocast

REFERENCE_STEPS = 50
CANDIDATE_STEPS = (4, 8, 12, 16, 24, 32, 50)
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Candidate:
    steps: int
    completeness_error: float
    """Mean over the sample of |sum(attr) - (F(x) - F(b))| / |F(x) - F(b)|."""
    correlation: float
    """Mean per-image Pearson correlation of the stored-dtype maps with the reference maps."""
    seconds: float
    qualifies: bool


@dataclass
class StepChoice:
    steps: int
    """The chosen step count (``reference_steps`` when no candidate qualified)."""
    reference_steps: int
    reference_completeness_error: float
    reference_seconds: float
    candidates: list[Candidate] = field(default_factory=list)
    sample_size: int = 0
    sample_seed: int = 0
    tolerance: float = 0.05
    completeness_bound: float = 0.05
    """The completeness error a count had to meet: max(tolerance, the reference's own error)."""
    min_corr: float = 0.99
    fell_back: bool = False
    delta_f_floor: float = 0.0
    """Smallest |F(x) - F(b)| used as the denominator of the relative error (1% of the sample's median)."""
    train_images: int | None = None
    estimated_seconds_saved: float | None = None
    """(reference seconds - chosen seconds) per sample image x train images: the IG time saved vs 50 steps."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def line(self) -> str:
        tried = ", ".join(f"{c.steps}: err {c.completeness_error:.3g} corr {c.correlation:.4f}" for c in self.candidates)
        saved = "" if self.estimated_seconds_saved is None else f"; saves about {self.estimated_seconds_saved / 60:.1f} min"
        bound = f"{self.completeness_bound:.3g}" + (
            f" (the {self.reference_steps}-step reference's own error, above the {self.tolerance:g} tolerance)"
            if self.completeness_bound > self.tolerance else "")
        head = (f"IG steps=auto: no count met completeness error <= {bound} and map correlation >= "
                f"{self.min_corr:g}, using {self.steps}" if self.fell_back else
                f"IG steps=auto: chose {self.steps} steps (completeness error <= {bound}, map correlation >= "
                f"{self.min_corr:g} vs {self.reference_steps} steps)")
        return f"{head} on {self.sample_size} images [{tried}]{saved}"


def completeness_error(attributions: torch.Tensor, delta_f: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-image relative completeness error (B,): |sum over C, H, W of attributions - delta_f| / max(|delta_f|, eps).

    ``attributions``: signed IG attributions (B, C, H, W); ``delta_f``: F(x) - F(baseline) of the target logit (B,).
    ``eps``: the smallest denominator (``choose_ig_steps`` uses 1% of the sample's median |delta_f|, so an image
    whose target logit barely differs from the baseline's does not turn float rounding into a large error)."""
    total = attributions.detach().double().flatten(1).sum(1)
    d = delta_f.detach().double().reshape(-1)
    return ((total - d).abs() / d.abs().clamp_min(eps)).float()


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation (N,) of maps ``a`` and ``b`` (N, H, W); 1 where both are constant."""
    a = a.double().flatten(1)
    b = b.double().flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    corr = (a * b).sum(1) / (na * nb).clamp_min(1e-30)
    both_flat = (na == 0) & (nb == 0)
    return torch.where(both_flat, torch.ones_like(corr), corr).float()


def sample_rows(n: int, size: int, seed: int) -> torch.Tensor:
    """``min(n, size)`` distinct row indices in [0, n), sorted, drawn with ``seed`` (same on every machine)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[: min(n, max(1, int(size)))].sort().values


def signed_ig(model: nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor, steps: int, method: str,
              precision: str, max_rows: int, batch_size: int) -> torch.Tensor:
    """Signed attributions (B, 3, H, W) float32 with ``steps`` steps, ``batch_size`` images per call."""
    weights, alphas = quadrature(method, steps)
    out = []
    for s in range(0, x.shape[0], batch_size):
        out.append(ig_attributions(model, x[s:s + batch_size], target[s:s + batch_size], baseline, weights, alphas,
                                   precision, max_rows, channels_last=True))
    return torch.cat(out)


def choose_ig_steps(teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: IGConfig, device: torch.device,
                    precision: str, *, candidates: tuple[int, ...] = CANDIDATE_STEPS,
                    reference_steps: int = REFERENCE_STEPS, max_rows: int | None = None) -> StepChoice:
    """The fewest ``candidates`` steps whose IG on a seeded sample of ``images`` (uint8 (N, 3, H, W), the whole train
    split) meets ``cfg.auto_tolerance`` (mean relative completeness error) and ``cfg.auto_min_corr`` (mean per-image
    Pearson of the maps, stored as ``cfg.store_dtype``, with the ``reference_steps`` maps); ``reference_steps`` when
    none does. Same target, baseline, quadrature and precision as the cache's maps."""
    if images.dim() != 4 or images.dtype != torch.uint8 or labels.shape != (images.shape[0],) or images.shape[0] == 0:
        raise ToolkitError(f"ig.steps=auto needs uint8 (N, 3, H, W) images with (N,) labels, got {images.dtype} "
                           f"{tuple(images.shape)} and {tuple(labels.shape)}")
    autocast(device, precision)  # validates precision for the device
    if max_rows is None:
        max_rows = DEFAULT_MAX_ROWS.get(device.type, 256)
    store = STORE_DTYPES.get(cfg.store_dtype, torch.float32)
    rows = sample_rows(images.shape[0], cfg.auto_sample, cfg.auto_seed)
    x = images[rows].to(device).float().div_(255.0)
    low = low_precision_dtype(precision)
    model = prepare_teacher(teacher, device, fp32_strided_depthwise=low is not None and device.type == "cpu")
    with torch.no_grad():
        if cfg.target == "pred":  # the fp32 top-1 (the private copy is fp32, BatchNorm folded)
            target = model(x.contiguous(memory_format=torch.channels_last)).argmax(1)
        else:
            target = labels[rows].to(device)
        baseline = ig_baseline(teacher, cfg.baseline).to(device)
        logits_x = model(x.contiguous(memory_format=torch.channels_last)).float()
        logits_b = model(baseline.expand_as(x).contiguous(memory_format=torch.channels_last)).float()
        delta_f = (logits_x.gather(1, target.view(-1, 1)) - logits_b.gather(1, target.view(-1, 1))).view(-1).cpu()

    def run(steps: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        t0 = time.perf_counter()
        attr = signed_ig(model, x, target, baseline, steps, cfg.method, precision, max_rows, max(1, cfg.batch_size))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        attr = attr.cpu()
        return attr, attr.abs().sum(1).to(store).float(), seconds

    signed_ig(model, x[:1], target[:1], baseline, 1, cfg.method, precision, max_rows, 1)  # warm-up, not timed
    ref_attr, ref_maps, ref_seconds = run(reference_steps)
    floor = max(1e-12, 0.01 * float(delta_f.abs().median()))
    ref_error = float(completeness_error(ref_attr, delta_f, floor).mean())
    bound = max(float(cfg.auto_tolerance), ref_error)
    choice = StepChoice(steps=reference_steps, reference_steps=reference_steps, delta_f_floor=floor,
                        reference_completeness_error=ref_error,
                        reference_seconds=ref_seconds, sample_size=int(rows.numel()), sample_seed=int(cfg.auto_seed),
                        tolerance=float(cfg.auto_tolerance), completeness_bound=bound, min_corr=float(cfg.auto_min_corr),
                        fell_back=True)
    for steps in sorted(set(int(s) for s in candidates)):
        if steps > reference_steps:
            break
        if steps == reference_steps:
            attr, maps, seconds = ref_attr, ref_maps, ref_seconds
        else:
            attr, maps, seconds = run(steps)
        err = float(completeness_error(attr, delta_f, floor).mean())
        corr = float(map_correlation(maps, ref_maps).mean())
        ok = err <= bound and corr >= cfg.auto_min_corr
        choice.candidates.append(Candidate(steps, err, corr, seconds, ok))
        if ok:
            choice.steps, choice.fell_back = steps, False
            break
    chosen = next((c for c in choice.candidates if c.steps == choice.steps), None)
    chosen_seconds = ref_seconds if chosen is None else chosen.seconds
    choice.train_images = int(images.shape[0])
    choice.estimated_seconds_saved = max(0.0, (ref_seconds - chosen_seconds) / rows.numel() * images.shape[0])
    return choice


__all__ = ["CANDIDATE_STEPS", "REFERENCE_STEPS", "Candidate", "StepChoice", "choose_ig_steps", "completeness_error",
           "map_correlation", "sample_rows"]
