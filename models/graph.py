"""Flatbuffer surgery on the upstream MobileFaceNet (build-time only).

The upstream file (``../shared/models-src/MobileFaceNet.tflite``) has three
problems for an edge device, fixed here without touching a single weight value:

1. Old schema: operator codes live only in ``deprecated_builtin_code``; current
   tools read ``builtin_code`` and see every op as ADD. Both are filled.
2. The final RESHAPE is fixed to ``[2, 192]`` and the input to batch 2, so
   XNNPACK refuses any other batch. The reshape becomes ``[-1, 192]`` and the
   batch dimension dynamic (shape signature ``-1``), with batch 1 by default.
3. PReLU is spelled as ``relu(x) + c * (x - |x|)`` (RELU, ABS, SUB, MUL, ADD:
   33 times). That is exactly ``prelu(x, alpha=2c)``; each pattern is replaced by
   one PRELU op, which XNNPACK runs whole and converters quantize as one op.

A ``serving_default`` signature is added (calibration tools need one).
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as S

OP = S.BuiltinOperator


def read(data: bytes) -> S.ModelT:
    return S.ModelT.InitFromObj(S.Model.GetRootAsModel(data, 0))


def write(model: S.ModelT) -> bytes:
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _code(model: S.ModelT, op: S.OperatorT) -> int:
    return int(model.operatorCodes[op.opcodeIndex].builtinCode)


def fix_opcodes(model: S.ModelT) -> None:
    for oc in model.operatorCodes:
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
        oc.builtinCode = code
        oc.deprecatedBuiltinCode = min(code, 127)


def _opcode_index(model: S.ModelT, code: int) -> int:
    for i, oc in enumerate(model.operatorCodes):
        if oc.builtinCode == code:
            return i
    oc = S.OperatorCodeT()
    oc.builtinCode = code
    oc.deprecatedBuiltinCode = min(code, 127)
    oc.version = 1
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def fuse_prelu(model: S.ModelT) -> int:
    """Replace every ``relu(x) + c*(x - |x|)`` with ``prelu(x, 2c)``; returns the count."""
    sg = model.subgraphs[0]
    producer = {int(t): i for i, op in enumerate(sg.operators) for t in op.outputs}
    prelu = _opcode_index(model, OP.PRELU)
    dead: set[int] = set()
    fused = 0
    for op in sg.operators:
        if _code(model, op) != OP.ADD or op.builtinOptions.fusedActivationFunction != 0:
            continue
        srcs = [producer.get(int(t)) for t in op.inputs]
        if None in srcs:
            continue
        a, b = (sg.operators[i] for i in srcs)  # type: ignore[index]
        relu, mul = (a, b) if _code(model, a) == OP.RELU else (b, a)
        if _code(model, relu) != OP.RELU or _code(model, mul) != OP.MUL:
            continue
        x = int(relu.inputs[0])
        const = next((int(t) for t in mul.inputs if int(t) not in producer), None)
        sub_t = next((int(t) for t in mul.inputs if int(t) in producer), None)
        if const is None or sub_t is None or mul.builtinOptions.fusedActivationFunction != 0:
            continue
        sub = sg.operators[producer[sub_t]]
        if _code(model, sub) != OP.SUB or int(sub.inputs[0]) != x:
            continue
        absop = sg.operators[producer[int(sub.inputs[1])]]
        if _code(model, absop) != OP.ABS or int(absop.inputs[0]) != x:
            continue
        alpha_t = sg.tensors[const]
        buf = model.buffers[alpha_t.buffer]
        alpha = np.frombuffer(bytes(buf.data), np.float32) * 2.0
        buf.data = np.frombuffer(alpha.astype(np.float32).tobytes(), np.uint8)
        alpha_t.shape = np.array([1, 1, alpha.size], np.int32)
        alpha_t.shapeSignature = None
        alpha_t.name = alpha_t.name.replace(b"/mul", b"/alpha")
        op.opcodeIndex = prelu
        op.inputs = np.array([x, const], np.int32)
        op.builtinOptionsType = S.BuiltinOptions.NONE
        op.builtinOptions = None
        dead.update(id(o) for o in (relu, mul, sub, absop))
        fused += 1
    sg.operators = [op for op in sg.operators if id(op) not in dead]
    return fused


def dynamic_batch(model: S.ModelT, batch: int = 1) -> None:
    """Make the leading (batch) dimension of every activation dynamic."""
    sg = model.subgraphs[0]
    in_batch = int(sg.tensors[sg.inputs[0]].shape[0])
    for t in sg.tensors:
        has_data = model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data) > 0
        if has_data or t.shape is None or len(t.shape) < 2 or int(t.shape[0]) != in_batch:
            continue
        t.shape = np.array([batch, *t.shape[1:]], np.int32)
        t.shapeSignature = np.array([-1, *t.shape[1:]], np.int32)
    for op in sg.operators:
        if _code(model, op) == OP.RESHAPE:
            new = np.array([-1, *op.builtinOptions.newShape[1:]], np.int32)
            op.builtinOptions.newShape = new
            if len(op.inputs) > 1:
                model.buffers[sg.tensors[op.inputs[1]].buffer].data = np.frombuffer(new.tobytes(), np.uint8)


def prune(model: S.ModelT) -> None:
    """Drop tensors and buffers no operator uses any more, renumbering the rest."""
    sg = model.subgraphs[0]
    used = sorted(
        {int(t) for op in sg.operators for t in (*op.inputs, *op.outputs) if t >= 0}
        | {int(t) for t in sg.inputs}
        | {int(t) for t in sg.outputs}
    )
    remap = {old: new for new, old in enumerate(used)}
    sg.tensors = [sg.tensors[i] for i in used]
    for op in sg.operators:
        op.inputs = np.array([remap.get(int(t), -1) for t in op.inputs], np.int32)
        op.outputs = np.array([remap[int(t)] for t in op.outputs], np.int32)
    sg.inputs = np.array([remap[int(t)] for t in sg.inputs], np.int32)
    sg.outputs = np.array([remap[int(t)] for t in sg.outputs], np.int32)
    used_buffers = sorted({0} | {int(t.buffer) for t in sg.tensors})
    bremap = {old: new for new, old in enumerate(used_buffers)}
    model.buffers = [model.buffers[i] for i in used_buffers]
    for t in sg.tensors:
        t.buffer = bremap[int(t.buffer)]


def add_signature(model: S.ModelT, key: str = "serving_default") -> None:
    sg = model.subgraphs[0]

    def tmap(idx: int) -> S.TensorMapT:
        m = S.TensorMapT()
        m.name = sg.tensors[idx].name
        m.tensorIndex = int(idx)
        return m

    sig = S.SignatureDefT()
    sig.signatureKey = key
    sig.subgraphIndex = 0
    sig.inputs = [tmap(int(i)) for i in sg.inputs]
    sig.outputs = [tmap(int(i)) for i in sg.outputs]
    model.signatureDefs = [sig]


def fix_mobilefacenet(data: bytes, fuse: bool = True) -> tuple[bytes, int]:
    model = read(data)
    fix_opcodes(model)
    fused = fuse_prelu(model) if fuse else 0
    dynamic_batch(model)
    prune(model)
    add_signature(model)
    return write(model), fused
