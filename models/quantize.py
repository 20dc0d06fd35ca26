"""int8 MobileFaceNet, rebuilt from the weights of the fixed float graph.

The float graph (after ``graph.fix_mobilefacenet``) holds five op types: CONV_2D,
DEPTHWISE_CONV_2D, PRELU, ADD, RESHAPE. Each is re-expressed with the same weights
as a TensorFlow op, and TensorFlow's TFLite converter quantizes the result:
either full-integer static int8 (per-channel weights, per-tensor activations,
calibrated) or dynamic-range int8 (int8 weights, activations quantized per invoke).
Float input and output are kept at the ends, so the device feeds the same
normalised pixels to any variant. ``build.py`` measures the variants and ships
the one that keeps accuracy (see the manifest's ``quantization_trials``).

Build-time only: needs the ``build`` extra (tensorflow-cpu).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import graph
import numpy as np
from ai_edge_litert import schema_py_generated as S

OP = S.BuiltinOperator
PADDING = {S.Padding.SAME: "SAME", S.Padding.VALID: "VALID"}


def _const(model: S.ModelT, tensor: S.TensorT) -> np.ndarray:
    data = bytes(model.buffers[tensor.buffer].data)
    return np.frombuffer(data, np.float32).reshape([int(d) for d in tensor.shape]).copy()


def build_tf_function(float_model: bytes, prelu_mode: str = "prelu") -> Callable[[Any], Any]:
    """A ``tf.function`` computing exactly what ``float_model`` computes."""
    import tensorflow as tf

    model = graph.read(float_model)
    sg = model.subgraphs[0]
    consts: dict[int, np.ndarray] = {}
    for i, t in enumerate(sg.tensors):
        buf = model.buffers[t.buffer].data
        if buf is not None and len(buf) and t.type == S.TensorType.FLOAT32:
            consts[i] = _const(model, t)
    ops = [(int(model.operatorCodes[op.opcodeIndex].builtinCode), op) for op in sg.operators]
    unknown = {code for code, _ in ops} - {OP.CONV_2D, OP.DEPTHWISE_CONV_2D, OP.PRELU, OP.ADD, OP.RESHAPE}
    if unknown:
        raise ValueError(f"operators not handled by the rebuild: {sorted(unknown)}")
    weights = {i: tf.constant(v) for i, v in consts.items()}

    def act(x: Any, fused: int) -> Any:
        if fused == S.ActivationFunctionType.NONE:
            return x
        if fused == S.ActivationFunctionType.RELU:
            return tf.nn.relu(x)
        if fused == S.ActivationFunctionType.RELU6:
            return tf.nn.relu6(x)
        raise ValueError(f"fused activation {fused} not handled")

    producer = {int(t): (code, op) for code, op in ops for t in op.outputs}

    def conv(code: int, op: Any, x: Any, sign: float) -> Any:
        opt = op.builtinOptions
        w = weights[int(op.inputs[1])] * sign
        b = weights[int(op.inputs[2])] * sign
        if code == OP.CONV_2D:
            y = tf.nn.conv2d(x, tf.transpose(w, [1, 2, 3, 0]), [1, opt.strideH, opt.strideW, 1], PADDING[opt.padding])
        else:
            c = int(w.shape[-1])
            w = tf.reshape(w, [int(w.shape[1]), int(w.shape[2]), c // opt.depthMultiplier, opt.depthMultiplier])
            y = tf.nn.depthwise_conv2d(x, w, [1, opt.strideH, opt.strideW, 1], PADDING[opt.padding])
        return act(tf.nn.bias_add(y, b), opt.fusedActivationFunction)

    @tf.function(input_signature=[tf.TensorSpec([None, 112, 112, 3], tf.float32, name="input")])
    def forward(x: Any) -> Any:
        values: dict[int, Any] = {int(sg.inputs[0]): x}
        for code, op in ops:
            ins = [values.get(int(i), weights.get(int(i))) for i in op.inputs]
            opt = op.builtinOptions
            if code in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D):
                y = conv(code, op, ins[0], 1.0)
            elif code == OP.PRELU:
                neg_alpha = tf.constant(-consts[int(op.inputs[1])].reshape(1, 1, -1))
                pcode, pop = producer[int(op.inputs[0])]
                if prelu_mode == "twin" and pcode in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D):
                    # prelu(conv(x)) = relu(conv_W(x)) + (-alpha) * relu(conv_-W(x)):
                    # two convolutions with a fused ReLU, a per-channel MUL and an
                    # ADD, all of which XNNPACK runs in int8 (its int8 PRELU is slow).
                    src = values[int(pop.inputs[0])]
                    y = tf.nn.relu(ins[0]) + tf.nn.relu(conv(pcode, pop, src, -1.0)) * neg_alpha
                else:
                    # relu(x) + relu(-x) * (-alpha): the form TensorFlow's TFLite
                    # converter recognises and emits as a single PRELU op.
                    y = tf.nn.relu(ins[0]) + tf.nn.relu(-ins[0]) * neg_alpha
            elif code == OP.ADD:
                y = act(ins[0] + ins[1], opt.fusedActivationFunction)
            else:  # RESHAPE
                y = tf.reshape(ins[0], [-1, *[int(d) for d in opt.newShape[1:]]])
            values[int(op.outputs[0])] = y
        return {"embeddings": values[int(sg.outputs[0])]}

    return forward  # type: ignore[no-any-return]


def quantize_int8(float_model: bytes, calibration: np.ndarray, batch: int = 1, prelu_mode: str = "twin") -> bytes:
    """Static int8 (per-channel weights) with float input/output, calibrated on ``calibration``."""
    import tensorflow as tf

    fn = build_tf_function(float_model, prelu_mode)
    concrete = fn.get_concrete_function()

    def representative() -> Iterator[list[np.ndarray]]:
        for i in range(0, len(calibration), batch):
            yield [calibration[i : i + batch].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    out = conv.convert()
    return bytes(out)


def quantize_dynamic(float_model: bytes) -> bytes:
    """Dynamic-range int8: int8 weights, activations quantized on the fly per invoke."""
    import tensorflow as tf

    fn = build_tf_function(float_model, "prelu")
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    return bytes(conv.convert())


def quantize_weight_only(float_model: bytes) -> bytes:
    """Weight-only int8 (ai-edge-quantizer): int8 weights, float activations.

    Needs the repaired graph (current operator codes, a signature), which is why the
    upstream file could not be quantized by this tool as it was."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(bytearray(float_model))
    qt.load_quantization_recipe(recipe.weight_only_wi8_afp32())
    return bytes(qt.quantize().quantized_model)


def convert_float(float_model: bytes) -> bytes:
    """The rebuilt network converted back without quantization (a check of the rebuild)."""
    import tensorflow as tf

    fn = build_tf_function(float_model)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    return bytes(conv.convert())
