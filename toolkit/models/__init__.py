"""Model zoo: MobileNetV2-CIFAR and its truncated students, CIFAR ResNets, torchvision/timm models and truncations
of them; a registry by name."""

from toolkit.models.checkpoint import load_model, load_weights, save_checkpoint
from toolkit.models.derive import canonical_student_name, derivable_students
from toolkit.models.foreign import ImageClassifier, classifier_name
from toolkit.models.registry import MODEL_REGISTRY, ModelSpec, build_model, get_spec, list_models

__all__ = ["MODEL_REGISTRY", "ImageClassifier", "ModelSpec", "build_model", "canonical_student_name", "classifier_name",
           "derivable_students", "get_spec", "list_models", "load_model", "load_weights", "save_checkpoint"]
