"""Read and verify a run's ONNX export folder (``runs/<name>/export/``) for the bench harness.

The manifest is read and validated by ``deploy.manifest.read_manifest``, the schema's one home; :func:`export_info`
is the one place that maps it to what the bench needs (the three roles it times, their files, IO names, the
accuracies the exporter measured and the int8 gate). :func:`load_export` adds the checks of the files themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgecommon.hashing import sha256_file
from deploy.manifest import MANIFEST_NAME, Manifest, ModelEntry, read_manifest
from toolkit import ToolkitError

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
    manifest: Manifest | None = field(default=None, repr=False, compare=False)


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _accuracy(entry: ModelEntry) -> dict:
    return entry.accuracy if isinstance(entry.accuracy, dict) else {}


def export_info(manifest: Manifest, folder: Path) -> ExportInfo:
    """The bench's view of a validated manifest whose files lie in ``folder``; all three roles must be there."""
    missing = [r for r in REQUIRED_ROLES if r not in manifest.models]
    if missing:
        raise ToolkitError(f"{folder / MANIFEST_NAME} lacks model(s) {', '.join(missing)} "
                           f"(has {', '.join(manifest.models) or 'none'})")
    models = {}
    for role in REQUIRED_ROLES:
        e = manifest.models[role]
        models[role] = ExportedModel(role=role, path=folder / e.file, sha256=e.sha256.lower(), input_name=e.input.name,
                                     output_name=e.output.name, architecture=e.architecture,
                                     export_top1=_num(_accuracy(e).get("top1")))
    gate = _num(_accuracy(manifest.models["student.int8"]).get("max_drop"))
    return ExportInfo(folder=folder, models=models, max_int8_drop=gate, schema=manifest.schema, manifest=manifest)


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
    """Read ``folder/manifest.json`` (``deploy.manifest.read_manifest``: a malformed one raises its DeployError, a
    ToolkitError); check each needed file exists, matches its sha256 and parses as ONNX."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ToolkitError(f"export folder not found: {folder} (run `make export RUN=...` first)")
    if not manifest.is_file():
        raise ToolkitError(f"export manifest missing: {manifest} (run `make export RUN=...` first)")
    info = export_info(read_manifest(manifest), folder)
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
