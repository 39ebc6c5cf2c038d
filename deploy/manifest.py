"""The export manifest schema, in one place: ``deploy.export`` writes it, ``deploy.runtime`` reads it.

Standard library and the bottom layer ``edgecommon`` only, so the device runtime can import it. A manifest is JSON::

    {"schema": "edge-distill-export-manifest", "schema_version": 1, "schema_minor": 1, "created_utc": ...,
     "toolkit_version": ..., "run": ..., "data": {...}, "classes": [...], "calibration": {...} | null,
     "models": {"student.fp32": ModelEntry, "student.int8": ModelEntry, "teacher.fp32": ModelEntry},
     "ship": {"model": "student.int8" | "student.fp32", "reason": ...}, "int8": {...}}

Each ``ModelEntry`` names its file (relative to the manifest), sha256, size, opset, input/output tensors, the exact
preprocessing (``Preprocessing``), accuracies, source checkpoint, parity figures and, for int8, quantization details.

Optional ``runtime`` / ``format`` on an entry (default ``onnxruntime`` / ``onnx``) say what runs its file; entries
added by ``deploy.targets`` (OpenVINO IR, ExecuTorch .pte) set them, and readers that ignore them still read the rest.

Minor revisions only add optional fields, and a reader ignores fields it does not know, so any minor of version 1
reads: minor 0 (no ``schema_minor``, ``ship`` or ``int8``) is read as before; minor 1 adds ``ship`` (the student to
ship) and ``int8`` (decisions on validation: calibration choice, sensitivity summary, fallback, latency, accuracies).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecommon import ToolkitError
from edgecommon.hashing import sha256_file  # noqa: F401 - the runtime's and the exporter's sha256, re-exported here
from edgecommon.images import COLOR_RULE, resize_rule

SCHEMA = "edge-distill-export-manifest"
SCHEMA_VERSION = 1
SCHEMA_MINOR = 1
"""Minor revision written by this exporter; manifests without the field are minor 0."""
MANIFEST_NAME = "manifest.json"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
IMAGE_SIZE = 32
RESIZE_RULE = resize_rule(IMAGE_SIZE)
"""The default (32 px) rule; an export writes the rule for its own input size (``edgecommon.images.resize_rule``)."""


class DeployError(ToolkitError):
    """Bad input or state in export or runtime; CLIs print it as one ``error: ...`` line and exit non-zero."""


@dataclass
class Normalization:
    """Per-channel ``(x - mean) / std`` on [0, 1] RGB. ``in_graph``: applied by the ONNX model itself."""

    mean: list[float]
    std: list[float]
    in_graph: bool = True


@dataclass
class Preprocessing:
    """How to turn an image into the model's input tensor (applied in this order)."""

    normalization: Normalization
    image_size: list[int] = field(default_factory=lambda: [IMAGE_SIZE, IMAGE_SIZE])
    """[height, width] in pixels."""
    channel_order: str = "RGB"
    source_dtype: str = "uint8"
    scale: float = 1.0 / 255.0
    """float32(pixel) * scale, giving [0, 1]."""
    layout: str = "NCHW"
    dtype: str = "float32"
    resize: str = RESIZE_RULE
    color: str = COLOR_RULE


@dataclass
class TensorSpec:
    name: str
    shape: list[Any]
    """Dimension sizes; a string is a symbolic (dynamic) dimension, e.g. ``"batch"``."""
    dtype: str = "float32"
    layout: str | None = None


@dataclass
class ModelEntry:
    file: str
    """File name relative to the manifest's folder."""
    sha256: str
    size_bytes: int
    role: str
    """``student`` or ``teacher``."""
    precision: str
    """``fp32`` or ``int8``."""
    architecture: str
    opset: int
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    source_checkpoint: dict[str, Any]
    """``{"path", "sha256"}`` of the PyTorch checkpoint the model came from."""
    accuracy: dict[str, Any] = field(default_factory=dict)
    """``{"top1": percent, "n": images, ...}`` measured with ONNX Runtime at export."""
    parity: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    exporter: str | None = None
    runtime: str = "onnxruntime"
    """What runs ``file``: ``onnxruntime`` (.onnx, .ort), ``openvino`` (IR .xml, its .bin beside it) or ``executorch``
    (.pte); ``deploy.targets.runtimes.open_runner`` opens any of them."""
    format: str = "onnx"
    """``onnx``, ``ort``, ``openvino-ir`` or ``pte``."""
    extra_files: dict[str, str] | None = None
    """Files the model needs besides ``file`` (plain names beside the manifest) -> sha256, e.g. an OpenVINO IR's .bin."""


@dataclass
class Manifest:
    models: dict[str, ModelEntry]
    classes: list[str]
    toolkit_version: str
    run: str
    data: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    created_utc: str = ""
    ship: dict[str, Any] | None = None
    """``{"model": key, "reason": text}``: the student to deploy (minor >= 1); see ``shipped_student``."""
    int8: dict[str, Any] | None = None
    """How the int8 student was decided, on validation images (minor >= 1; ``deploy.export``)."""
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    schema_minor: int = SCHEMA_MINOR

    @property
    def shipped_student(self) -> str:
        """The model key to deploy: ``ship.model``; for a minor-0 manifest the int8 student (the rule then).
        ``entry(manifest.shipped_student)`` raises a one-line DeployError when that entry is missing."""
        if self.ship:
            return str(self.ship["model"])
        return "student.int8" if "student.int8" in self.models else "student.fp32"

    def to_dict(self) -> dict[str, Any]:
        head = {"schema": self.schema, "schema_version": self.schema_version, "schema_minor": self.schema_minor}
        body = {k: v for k, v in dataclasses.asdict(self).items() if k not in head}
        return {**head, **body}

    def entry(self, key: str) -> ModelEntry:
        if key not in self.models:
            raise DeployError(f"model '{key}' not in manifest; available: {', '.join(self.models)}")
        return self.models[key]


def _build(cls: type, values: Any, where: str) -> Any:
    """Recursively build dataclass ``cls`` from a dict, with one-line errors naming the bad field."""
    if not isinstance(values, dict):
        raise DeployError(f"manifest field '{where}' must be an object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [n for n, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in values]
    if missing:
        raise DeployError(f"manifest field '{where}' lacks {', '.join(missing)}")
    nested = {"input": TensorSpec, "output": TensorSpec, "preprocessing": Preprocessing, "normalization": Normalization}
    kwargs = {}
    for name, value in values.items():
        if name not in fields:
            continue  # tolerate fields added by later schema minor revisions
        if name in nested:
            value = _build(nested[name], value, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def manifest_from_dict(raw: Any) -> Manifest:
    """Validate and build a Manifest from parsed JSON; raises DeployError naming the first problem."""
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise DeployError(f"not an export manifest (expected \"schema\": \"{SCHEMA}\")")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise DeployError(f"manifest schema_version {raw.get('schema_version')} not supported (this runtime reads {SCHEMA_VERSION})")
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise DeployError("manifest has no models")
    built = {key: _build(ModelEntry, value, f"models.{key}") for key, value in models.items()}
    manifest = _build(Manifest, {**raw, "models": {}, "schema_minor": raw.get("schema_minor", 0)}, "manifest")
    manifest.models = built
    ship = manifest.ship
    if ship is not None and (not isinstance(ship, dict) or not isinstance(ship.get("model"), str)):
        raise DeployError(f"manifest field 'ship' must be an object naming a model key, got {ship!r}")
    for key, entry in built.items():
        p = entry.preprocessing
        if len(p.normalization.mean) != 3 or len(p.normalization.std) != 3 or any(s <= 0 for s in p.normalization.std):
            raise DeployError(f"manifest models.{key}: normalization needs 3 means and 3 positive stds")
        if p.channel_order != "RGB" or p.layout != "NCHW" or p.dtype != "float32":
            raise DeployError(f"manifest models.{key}: unsupported preprocessing {p.channel_order}/{p.layout}/{p.dtype}")
        if entry.extra_files is not None and not isinstance(entry.extra_files, dict):
            raise DeployError(f"manifest models.{key}: extra_files must map file names to sha256")
        for name in [entry.file, *(entry.extra_files or {})]:
            if Path(name).name != name:
                raise DeployError(f"manifest models.{key}: file must be a plain name beside the manifest, got '{name}'")
    return manifest


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate ``manifest.json``; one-line DeployError when missing or malformed."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DeployError(f"manifest not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DeployError(f"cannot read manifest {path}: not valid JSON: {str(exc).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read manifest {path}: {str(exc).splitlines()[0]}") from None
    return manifest_from_dict(raw)
