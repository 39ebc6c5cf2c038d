"""The Distiller: a student, a frozen teacher in eval mode, and the configured losses.

``forward_train(x, y)`` returns the student's logits and a dict of *weighted* named losses whose sum is the total:
``ce = (1 - alpha) * CE`` (or plain CE without KD), ``kd = alpha * KD``, ``at = weight * AT`` (``loss.at_form``).
``weights`` gives each term's weight, so the unweighted value of a term is ``losses[k] / weights[k]``.

Attention transfer taps the teacher's paths on the teacher and the student's on the student (``at_layers`` pairs,
``toolkit.distill.taps``). The forward hooks that capture AT features live only as long as the Distiller is in use:
call :meth:`close` (or use it as a context manager) when done, and the teacher and student carry no hooks of ours
afterwards.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from toolkit.config import LossConfig
from toolkit.distill.losses import attention_transfer_loss, cross_entropy_loss, kd_loss
from toolkit.distill.taps import FeatureTap, as_pairs

__all__ = ["Distiller", "FeatureTap"]


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module | None, loss: LossConfig, use_kd: bool, use_at: bool,
                 at_layers: Sequence[str | Sequence[str]] = ()):
        """``at_layers``: (teacher path, student path) pairs (``toolkit.distill.taps.resolve_at_pairs``); a plain
        string names the same path in both networks."""
        super().__init__()
        if (use_kd or use_at) and teacher is None:
            raise ValueError("KD and AT need a teacher")
        self.student = student
        self.teacher = teacher
        self.loss = loss
        self.use_kd = use_kd
        self.use_at = use_at
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        if use_at and not at_layers:
            raise ValueError("attention transfer needs at least one layer name (at_layers)")
        pairs = as_pairs(at_layers) if use_at else ()
        self.at_pairs = pairs
        student_module = getattr(student, "module", student)
        self._student_tap = FeatureTap(student_module, tuple(s for _, s in pairs)) if use_at else None
        try:
            self._teacher_tap = FeatureTap(teacher, tuple(t for t, _ in pairs)) if use_at else None
        except Exception:
            self._student_tap.remove()  # leave no hooks behind on a failed construction
            raise

    @property
    def weights(self) -> dict[str, float]:
        """The weight of each named loss that ``forward_train`` returns (unweighted = weighted / weight)."""
        a = self.loss.alpha
        w = {"ce": 1 - a, "kd": a} if self.use_kd else {"ce": 1.0}
        if self.use_at:
            w["at"] = self.loss.at_weight_value
        return w

    def close(self) -> None:
        """Remove the feature hooks from student and teacher and drop the tensors they held."""
        for tap in (self._student_tap, self._teacher_tap):
            if tap is not None:
                tap.remove()
        self._student_tap = self._teacher_tap = None

    def __enter__(self) -> "Distiller":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def train(self, mode: bool = True) -> "Distiller":
        self.student.train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never leaves eval mode
        return self

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x: (B, 3, H, W) in [0, 1]; y: (B,). ``teacher_logits``: precomputed (cached mode) or None to run the teacher
        on ``x`` itself (online mode). Returns (student logits (B, C), weighted named losses)."""
        logits = self.student(x)
        losses: dict[str, torch.Tensor] = {}
        need_teacher_pass = self.use_at or (self.use_kd and teacher_logits is None)
        if need_teacher_pass:
            with torch.no_grad():
                online = self.teacher(x)
            if teacher_logits is None:
                teacher_logits = online
        ce = cross_entropy_loss(logits, y)
        if self.use_kd:
            a = self.loss.alpha
            losses["ce"] = (1 - a) * ce
            losses["kd"] = a * kd_loss(logits, teacher_logits.detach(), self.loss.temperature)
        else:
            losses["ce"] = ce
        if self.use_at:
            if self._student_tap is None:
                raise RuntimeError("this Distiller was closed: its attention-transfer hooks are gone")
            losses["at"] = self.loss.at_weight_value * attention_transfer_loss(
                self._student_tap.take(), [f.detach() for f in self._teacher_tap.take()], self.loss.at_form)
        return logits, losses
