"""How much error each quantized node adds: per-node SQNR between fp32 and int8 activations on validation images.

Built on ONNX Runtime's QDQ debugging tools (``onnxruntime.quantization.qdq_loss_debug``): both models are augmented
to output every float tensor (``modify_model_output_intermediate_tensors``), run on the same images
(``collect_activations``), paired by tensor name (``create_activation_matching``: fp32 tensor vs the int8 model's
dequantized tensor) and compared (``compute_activation_error``; weights: ``create_weight_matching`` +
``compute_weight_error``). The images go through in chunks, so memory stays bounded: ``compute_activation_error`` is
given an ``err_func`` returning signal and noise energies, summed over chunks, and the SQNR is ORT's formula on the
sums, ``20 log10(max(|x|, eps) / max(|x - y|, eps))`` in dB (higher is better).

A *quantized node* is a node of the QDQ model (not Q/DQ itself) that reads at least one DequantizeLinear output; its
name is the one ``quantize_static``'s ``nodes_to_exclude`` takes. Per node:

- ``sqnr_db``: fp32 vs int8 at the node's output (as its consumers see it: after its own Q/DQ): the error so far;
- ``input_sqnr_db``: the same at its worst quantized activation input;
- ``added_db``: ``input_sqnr_db - sqnr_db``, the SQNR lost at this node (its weights, its output rounding, and how it
  amplifies its input's noise). The error SQNR at a node's output accumulates down the network, so ranking by it would
  list the deepest nodes first; ``added_db`` ranks where the error arises. Most sensitive first: largest
  ``added_db``, ties by lowest ``sqnr_db``.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploy.steps import _ArrayReader, _quiet

CSV_NAME = "sensitivity.csv"
PLOT_NAME = "sensitivity.png"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
EPS = float(np.finfo(float).eps)
"""The floor ORT's ``compute_signal_to_quantization_noice_ratio`` puts under both norms."""


@dataclass
class NodeSensitivity:
    rank: int
    node: str
    op_type: str
    output: str
    sqnr_db: float
    input_sqnr_db: float | None
    added_db: float | None
    weight_sqnr_db: float | None
    """SQNR of the node's largest quantized constant input (its weights; ORT's weight matching), None without any."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def quantized_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of a QDQ model, other than Q/DQ, that read a DequantizeLinear output."""
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n for n in proto.graph.node if n.op_type not in QDQ_OPS and any(i in dq_out for i in n.input)]


def _energies(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> tuple[float, float]:
    """``err_func`` for ``compute_activation_error``: (signal energy |x|^2, noise energy |x - y|^2) of one chunk."""
    a = np.concatenate([np.ravel(v) for v in x]).astype(np.float64)
    b = np.concatenate([np.ravel(v) for v in y]).astype(np.float64)
    return float(a @ a), float(((a - b) ** 2).sum())


def sqnr_db(signal: float, noise: float) -> float:
    """ORT's SQNR (dB) from summed energies."""
    return 20 * math.log10(max(math.sqrt(signal), EPS) / max(math.sqrt(noise), EPS))


def activation_sqnr(float_path: Path, qdq_path: Path, images: np.ndarray, workdir: Path, extra: Sequence[str] = (),
                    chunk: int = 16) -> dict[str, float]:
    """SQNR (dB) per tensor, fp32 model vs int8 model, over ``images`` (float32 NCHW in [0, 1]), ``chunk`` at a time.

    ``extra``: tensors compared as they are when ORT's matching lacks them (a node output not re-quantized).
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, compute_activation_error, create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    aug_f, aug_q = workdir / "sensitivity.fp32.onnx", workdir / "sensitivity.int8.onnx"
    with _quiet():
        modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
    sums: dict[str, list[float]] = {}
    try:
        for i in range(0, len(images), chunk):
            part = np.ascontiguousarray(images[i:i + chunk], dtype=np.float32)
            fa = collect_activations(str(aug_f), _ArrayReader(part, len(part)))
            qa = collect_activations(str(aug_q), _ArrayReader(part, len(part)))
            match = create_activation_matching(qa, fa)
            for name in extra:
                if name not in match and name in qa and name in fa:
                    match[name] = {"pre_qdq": qa[name], "post_qdq": qa[name], "float": fa[name]}
            errors = compute_activation_error({k: v for k, v in match.items() if "float" in v}, err_func=_energies)
            for name, err in errors.items():
                s, n = err["xmodel_err"]
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += s
                acc[1] += n
    finally:
        aug_f.unlink(missing_ok=True)
        aug_q.unlink(missing_ok=True)
    return {name: sqnr_db(s, n) for name, (s, n) in sums.items()}


def node_sensitivity(float_path: Path, qdq_path: Path, images: np.ndarray, workdir: Path,
                     chunk: int = 16) -> list[NodeSensitivity]:
    """Per quantized node of ``qdq_path`` (quantized from ``float_path``, the pre-processed fp32 model whose tensor
    names it shares), most sensitive first."""
    from onnxruntime.quantization.qdq_loss_debug import compute_weight_error, create_weight_matching
    from onnxruntime.quantization.quant_utils import QUANT_INPUT_SUFFIX, TENSOR_NAME_QUANT_SUFFIX

    proto = onnx.load(str(qdq_path))
    nodes = quantized_nodes(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}
    sizes = {i.name: int(np.prod(i.dims)) for i in proto.graph.initializer}
    inits = set(sizes)
    sqnr = activation_sqnr(float_path, qdq_path, images, workdir, [o for n in nodes for o in n.output], chunk)
    with _quiet(logging.CRITICAL):  # it logs an error for each constant the quantizer copied (a shared bias)
        weights = compute_weight_error(create_weight_matching(str(float_path), str(qdq_path)))
    rows = []
    for node in nodes:
        keys = [*node.output, *(o[:-len(QUANT_INPUT_SUFFIX)] for o in node.output if o.endswith(QUANT_INPUT_SUFFIX))]
        out = next((k for k in keys if k in sqnr), None)
        if out is None:
            continue  # nothing float to compare at its output (not seen in practice)
        dqs = [producer[i] for i in node.input if i in producer and producer[i].op_type == "DequantizeLinear"]
        acts = [producer[d.input[0]].input[0] for d in dqs if d.input[0] not in inits and d.input[0] in producer]
        consts = sorted((d.input[0] for d in dqs if d.input[0] in inits), key=lambda c: -sizes[c])[:1]  # the weights
        ins = [sqnr[a] for a in acts if a in sqnr]
        w = [weights[c] for c in (c[:-len(TENSOR_NAME_QUANT_SUFFIX)] for c in consts) if c in weights]
        in_db = min(ins) if ins else None
        rows.append(NodeSensitivity(0, node.name, node.op_type, out, sqnr[out], in_db,
                                    None if in_db is None else in_db - sqnr[out], w[0] if w else None))
    rows.sort(key=lambda r: (r.added_db is None, -(r.added_db or 0.0), r.sqnr_db))
    for i, r in enumerate(rows, 1):
        r.rank = i
    return rows


def summary(rows: list[NodeSensitivity], images: int, top: int = 5, float_nodes: Sequence[str] = (),
            logits_sqnr_db: float | None = None) -> dict[str, Any]:
    """The manifest's summary of the report."""
    return {"file": CSV_NAME, "plot": PLOT_NAME, "split": "validation", "images": images, "nodes": len(rows),
            "tool": "onnxruntime.quantization.qdq_loss_debug", "order": "added_db descending (SQNR lost at the node)",
            "min_sqnr_db": round(min((r.sqnr_db for r in rows), default=float("nan")), 3),
            "logits_sqnr_db": None if logits_sqnr_db is None else round(logits_sqnr_db, 3),
            "most_sensitive": [r.to_dict() for r in rows[:top]], "float_nodes": list(float_nodes)}


def logits_sqnr(float_logits: np.ndarray, int8_logits: np.ndarray) -> float:
    """SQNR (dB) of int8 logits against fp32 logits."""
    return sqnr_db(*_energies([float_logits], [int8_logits]))


def write_report(rows: list[NodeSensitivity], folder: Path, float_nodes: Sequence[str] = (),
                 title: str = "int8 sensitivity") -> list[str]:
    """``sensitivity.csv`` (one row per quantized node, most sensitive first) and ``sensitivity.png`` in ``folder``."""
    kept = set(float_nodes)
    with open(folder / CSV_NAME, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "node", "op_type", "output", "sqnr_db", "input_sqnr_db", "added_db", "weight_sqnr_db",
                    "kept_float"])
        for r in rows:
            d = r.to_dict()
            w.writerow([d["rank"], d["node"], d["op_type"], d["output"], d["sqnr_db"], d["input_sqnr_db"],
                        d["added_db"], d["weight_sqnr_db"], "yes" if r.node in kept else "no"])
    _plot(rows, folder / PLOT_NAME, kept, title)
    return [CSV_NAME, PLOT_NAME]


def _plot(rows: list[NodeSensitivity], path: Path, kept: set[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(rows), 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, sharey=True, figsize=(11, 1.2 + 0.22 * n))
    y = np.arange(len(rows))
    colors = ["tab:orange" if r.node in kept else "tab:blue" for r in rows]
    ax1.barh(y, [r.added_db or 0.0 for r in rows], color=colors)
    ax1.set_xlabel("SQNR lost at the node, dB (added_db)")
    ax2.barh(y, [r.sqnr_db for r in rows], color=colors)
    ax2.set_xlabel("fp32 vs int8 SQNR at its output, dB")
    ax1.set_yticks(y, [f"{r.rank}. {r.node} ({r.op_type})" for r in rows], fontsize=7)
    ax1.invert_yaxis()
    fig.suptitle(f"{title}: most sensitive first" + ("; orange: kept in float" if kept else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
