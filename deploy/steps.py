"""The export pipeline's steps, each a small unit with declared inputs, outputs and config, and its own check.

- ``export_onnx``: PyTorch model -> ONNX file (dynamo or TorchScript exporter), checked by ``check_io``;
- ``simplify_onnx``: onnxsim, then ``onnx.checker``;
- ``quantize_onnx``: ``quant_pre_process`` then static QDQ (or dynamic) int8 with onnxruntime.quantization, optionally
  keeping named nodes in float and reusing a calibration cache (``deploy.fallback`` drives both);
- ``accuracy_gate``: int8 vs fp32 top-1 on the validation images, fails beyond a bound.
Parity (``deploy.parity``) runs between them. Steps write only to the paths they are given (a staging folder);
``deploy.export`` commits finished files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from deploy.manifest import INPUT_NAME, OUTPUT_NAME
from toolkit import ToolkitError

MIN_OPSET = 17
EXPORTERS = ("dynamo", "torchscript")
CALIBRATIONS = ("minmax", "entropy", "percentile")
AUTO_CALIBRATION = "auto"
"""``QuantizeConfig.calibration``: try every method in ``CALIBRATIONS`` and keep the best on validation images
(``deploy.fallback``); ``quantize_onnx`` itself needs one method."""


class StepError(ToolkitError):
    """A pipeline step's own check failed."""


class GateError(ToolkitError):
    """The int8 accuracy gate failed; the message carries both accuracies and the agreement rate."""


@dataclass
class StepRecord:
    """What one step did: recorded in the manifest's ``pipeline`` list."""

    step: str
    inputs: list[str]
    outputs: list[str]
    config: dict[str, Any]
    check: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- export


@dataclass
class ExportOnnxConfig:
    exporter: str = "dynamo"
    """``dynamo`` (torch.export + onnxscript, PyTorch's default) or ``torchscript`` (classic, ``dynamo=False``)."""
    opset: int = 18
    example_batch: int = 2
    """Batch size of the tracing example; the batch axis is exported dynamic ("batch")."""

    def validate(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ToolkitError(f"exporter must be one of {', '.join(EXPORTERS)}, got '{self.exporter}'")
        if self.opset < MIN_OPSET:
            raise ToolkitError(f"opset must be >= {MIN_OPSET}, got {self.opset}")


def export_onnx(model: nn.Module, dst: Path, cfg: ExportOnnxConfig, image_size: int = 32) -> StepRecord:
    """Export ``model`` (eval mode, float32 NCHW [0, 1] input) to ``dst`` with input "input" and output "logits"."""
    cfg.validate()
    t0 = time.perf_counter()
    model = model.eval().float().cpu()
    example = (torch.rand(cfg.example_batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)),)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if cfg.exporter == "dynamo":
                program = torch.onnx.export(model, example, None, dynamo=True, input_names=[INPUT_NAME],
                                            output_names=[OUTPUT_NAME], opset_version=cfg.opset, verbose=False,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},))
                proto = program.model_proto
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.onnx"
                    torch.onnx.export(model, example, str(path), dynamo=False, input_names=[INPUT_NAME],
                                      output_names=[OUTPUT_NAME], opset_version=cfg.opset, do_constant_folding=True,
                                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
                    proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - exporters raise many exception types
        raise StepError(f"{cfg.exporter} ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    onnx.save(proto, str(dst))
    check = check_io(dst, cfg.opset)
    return StepRecord("export", ["pytorch model"], [dst.name], asdict(cfg), check, time.perf_counter() - t0)


def model_opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def tensor_shape(value_info: onnx.ValueInfoProto) -> list[Any]:
    """Dimensions as ints, with symbolic ones as their names (``"batch"``) or ``"?"``."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def check_io(path: Path, min_opset: int = MIN_OPSET) -> dict[str, Any]:
    """onnx.checker (full), then one float input "input" (batch, 3, H, W) with a symbolic batch, output "logits"."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker raises ValidationError and inference errors
        raise StepError(f"onnx.checker rejects {path.name}: {str(exc).splitlines()[0][:300]}") from None
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in graph.output] != [OUTPUT_NAME]:
        raise StepError(f"{path.name}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', got "
                        f"{[i.name for i in inputs]} -> {[o.name for o in graph.output]}")
    shape = tensor_shape(inputs[0])
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(shape) != 4 or not isinstance(shape[0], str):
        raise StepError(f"{path.name}: input must be float32 (batch, 3, H, W) with a dynamic batch, got {shape}")
    opset = model_opset(proto)
    if opset < min_opset:
        raise StepError(f"{path.name}: opset {opset} < {min_opset}")
    return {"onnx_checker": "passed", "opset": opset, "input_shape": shape, "output_shape": tensor_shape(graph.output[0]),
            "nodes": len(graph.node)}


# ---------------------------------------------------------------- simplify


def simplify_onnx(src: Path, dst: Path) -> StepRecord:
    """onnxsim with its own numerical check, then onnx.checker and the I/O contract on the result."""
    import onnxsim

    t0 = time.perf_counter()
    proto = onnx.load(str(src))
    try:
        simplified, ok = onnxsim.simplify(proto)
    except Exception as exc:  # noqa: BLE001
        raise StepError(f"onnxsim failed on {src.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    if not ok:
        raise StepError(f"onnxsim's own check rejects the simplified {src.name}")
    onnx.save(simplified, str(dst))
    check = check_io(dst)
    check["nodes_before"] = len(proto.graph.node)
    return StepRecord("simplify", [src.name], [dst.name], {"tool": f"onnxsim {getattr(onnxsim, '__version__', '?')}"},
                      check, time.perf_counter() - t0)


# ---------------------------------------------------------------- quantize


@dataclass
class QuantizeConfig:
    """int8 quantization with onnxruntime.quantization. Defaults: the fast path on x86 (AVX-512 VNNI) CPUs."""

    mode: str = "static"
    """``static`` (QDQ, calibrated) or ``dynamic`` (weights only; activations quantized at run time)."""
    calibration: str = "minmax"
    """``minmax``, ``entropy`` or ``percentile`` (static mode); ``auto`` (export only): the best on validation."""
    calib_size: int = 512
    """Training images used for calibration."""
    calib_seed: int = 0
    calib_batch: int = 64
    per_channel: bool = True
    reduce_range: bool = False
    """7-bit weights; only helps CPUs without VNNI. False on this CPU."""
    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    quantize_bias: bool = True
    percentile: float = 99.999
    """Kept percentile of |activation| for ``percentile`` calibration."""
    preprocess: bool = True
    """Run ``quant_pre_process`` (shape inference + ORT graph optimisation) first; False quantizes the graph as is."""
    extra_options: dict[str, Any] = field(default_factory=dict)
    """Further onnxruntime.quantization extra_options, passed through."""

    def validate(self) -> None:
        from onnxruntime.quantization import QuantType

        if self.mode not in ("static", "dynamic"):
            raise ToolkitError(f"quantization mode must be static or dynamic, got '{self.mode}'")
        if self.calibration not in (*CALIBRATIONS, AUTO_CALIBRATION):
            raise ToolkitError(f"calibration must be one of {', '.join(CALIBRATIONS)} or auto, got '{self.calibration}'")
        if self.calib_size < 1 or self.calib_batch < 1:
            raise ToolkitError(f"calib_size and calib_batch must be >= 1, got {self.calib_size}, {self.calib_batch}")
        for name in (self.activation_type, self.weight_type):
            if name not in QuantType.__members__:
                raise ToolkitError(f"unknown quant type '{name}'; use QUInt8 or QInt8")
        if not 0 < self.percentile <= 100:
            raise ToolkitError(f"percentile must be in (0, 100], got {self.percentile}")


def even_batch(n: int, max_batch: int) -> int:
    """Largest batch size <= ``max_batch`` that divides ``n``: ORT's histogram calibrators (entropy, percentile)
    fail with "inhomogeneous shape" when the last calibration batch is smaller than the others."""
    return next(b for b in range(min(n, max_batch), 0, -1) if n % b == 0)


class _ArrayReader:
    """CalibrationDataReader over float32 (N, 3, H, W) in batches of ``batch`` (which should divide N); iterable, as
    ``onnxruntime.quantization.qdq_loss_debug.collect_activations`` needs."""

    def __init__(self, x: np.ndarray, batch: int):
        self.x, self.batch = x, batch
        self._it: Iterator[dict[str, np.ndarray]] = iter(())
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter([{INPUT_NAME: self.x[i:i + self.batch]} for i in range(0, len(self.x), self.batch)])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.rewind()
        return iter(self.get_next, None)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)


@contextlib.contextmanager
def _quiet(level: int = logging.ERROR) -> Iterator[None]:
    """Silence ORT's quantizer: lines below ``level`` on the root logger and histogram progress printed to stdout."""
    log = logging.getLogger()
    previous = log.level
    log.setLevel(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        log.setLevel(previous)


def preprocess_onnx(src: Path, dst: Path, optimize: bool = True) -> None:
    """``quant_pre_process`` (shape inference + ORT graph optimisation; a copy when not ``optimize``) into ``dst``,
    then a name for every unnamed node (``<op>_<index>``), since ``nodes_to_exclude`` addresses nodes by name."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if optimize:
        quant_pre_process(str(src), str(dst))
    else:
        shutil.copyfile(src, dst)
    proto = onnx.load(str(dst))
    if any(not n.name for n in proto.graph.node):
        taken = {n.name for n in proto.graph.node}
        for i, node in enumerate(proto.graph.node):
            name = node.name or f"{node.op_type}_{i}"
            while name in taken - {node.name}:
                name += "_"
            node.name = name
            taken.add(name)
        onnx.save(proto, str(dst))


def quantize_onnx(src: Path, dst: Path, cfg: QuantizeConfig, calib: np.ndarray | None,
                  nodes_to_exclude: Sequence[str] = (), calibration_cache: Path | None = None,
                  preprocessed: Path | None = None) -> StepRecord:
    """``quant_pre_process`` (shape inference + ORT graph optimisation; ``cfg.preprocess``), then static QDQ or dynamic
    int8 into ``dst``.

    ``calib``: float32 (N, 3, H, W) in [0, 1] calibration images (static mode). ``nodes_to_exclude``: node names (of
    the pre-processed graph) kept in float (ORT's ``nodes_to_exclude``). ``calibration_cache``: ORT's
    ``calibration_cache_path`` (ranges computed once, reused while only the excluded nodes change).
    ``preprocessed``: where the pre-processed model is kept and reused (None: a temporary file, removed).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    cfg.validate()
    if cfg.mode == "static" and cfg.calibration not in CALIBRATIONS:
        raise StepError(f"quantize_onnx needs one calibration method ({', '.join(CALIBRATIONS)}), got '{cfg.calibration}'")
    t0 = time.perf_counter()
    pre = preprocessed or dst.with_name(dst.name.replace(".onnx", ".pre.onnx"))
    try:
        if not (preprocessed and preprocessed.exists()):
            preprocess_onnx(src, pre, cfg.preprocess)
        extra = {"ActivationSymmetric": cfg.activation_symmetric, "WeightSymmetric": cfg.weight_symmetric,
                 "QuantizeBias": cfg.quantize_bias, **cfg.extra_options}
        if cfg.mode == "static":
            if calib is None or len(calib) == 0:
                raise StepError("static quantization needs calibration images")
            if cfg.calibration == "percentile":
                extra["CalibPercentile"] = cfg.percentile
        with _quiet():
            if cfg.mode == "static":
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[cfg.calibration]
                batch = even_batch(len(calib), cfg.calib_batch)
                quantize_static(str(pre), str(dst), _ArrayReader(calib.astype(np.float32), batch),
                                quant_format=QuantFormat.QDQ, activation_type=QuantType[cfg.activation_type],
                                weight_type=QuantType[cfg.weight_type], per_channel=cfg.per_channel,
                                reduce_range=cfg.reduce_range, calibrate_method=method, extra_options=extra,
                                nodes_to_exclude=list(nodes_to_exclude),
                                calibration_cache_path=None if calibration_cache is None else str(calibration_cache))
            else:
                quantize_dynamic(str(pre), str(dst), weight_type=QuantType[cfg.weight_type], per_channel=cfg.per_channel,
                                 reduce_range=cfg.reduce_range, extra_options=extra,
                                 nodes_to_exclude=list(nodes_to_exclude))
    except StepError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many exception types
        raise StepError(f"int8 quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    finally:
        if preprocessed is None and pre.exists():
            pre.unlink()
    check = check_io(dst, min_opset=MIN_OPSET)
    proto = onnx.load(str(dst))
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    check["op_counts"] = dict(sorted(ops.items()))
    config = asdict(cfg)
    config["onnxruntime"] = ort.__version__
    config["nodes_to_exclude"] = list(nodes_to_exclude)
    if cfg.mode == "static" and calib is not None:
        config["calib_batch"] = even_batch(len(calib), cfg.calib_batch)
    return StepRecord("quantize", [src.name], [dst.name], config, check, time.perf_counter() - t0)


# ---------------------------------------------------------------- accuracy


def onnx_logits(path: Path | str, x_uint8_nchw: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits (N, C) of an ONNX model with ONNX Runtime (CPU) on uint8 (N, 3, H, W) images, scaled /255 here."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(x_uint8_nchw), batch_size):
        x = x_uint8_nchw[i:i + batch_size].astype(np.float32) * np.float32(1 / 255)
        out.append(session.run(None, {INPUT_NAME: x})[0])
    return np.concatenate(out)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(1) == labels).mean() * 100)


def gate_figures(fp32_logits: np.ndarray, int8_logits: np.ndarray, labels: np.ndarray, max_drop: float) -> dict[str, Any]:
    """int8 vs fp32 on the same images: {"fp32_top1", "int8_top1", "drop_points", "agreement", "n", "max_drop",
    "max_abs_logit_diff", "within"} (accuracies in percent; ``within``: finite int8 logits and drop <= ``max_drop``)."""
    fp32, int8 = top1(fp32_logits, labels), top1(int8_logits, labels)
    agreement = float((fp32_logits.argmax(1) == int8_logits.argmax(1)).mean() * 100)
    return {"fp32_top1": round(fp32, 4), "int8_top1": round(int8, 4), "drop_points": round(fp32 - int8, 4),
            "agreement": round(agreement, 4), "n": int(len(labels)), "max_drop": max_drop,
            "max_abs_logit_diff": float(np.abs(fp32_logits - int8_logits).max()) if len(labels) else 0.0,
            "within": bool(np.isfinite(int8_logits).all() and fp32 - int8 <= max_drop)}


def accuracy_gate(fp32_logits: np.ndarray, int8_logits: np.ndarray, labels: np.ndarray, max_drop: float,
                  split: str = "validation") -> dict[str, Any]:
    """``gate_figures``, raising GateError when ``fp32 - int8`` top-1 > ``max_drop`` points or int8 logits are not
    finite. ``split`` only names the images in the message (the export gates on validation images)."""
    f = gate_figures(fp32_logits, int8_logits, labels, max_drop)
    if not f["within"]:
        raise GateError(f"int8 accuracy gate failed: int8 top-1 {f['int8_top1']:.2f}% vs fp32 {f['fp32_top1']:.2f}% "
                        f"(drop {f['drop_points']:.2f} points > allowed {max_drop:g}); agreement {f['agreement']:.1f}% "
                        f"on {f['n']} {split} images")
    return f
