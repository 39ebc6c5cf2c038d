"""Pure loss functions with shape-checked inputs (METHOD.md section 2), and a registry by name."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def _check_logits(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{what}: expected two (B, C) logit tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE on hard labels. logits (B, C) float; labels (B,) int64."""
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy_loss: logits (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return F.cross_entropy(logits.float(), labels)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, summed over classes, averaged over the batch."""
    _check_logits(student_logits, teacher_logits, "kd_loss")
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def attention_map(features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis: mean over channels of F^2, flattened, L2-normalised. (B, C, H, W) -> (B, H*W).

    ``size``: area-pool the (H, W) map of mean squares to this smaller size first (adaptive average pooling, so a
    size that does not divide evenly still covers every position); the map is normalised after pooling."""
    if features.dim() != 4:
        raise ValueError(f"attention_map: expected (B, C, H, W) features, got {tuple(features.shape)}")
    energy = features.float().pow(2).mean(dim=1)
    if size is not None and tuple(energy.shape[1:]) != tuple(size):
        energy = F.adaptive_avg_pool2d(energy.unsqueeze(1), size).squeeze(1)
    return F.normalize(energy.flatten(1), dim=1)


AT_FORMS = ("paper", "zagoruyko")
"""How the per-layer AT terms are combined and weighted (``loss.at_form``):

- ``paper`` (METHOD.md section 2): ``g * mean over layers of mean((A_t - A_s)^2)``, g = ``loss.at_weight`` (0.8);
- ``zagoruyko`` (Zagoruyko & Komodakis 2017, their code): ``beta / 2 * sum over layers of mean((A_t - A_s)^2)``,
  beta = ``loss.at_weight`` (1000 in their paper).

``mean`` is over batch and spatial positions. With the paper's weight the term is about 1e-3 of the KD term; the
original form is about 600x larger per layer.
"""
DEFAULT_AT_WEIGHT = {"paper": 0.8, "zagoruyko": 1000.0}


def attention_transfer_terms(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor]) -> torch.Tensor:
    """Per layer pair ``mean((A_t - A_s)^2)``, shape (L,); each pair must share the batch size.

    Maps of different spatial sizes are compared at the smaller one: each map's mean of squares is area-pooled to
    (min H, min W) before normalising (:func:`attention_map`); maps of one size are compared as they are."""
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(f"attention_transfer_loss: {len(student_features)} student vs {len(teacher_features)} teacher layers")
    losses = []
    for fs, ft in zip(student_features, teacher_features):
        if fs.dim() != 4 or ft.dim() != 4 or fs.shape[0] != ft.shape[0]:
            raise ValueError(f"attention_transfer_loss: feature maps {tuple(fs.shape)} and {tuple(ft.shape)} are not "
                             "(B, C, H, W) maps of one batch")
        if fs.shape[2:] == ft.shape[2:]:
            losses.append((attention_map(ft) - attention_map(fs)).pow(2).mean())
        else:
            size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
            losses.append((attention_map(ft, size) - attention_map(fs, size)).pow(2).mean())
    return torch.stack(losses)


def attention_transfer_loss(student_features: list[torch.Tensor], teacher_features: list[torch.Tensor],
                            form: str = "paper") -> torch.Tensor:
    """Unweighted AT loss: ``paper`` = mean over layer pairs of ``mean((A_t - A_s)^2)``; ``zagoruyko`` = half their
    sum (multiply by beta = ``loss.at_weight`` for the weighted term, as in Zagoruyko & Komodakis)."""
    terms = attention_transfer_terms(student_features, teacher_features)
    if form == "paper":
        return terms.mean()
    if form == "zagoruyko":
        return terms.sum() / 2
    raise ValueError(f"unknown AT form '{form}'; choose one of {', '.join(AT_FORMS)}")


LOSS_REGISTRY: dict[str, Callable[..., torch.Tensor]] = {
    "ce": cross_entropy_loss,
    "kd": kd_loss,
    "at": attention_transfer_loss,
}
