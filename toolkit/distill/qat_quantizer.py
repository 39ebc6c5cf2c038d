"""The PT2E quantizer for quantization-aware training: torchao's X86 recipe, re-annotated for ONNX Runtime's QDQ fusion.

torchao's ``X86InductorQuantizer`` (its default config is the U8S8 recipe ``deploy.steps.QuantizeConfig`` uses with
ORT: uint8 per-tensor affine activations, int8 per-channel symmetric weights; :func:`qat_config` is that recipe with
the details pinned) quantizes the *inputs* of convolutions and linears and fuses
conv+BN+hardswish/SiLU and conv+BN+add into one pattern, because Inductor keeps those outputs in float. ORT fuses a
node into an integer kernel (QLinearConv, QGemm, QLinearAdd, QLinearMul) only when it sits between DequantizeLinear
inputs and a QuantizeLinear output, so :class:`OrtQDQQuantizer` changes only the annotation (which edges get a fake
quantizer), never the fake-quantize or observer arithmetic, which stays torchao's:

- hardswish and SiLU are not fused into the conv pattern (ORT has no integer kernel for them: the conv output is
  quantized and the activation runs in float between DQ and Q, as in ORT's own static quantization);
- conv+add is not fused: the conv output is quantized and the add gets quantized inputs and output (QLinearAdd);
- every conv/linear pattern output and every float add/mul of two tensors gets an output fake quantizer.
ReLU stays fused (ORT drops a ReLU in front of a QuantizeLinear whose zero point is 0).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from toolkit import ToolkitError

RECIPE = "pt2e-x86-ort-qdq-u8s8-v2"
"""Names this annotation recipe in fingerprints; bump when the annotation changes."""
QAT_EXTRA_HINT = "pip install -e '.[qat]'"


def require_torchao() -> None:
    """Raise a one-line ToolkitError when torchao (the ``qat`` extra) is missing."""
    try:
        import torchao  # noqa: F401
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e  # noqa: F401
    except ImportError as exc:
        raise ToolkitError(f"quantization-aware training needs torchao (the 'qat' extra): {QAT_EXTRA_HINT} "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


def qat_config():
    """The QAT quantization config: uint8 per-tensor affine activations and int8 per-channel symmetric weights in
    [-127, 127] (ORT's U8S8 recipe, its symmetric weight range), moving-average min/max observers (eps 2**-12, as
    torchao's x86 default), observed by plain ``FakeQuantize`` modules.

    Not the default ``FusedMovingAvgObsFakeQuantize``: its fused kernel quantizes a weight channel whose values share
    one sign asymmetrically (zero point -128/127) and its scales differ from ``calculate_qparams()`` (which
    ``convert_pt2e`` uses) by up to 1/255, so the converted int8 model was not the model that was trained (top-1
    agreement 93% on tin29). ``FakeQuantize`` stores exactly what ``calculate_qparams()`` returns."""
    from torchao.quantization.pt2e import FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    act = QuantizationSpec(dtype=torch.uint8, quant_min=0, quant_max=255, qscheme=torch.per_tensor_affine,
                           is_dynamic=False, observer_or_fake_quant_ctr=FakeQuantize.with_args(
                               observer=MovingAverageMinMaxObserver, eps=2 ** -12))
    weight = QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                              ch_axis=0, is_dynamic=False, observer_or_fake_quant_ctr=FakeQuantize.with_args(
                                  observer=MovingAveragePerChannelMinMaxObserver, eps=2 ** -12))
    return QuantizationConfig(act, act, weight, None, is_qat=True)


def make_quantizer():
    """An :class:`OrtQDQQuantizer` with :func:`qat_config`."""
    from torchao.quantization.pt2e.quantizer.utils import get_input_act_qspec, get_output_act_qspec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        QUANT_ANNOTATION_KEY, X86InductorQuantizer, _X86InductorQuantizationAnnotation, int8_in_int8_out_ops)

    aten = torch.ops.aten
    float_unary = {aten.hardswish.default, aten.hardswish_.default, aten.silu.default, aten.silu_.default}
    binary = {aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor}

    def keep(filter_fn):
        """Refuse conv(+BN)+hardswish/SiLU patterns (``nodes[0]`` is the activation), then the caller's filter."""
        return lambda nodes: nodes[0].target not in float_unary and (filter_fn is None or filter_fn(nodes))

    def is_float_tensor(node: object) -> bool:
        value = node.meta.get("val") if isinstance(node, Node) else None
        return isinstance(value, torch.Tensor) and value.is_floating_point()

    class OrtQDQQuantizer(X86InductorQuantizer):
        """X86InductorQuantizer with ORT-QDQ annotation (module docstring)."""

        def _annotate_qat_conv2d_bn_unary(self, gm, config, filter_fn=None):
            super()._annotate_qat_conv2d_bn_unary(gm, config, keep(filter_fn))

        def _annotate_conv2d_unary(self, gm, config, filter_fn=None):
            super()._annotate_conv2d_unary(gm, config, keep(filter_fn))

        def _annotate_qat_conv2d_bn_binary_unary(self, *args, **kwargs):
            return None

        def _annotate_qat_conv2d_bn_binary(self, *args, **kwargs):
            return None

        def _annotate_conv2d_binary_unary(self, *args, **kwargs):
            return None

        def _annotate_conv2d_binary(self, *args, **kwargs):
            return None

        def _annotate_mul_tensor(self, *args, **kwargs):
            return None  # done below for every float mul of two tensors, with a quantized output

        def annotate(self, model: GraphModule) -> GraphModule:
            super().annotate(model)
            config = self.global_config
            act_in, act_out = get_input_act_qspec(config), get_output_act_qspec(config)
            for node in model.graph.nodes:
                if node.op != "call_function":
                    continue
                ann = node.meta.get(QUANT_ANNOTATION_KEY)
                if node.target in binary and ann is None:
                    inputs = [a for a in node.args if is_float_tensor(a)]
                    if len(inputs) == 2:
                        node.meta[QUANT_ANNOTATION_KEY] = _X86InductorQuantizationAnnotation(
                            input_qspec_map={a: act_in for a in inputs}, output_qspec=act_out, _annotated=True,
                            _is_output_of_quantized_pattern=True)
                elif (ann is not None and ann._is_output_of_quantized_pattern and ann.output_qspec is None
                      and node.target not in int8_in_int8_out_ops):
                    ann.output_qspec = act_out
            return model

    return OrtQDQQuantizer().set_global(qat_config())
