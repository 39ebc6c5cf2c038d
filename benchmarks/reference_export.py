"""A plain reference export (ONNX fp32 + static QDQ int8 + manifest.json) for tests and session tuning.

The toolkit's real export is ``deploy.export`` (``make export``); this module only makes an export folder with the
same contract so the bench harness can be built and tested without it:
input ``"input"`` NCHW float32 RGB in [0, 1] with a dynamic batch, output ``"logits"``; int8 by ONNX Runtime's static
QDQ quantization with uint8 activations and per-channel int8 weights (U8S8, the fast pair on x86 VNNI).
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from toolkit.io import atomic_write_json

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(model: nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Export ``model`` (eval mode, input (N, 3, 32, 32) in [0, 1]) to ``path`` with a dynamic batch axis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 32, 32),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    return path


@dataclass
class Int8Recipe:
    """Static QDQ quantization settings (ONNX Runtime ``quantize_static``)."""

    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    calibrate_method: str = "MinMax"
    preprocess: bool = True
    """Run ``quant_pre_process`` (shape inference + graph optimisation) before quantizing."""
    extra_options: dict = field(default_factory=dict)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calib_images: np.ndarray,
                  recipe: Int8Recipe | None = None, batch_size: int = 32) -> Path:
    """Quantize ``fp32_path`` to ``int8_path`` with calibration images float32 (N, 3, 32, 32) in [0, 1]."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    recipe = recipe or Int8Recipe()
    calib = np.ascontiguousarray(calib_images, dtype=np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([calib[i : i + batch_size] for i in range(0, len(calib), batch_size)])

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(fp32_path)
        if recipe.preprocess:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=False)
            source = pre
        quantize_static(str(source), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=getattr(QuantType, recipe.activation_type),
                        weight_type=getattr(QuantType, recipe.weight_type), per_channel=recipe.per_channel,
                        calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
                        extra_options=dict(recipe.extra_options))
    return int8_path


def write_reference_export(export_dir: str | Path, teacher: nn.Module, student: nn.Module, calib_images: np.ndarray,
                           names: dict[str, str] | None = None, recipe: Int8Recipe | None = None,
                           max_int8_drop: float = 1.0) -> Path:
    """Write teacher.fp32.onnx, student.fp32.onnx, student.int8.onnx and manifest.json into ``export_dir``.

    The manifest carries the keys ``deploy.manifest`` defines that the bench harness reads (file, sha256, input,
    output, architecture, accuracy.max_drop), not the full schema.
    ``max_int8_drop``: the int8 accuracy gate in percentage points of top-1 (student fp32 minus student int8).
    """
    export_dir = Path(export_dir)
    names = names or {}
    files = {
        "teacher.fp32": export_onnx(teacher, export_dir / "teacher.fp32.onnx"),
        "student.fp32": export_onnx(student, export_dir / "student.fp32.onnx"),
    }
    files["student.int8"] = quantize_int8(files["student.fp32"], export_dir / "student.int8.onnx", calib_images, recipe)
    models = {}
    for role, path in files.items():
        models[role] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "architecture": names.get(role.split(".")[0]),
            "precision": role.split(".")[1],
            "input": {"name": INPUT_NAME, "shape": ["batch", 3, 32, 32], "dtype": "float32", "layout": "NCHW",
                      "range": [0.0, 1.0]},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", 10]},
            "accuracy": {"max_drop": max_int8_drop} if role == "student.int8" else {},
        }
    manifest = {
        "format": "reference-export-v1",
        "preprocessing": "uint8 RGB HWC -> float32 / 255 -> NCHW; mean/std normalisation is inside the graph",
        "models": models,
    }
    atomic_write_json(export_dir / "manifest.json", manifest)
    return export_dir
