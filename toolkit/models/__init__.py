"""Model zoo: MobileNetV2-CIFAR and its truncated students, CIFAR ResNets; a registry by name."""

from toolkit.models.checkpoint import load_model, load_weights, save_checkpoint
from toolkit.models.registry import MODEL_REGISTRY, ModelSpec, build_model, get_spec, list_models

__all__ = ["MODEL_REGISTRY", "ModelSpec", "build_model", "get_spec", "list_models", "load_model", "load_weights",
           "save_checkpoint"]
