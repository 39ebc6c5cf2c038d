"""Distillation: pure losses, the Distiller (student + frozen teacher), the training loop."""

from toolkit.distill.distiller import Distiller
from toolkit.distill.losses import LOSS_REGISTRY, attention_map, attention_transfer_loss, cross_entropy_loss, kd_loss

__all__ = ["Distiller", "LOSS_REGISTRY", "attention_map", "attention_transfer_loss", "cross_entropy_loss", "kd_loss"]
