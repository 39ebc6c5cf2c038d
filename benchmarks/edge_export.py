"""Read and verify a run's ONNX export folder (``runs/<name>/export/``) for the bench harness.

All coupling to the export manifest's schema (``deploy.manifest``: ``{"schema": "edge-distill-export-manifest",
"models": {"student.fp32" | "student.int8" | "teacher.fp32": {"file", "sha256", "input": {"name", "shape"},
"output": {"name"}, "accuracy": {"top1", "max_drop", ...}, ...}}}``) lives in :func:`parse_manifest`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from toolkit import ToolkitError
from deploy.manifest import sha256_file

MANIFEST_NAME = "manifest.json"
REQUIRED_ROLES = ("teacher.fp32", "student.fp32", "student.int8")


@dataclass(frozen=True)
class ExportedModel:
    """One ONNX file of the export: ``role`` such as ``student.int8``; input NCHW float32 in [0, 1]."""

    role: str
    path: Path
    sha256: str
    input_name: str
    output_name: str
    architecture: str | None = None
    export_top1: float | None = None
    """Top-1 (%) the exporter measured, when the manifest records it."""


@dataclass(frozen=True)
class ExportInfo:
    folder: Path
    models: dict[str, ExportedModel]
    max_int8_drop: float | None
    """The export's int8 gate: largest allowed student fp32 - int8 top-1 drop, in percentage points."""
    schema: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)



def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_manifest(raw: dict, folder: Path) -> ExportInfo:
    """The one place that knows the manifest's keys; tolerant of extra keys, strict on the ones it needs."""
    models = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(models, dict):
        raise ToolkitError(f"{folder / MANIFEST_NAME} has no 'models' object")
    missing = [r for r in REQUIRED_ROLES if r not in models]
    if missing:
        raise ToolkitError(f"{folder / MANIFEST_NAME} lacks model(s) {', '.join(missing)} (has {', '.join(models) or 'none'})")
    parsed: dict[str, ExportedModel] = {}
    for role in REQUIRED_ROLES:
        entry = models[role]
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
            raise ToolkitError(f"{folder / MANIFEST_NAME}: models.{role} needs 'file' and 'sha256' strings")
        inp = entry.get("input") if isinstance(entry.get("input"), dict) else {}
        out = entry.get("output") if isinstance(entry.get("output"), dict) else {}
        acc = entry.get("accuracy") if isinstance(entry.get("accuracy"), dict) else {}
        parsed[role] = ExportedModel(role=role, path=folder / entry["file"], sha256=entry["sha256"].lower(),
                                     input_name=str(inp.get("name", "input")), output_name=str(out.get("name", "logits")),
                                     architecture=entry.get("architecture") or entry.get("model"),
                                     export_top1=_num(acc.get("top1")))
    int8_acc = models["student.int8"].get("accuracy") if isinstance(models["student.int8"].get("accuracy"), dict) else {}
    gate = _num(int8_acc.get("max_drop"))
    if gate is None and isinstance(raw.get("gate"), dict):
        gate = _num(raw["gate"].get("max_int8_drop"))
    return ExportInfo(folder=folder, models=parsed, max_int8_drop=gate, schema=raw.get("schema"), raw=raw)


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - protobuf and checker raise many types for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ToolkitError(f"{path} is not a valid ONNX model: {first}") from None
    if not model.graph.node or not model.graph.input:
        raise ToolkitError(f"{path} is not a valid ONNX model: empty graph")


def load_export(folder: str | Path, verify: bool = True) -> ExportInfo:
    """Read ``folder/manifest.json``; check each needed file exists, matches its sha256 and parses as ONNX."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ToolkitError(f"export folder not found: {folder} (run `make export RUN=...` first)")
    if not manifest.is_file():
        raise ToolkitError(f"export manifest missing: {manifest} (run `make export RUN=...` first)")
    try:
        raw = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ToolkitError(f"export manifest {manifest} is not valid JSON: {str(exc).splitlines()[0]}") from None
    info = parse_manifest(raw, folder)
    if verify:
        for m in info.models.values():
            if not m.path.is_file():
                raise ToolkitError(f"export file missing: {m.path} (listed as {m.role} in {manifest})")
            digest = sha256_file(m.path)
            if digest != m.sha256:
                raise ToolkitError(f"export file {m.path} fails its sha256 check (manifest {m.sha256[:12]}..., "
                                   f"file {digest[:12]}...)")
            _check_onnx(m.path)
    return info
