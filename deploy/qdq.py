"""Q/DQ graph helpers for the QAT export: drop no-op Clips, count ops in the graph ONNX Runtime actually runs."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from toolkit import ToolkitError

INTEGER_OPS = ("QLinearConv", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger", "QLinearAdd", "QLinearMul")
FLOAT_CONVS = ("Conv", "FusedConv", "NchwcConv")


def drop_full_range_clips(proto: onnx.ModelProto) -> int:
    """Remove Clip nodes right after a QuantizeLinear whose bounds are the whole range of the integer type (the
    exporter's rendering of quant_min/quant_max): they change nothing but hide the Q -> DQ pair from ORT's fusion."""
    graph = proto.graph
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    consts.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    producer = {o: n for n in graph.node for o in n.output}
    rename: dict[str, str] = {}
    for n in graph.node:
        if n.op_type != "Clip" or len(n.input) != 3 or producer.get(n.input[0]) is None:
            continue
        if producer[n.input[0]].op_type != "QuantizeLinear":
            continue
        lo, hi = consts.get(n.input[1]), consts.get(n.input[2])
        if lo is None or hi is None or lo.dtype.kind not in "iu":
            continue
        info = np.iinfo(lo.dtype)
        if int(lo) == info.min and int(hi) == info.max:
            rename[n.output[0]] = n.input[0]
    if not rename:
        return 0
    keep = [n for n in graph.node if not (n.op_type == "Clip" and n.output[0] in rename)]
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    for out in graph.output:
        if out.name in rename:
            raise ToolkitError("a graph output is a full-range Clip of a QuantizeLinear; cannot drop it")
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in proto.graph.node).items()))


def optimized_op_counts(path: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (CPU, all optimizations), via ``optimized_model_filepath``."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return op_counts(onnx.load(opts.optimized_model_filepath))


def kernel_summary(ops: dict[str, int]) -> dict[str, int]:
    """How many integer kernels and float convolutions the optimized graph holds."""
    return {"integer_ops": sum(ops.get(k, 0) for k in INTEGER_OPS),
            "float_convs": sum(ops.get(k, 0) for k in FLOAT_CONVS), "qlinearconv": ops.get("QLinearConv", 0)}
