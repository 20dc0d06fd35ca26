"""int8 MobileFaceNet, rebuilt from the weights of the fixed float graph.

The float graph (after ``graph.fix_mobilefacenet``) holds five op types: CONV_2D,
DEPTHWISE_CONV_2D, PRELU, ADD, RESHAPE. Each is re-expressed with the same weights
as a TensorFlow op, and TensorFlow's TFLite converter quantizes the result:
either full-integer static int8 (per-channel weights, per-tensor activations,
calibrated) or dynamic-range int8 (int8 weights, activations quantized per invoke).
Float input and output are kept at the ends, so the device feeds the same
normalised pixels to any variant. ``build.py`` measures the variants and ships
the one that keeps accuracy (see the manifest's ``quantization_trials``).

Measured on the development machine (single-layer probes and
``quantization_trials``): XNNPACK's int8 1×1 convolutions run 4–7× faster than
float ones on that CPU (AVX-512 VNNI), its int8 depthwise convolutions about 2×
slower than float, and its int8 PRELU is a slow path; per-tensor int8
activations in the last, 7×7 stage cost most of the accuracy. Hence the mixed
variant: the full convolutions in int8 except on maps of 7×7 and smaller;
depthwise convolutions, PReLU and the residual ADDs in float. Before it is
calibrated, the float graph is equalised (``equalize``: an exact rewrite that
evens out the per-channel ranges a per-tensor int8 scale has to cover), and the
calibrated ranges are clipped where that lowers the int8 error (``refine_ranges``).

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


def _tensor(model: S.ModelT, index: int) -> np.ndarray:
    return _const(model, model.subgraphs[0].tensors[index])


def _set_tensor(model: S.ModelT, index: int, value: np.ndarray) -> None:
    t = model.subgraphs[0].tensors[index]
    model.buffers[t.buffer].data = np.frombuffer(value.astype(np.float32).tobytes(), np.uint8)


def _inspecting_interpreter(model: bytes) -> Any:
    """An interpreter that keeps every intermediate tensor readable (build-time only)."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        return Interpreter(model_content=model, num_threads=2, experimental_preserve_all_tensors=True)


def _channel_peaks(
    float_model: bytes, calibration: np.ndarray, tensors: list[int], batch: int = 8
) -> dict[int, np.ndarray]:
    """Per-channel max |x| of the given tensors of ``float_model`` over ``calibration``."""
    it = _inspecting_interpreter(float_model)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, [batch, 112, 112, 3], strict=False)
    it.allocate_tensors()
    peaks = {t: np.zeros(int(it.get_tensor(t).shape[-1]), np.float32) for t in tensors}
    for start in range(0, len(calibration) - batch + 1, batch):
        it.set_tensor(inp, np.ascontiguousarray(calibration[start : start + batch], np.float32))
        it.invoke()
        for t in tensors:
            v = np.abs(it.get_tensor(t))
            peaks[t] = np.maximum(peaks[t], v.reshape(-1, v.shape[-1]).max(axis=0))
    return {t: np.maximum(p, 1e-6) for t, p in peaks.items()}


def _consumers(model: S.ModelT) -> dict[int, list[Any]]:
    out: dict[int, list[Any]] = {}
    for op in model.subgraphs[0].operators:
        for t in op.inputs:
            out.setdefault(int(t), []).append(op)
    return out


def find_chains(model: S.ModelT) -> list[list[Any]]:
    """Every expand CONV_2D → PRELU → DEPTHWISE_CONV_2D → PRELU → project CONV_2D, as op lists."""
    consumers = _consumers(model)

    def code(op: Any) -> int:
        return int(model.operatorCodes[op.opcodeIndex].builtinCode)

    chains = []
    for op in model.subgraphs[0].operators:
        chain = [op]
        for want in (OP.PRELU, OP.DEPTHWISE_CONV_2D, OP.PRELU, OP.CONV_2D):
            nxt = consumers.get(int(chain[-1].outputs[0]), [])
            if code(chain[0]) != OP.CONV_2D or len(nxt) != 1 or code(nxt[0]) != want:
                break
            chain.append(nxt[0])
        if len(chain) == 5:
            chains.append(chain)
    return chains


def _streams(model: S.ModelT, consumers: dict[int, list[Any]]) -> list[tuple[list[Any], list[Any], list[int]]]:
    """Residual streams: tensors joined by ADD, written only by CONV_2D and read only by CONV_2D/ADD.

    Returns (producer convs, consumer convs, tensors) per stream."""
    sg = model.subgraphs[0]
    code = {id(op): model.operatorCodes[op.opcodeIndex].builtinCode for op in sg.operators}
    producer = {int(t): op for op in sg.operators for t in op.outputs}
    group: dict[int, int] = {}  # tensor -> representative (union-find)

    def find(t: int) -> int:
        while group.setdefault(t, t) != t:
            t = group[t]
        return t

    for op in sg.operators:
        if code[id(op)] == OP.ADD and op.builtinOptions.fusedActivationFunction == S.ActivationFunctionType.NONE:
            root = find(int(op.outputs[0]))
            for t in op.inputs:
                group[find(int(t))] = root
    roots = {find(int(op.outputs[0])) for op in sg.operators if code[id(op)] == OP.CONV_2D}
    out = []
    for root in sorted(roots):
        tensors = [t for t in group if find(t) == root] or [root]
        prods = [producer.get(t) for t in tensors]
        readers = [op for t in tensors for op in consumers.get(t, [])]
        if not all(p is not None and code[id(p)] in (OP.CONV_2D, OP.ADD) for p in prods):
            continue
        if not readers or not all(code[id(r)] in (OP.CONV_2D, OP.ADD) for r in readers):
            continue
        if any(
            p.builtinOptions.fusedActivationFunction != S.ActivationFunctionType.NONE
            for p in prods
            if code[id(p)] == OP.CONV_2D
        ):
            continue
        convs_in = [r for r in readers if code[id(r)] == OP.CONV_2D]
        convs_out = [p for p in prods if code[id(p)] == OP.CONV_2D]
        out.append((convs_out, convs_in, tensors))
    return out


def equalize(float_model: bytes, calibration: np.ndarray) -> tuple[bytes, int]:
    """Cross-layer equalisation (an exact rewrite in float) of the int8 activations.

    PReLU commutes with a positive per-channel scale (prelu(x / s) = prelu(x) / s)
    and convolutions and ADD are linear, so:

    * expand → PReLU → depthwise: the expand conv's output channel c is divided by
      s_c (its max |x| over the calibration faces, relative to the mean) and the
      depthwise kernel of that channel multiplied by s_c; every channel of the
      int8 expand output then spans the same range (the depthwise conv is float,
      so this costs nothing);
    * depthwise → PReLU → project: the depthwise channel c is divided by
      t_c = sqrt(peak_c / mean) and the project conv's input column c multiplied
      by t_c, moving half of the range spread into the per-channel weights;
    * residual streams (project outputs joined by ADD, read by 1×1 convs): channel
      c divided by u_c = sqrt(peak_c / mean) in every conv writing the stream and
      multiplied back in the input columns of every conv reading it.

    Returns the rewritten model and the number of tensors equalised.
    """
    model = graph.read(float_model)
    consumers = _consumers(model)
    chains = find_chains(model)
    streams = _streams(model, consumers)
    expand_out = [int(c[0].outputs[0]) for c in chains]
    project_in = [int(c[3].outputs[0]) for c in chains]
    peaks = _channel_peaks(float_model, calibration, expand_out + project_in + [t for s in streams for t in s[2]])

    def scale(tensor: int, factor: np.ndarray, axis: int) -> None:
        shape = [1, 1, 1, 1]
        shape[axis] = -1
        _set_tensor(model, tensor, _tensor(model, tensor) * factor.reshape(shape))

    for (expand, _, dw, _, project), e_out, p_in in zip(chains, expand_out, project_in, strict=True):
        s = peaks[e_out] / peaks[e_out].mean()
        t = np.sqrt(peaks[p_in] / peaks[p_in].mean())
        scale(int(expand.inputs[1]), 1 / s, 0)
        _set_tensor(model, int(expand.inputs[2]), _tensor(model, int(expand.inputs[2])) / s)
        scale(int(dw.inputs[1]), s / t, 3)
        _set_tensor(model, int(dw.inputs[2]), _tensor(model, int(dw.inputs[2])) / t)
        scale(int(project.inputs[1]), t, 3)
    for writers, readers, tensors in streams:
        peak = np.max([peaks[t] for t in tensors], axis=0)
        u = np.sqrt(peak / peak.mean())
        for w in writers:
            scale(int(w.inputs[1]), 1 / u, 0)
            _set_tensor(model, int(w.inputs[2]), _tensor(model, int(w.inputs[2])) / u)
        for r in readers:
            scale(int(r.inputs[1]), u, 3)
    return graph.write(model), len(chains) + len(streams)


def _quant_mse(x: np.ndarray, lo: float, hi: float) -> float:
    step = max(hi - lo, 1e-12) / 255.0
    q = np.clip(np.round((x - lo) / step), 0, 255) * step + lo
    return float(np.mean((x - q) ** 2))


def refine_ranges(calibrated: bytes, calibration: np.ndarray, sample: int = 200_000, batch: int = 4) -> bytes:
    """Clip each activation range to the scale (of 1.0 … 0.4 × min/max) with the least int8 error.

    The converter's calibration keeps the absolute min and max seen; one outlier
    then coarsens the step for every other value. Here each range is shrunk by the
    factor that minimises the mean squared quantization error over a sample of the
    tensor's values on the calibration faces.
    """
    model = graph.read(calibrated)
    tensors = model.subgraphs[0].tensors
    ranged = [
        i
        for i, t in enumerate(tensors)
        if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1
    ]
    it = _inspecting_interpreter(calibrated)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, [batch, 112, 112, 3], strict=False)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    per_batch = max(1, sample // max(1, len(calibration) // batch))
    samples: dict[int, list[np.ndarray]] = {i: [] for i in ranged}
    for start in range(0, len(calibration) - batch + 1, batch):
        it.set_tensor(inp, np.ascontiguousarray(calibration[start : start + batch], np.float32))
        it.invoke()
        for i in ranged:
            v = it.get_tensor(i).ravel()
            samples[i].append(v[rng.integers(0, len(v), min(len(v), per_batch))])
    for i in ranged:
        x = np.concatenate(samples[i])
        q = tensors[i].quantization
        lo, hi = float(q.min[0]), float(q.max[0])
        best = min((0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), key=lambda c: _quant_mse(x, lo * c, hi * c))
        q.min, q.max = [lo * best], [hi * best]
    return graph.write(model)


def quantize_mixed(float_model: bytes, calibration: np.ndarray, float_at_or_below: int = 7) -> bytes:
    """Full convolutions in static int8, except on maps of ``float_at_or_below`` pixels or less.

    Depthwise convolutions, PReLU and ADD stay float (see the module docstring for
    why); the converter inserts the QUANTIZE/DEQUANTIZE pairs between the two.
    Activation ranges come from ``refine_ranges``; pass an ``equalize``d graph.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tfl_convert

    fn = build_tf_function(float_model, "prelu")
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calibration[i : i + 1].astype(np.float32)] for i in range(len(calibration)))
    conv._experimental_calibrate_only = True
    calibrated = refine_ranges(bytes(conv.convert()), calibration)
    model = graph.read(calibrated)
    sg = model.subgraphs[0]
    tail = [
        sg.tensors[int(op.outputs[0])].name.decode()
        for op in sg.operators
        if model.operatorCodes[op.opcodeIndex].builtinCode == OP.CONV_2D
        and int(sg.tensors[int(op.outputs[0])].shape[1]) <= float_at_or_below
    ]
    return bytes(
        tfl_convert.mlir_quantize(
            calibrated,
            denylisted_ops=["DEPTHWISE_CONV_2D", "PRELU", "ADD"],
            denylisted_nodes=tail,
        )
    )


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
