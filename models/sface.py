#!/usr/bin/env python3
"""SFace (OpenCV Zoo, 2021dec) from its ONNX file to TFLite: float32 and quantized variants.

Build-time only, in its own environment (onnx2tf pins TensorFlow 2.19 and numpy 1.26, which the
device package must not be tied to):

    python3 -m venv .venv-sface && .venv-sface/bin/pip install -r models/requirements-sface.txt
    .venv-sface/bin/python models/sface.py --src ../shared/models-src --out models/.work/sface

then ``python models/build.py`` (the project's environment) measures and installs the variants.

Steps (facts from ../shared/models-src/PROVENANCE.md, each checked here):
1. check the ONNX file's sha256;
2. fold every block-quantized weight (``DequantizeLinear`` with ``block_size``) into a float32
   initializer ``(q - zero_point) * scale``, scales repeated block_size times along the axis, and
   the weight reshapes after them;
3. drop the unused float weight tensors the graph declares as inputs without an initializer
   (onnxruntime refuses the graph with only ``data`` fed otherwise);
4. make the batch dimension symbolic (any batch, and onnx2tf then needs no calibration sample
   from the internet);
5. check the folded graph against the original in onnxruntime (the original fed zeros for the
   phantom inputs, which it never reads): max abs difference of the embeddings;
6. onnx2tf: float32 and dynamic-range int8 TFLite; the TF converter on onnx2tf's SavedModel for
   the weight-only (float16 storage) and full static int8 variants;
7. every TFLite file checked against onnxruntime on real aligned faces (cosine of the embeddings).

The input is RGB 0..255 NHWC after conversion; the graph subtracts 127.5 and multiplies by
1/128 itself (``normalisation: in graph`` in the manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

SOURCE = "face_recognition_sface_2021dec_int8bq.onnx"
SOURCE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"


def fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, int]:
    """The same network with float32 weights, no phantom inputs and a symbolic batch.
    Returns (model, weights folded, inputs dropped)."""
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts: dict[str, np.ndarray] = {}
    keep_nodes = []
    folded = 0
    for node in g.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = inits[node.input[0]].astype(np.float32)
            scale = inits[node.input[1]].astype(np.float32)
            zp = inits[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.zeros_like(scale)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axis, block = int(attrs.get("axis", 1)), int(attrs.get("block_size", 0))
            if block:
                axis = axis % q.ndim
                scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
                zp = np.repeat(zp, block, axis=axis).take(range(q.shape[axis]), axis=axis)
            elif scale.ndim == 1 and q.ndim > 1:
                shape = [1] * q.ndim
                shape[axis % q.ndim] = -1
                scale, zp = scale.reshape(shape), zp.reshape(shape)
            consts[node.output[0]] = ((q - zp) * scale).astype(np.float32)
            folded += 1
        elif node.op_type == "Reshape" and node.input[0] in consts and node.input[1] in inits:
            consts[node.output[0]] = consts.pop(node.input[0]).reshape(inits[node.input[1]].astype(np.int64))
        else:
            keep_nodes.append(node)
    used = {name for node in keep_nodes for name in node.input}
    new_inits = [i for i in g.initializer if i.name in used]
    new_inits += [numpy_helper.from_array(v, name) for name, v in consts.items() if name in used]
    have = {i.name for i in new_inits}
    inputs = [i for i in g.input if i.name == "data" or (i.name in used and i.name in have)]
    dropped = len(g.input) - len(inputs)
    inputs = [i for i in inputs if i.name not in have]  # weights are initializers, not inputs
    for value in (*inputs, *g.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    graph = helper.make_graph(keep_nodes, g.name, inputs, list(g.output), new_inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="edge models/sface.py")
    out.ir_version = model.ir_version
    onnx.checker.check_model(out)
    return out, folded, dropped


def ort_embed(model: onnx.ModelProto, batch_nchw: np.ndarray, phantom_zeros: bool = False) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"data": batch_nchw.astype(np.float32)}
    if phantom_zeros:
        for i in sess.get_inputs():
            if i.name != "data":
                feed[i.name] = np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
    if phantom_zeros:  # the original has a fixed batch of 1
        return np.concatenate([sess.run(None, {**feed, "data": x[None]})[0] for x in feed["data"]])
    return np.asarray(sess.run(None, feed)[0])


def tflite_embed(path: Path, batch_nhwc: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(batch_nhwc.shape), strict=False)
    it.allocate_tensors()
    it.set_tensor(inp["index"], batch_nhwc.astype(np.float32))
    it.invoke()
    return np.asarray(it.get_tensor(it.get_output_details()[0]["index"]))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def convert(folded: Path, work: Path, faces: np.ndarray) -> dict[str, Path]:
    """onnx2tf (float32, dynamic-range) and the TF converter on its SavedModel (float16 weights,
    full int8 with ``faces`` as the representative set)."""
    saved = work / "saved_model"
    shutil.rmtree(saved, ignore_errors=True)
    src = work / "onnx2tf_input.onnx"  # onnx2tf overwrites its input with a simplified copy
    shutil.copy(folded, src)
    cmd = [sys.executable, "-m", "onnx2tf", "-i", str(src), "-o", str(saved), "-odrqt", "-osd", "-n"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    files = {
        "float32": next(saved.glob("*_float32.tflite")),
        "dynamic": next(saved.glob("*_dynamic_range_quant.tflite")),
    }
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_types = [tf.float16]
    files["float16"] = work / "sface_float16.tflite"
    files["float16"].write_bytes(conv.convert())

    def representative():  # type: ignore[no-untyped-def]
        for x in faces[:200]:
            yield [x[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.float32
    conv.inference_output_type = tf.float32
    files["int8"] = work / "sface_int8.tflite"
    files["int8"].write_bytes(conv.convert())
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, required=True, help="folder with the upstream ONNX file")
    ap.add_argument("--out", type=Path, required=True, help="work folder for the variants and their report")
    ap.add_argument("--faces", type=Path, help="npz with 'crops': aligned 112x112 RGB faces (N,112,112,3) uint8")
    args = ap.parse_args()
    data = (args.src / SOURCE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SOURCE_SHA256:
        sys.exit(f"sface: {SOURCE} has sha256 {digest}, expected {SOURCE_SHA256}")
    args.out.mkdir(parents=True, exist_ok=True)
    original = onnx.load_from_string(data)
    model, folded, dropped = fold(original)
    folded_path = args.out / "sface_folded.onnx"
    onnx.save(model, folded_path)
    if args.faces:
        faces = np.load(args.faces)["crops"].astype(np.float32)
    else:  # no faces given: random pixels still check the arithmetic
        faces = np.random.default_rng(0).uniform(0, 255, (16, 112, 112, 3)).astype(np.float32)
    nchw = faces.transpose(0, 3, 1, 2)
    ref = ort_embed(original, nchw[:16], phantom_zeros=True)
    got = ort_embed(model, nchw[:16])
    report: dict[str, object] = {
        "source_sha256": digest,
        "weights_folded": folded,
        "inputs_dropped": dropped,
        "folded_max_abs_diff": float(np.abs(ref - got).max()),
    }
    ref_all = unit(ort_embed(model, nchw))
    files = convert(folded_path, args.out, faces)
    variants = {}
    for name, path in files.items():
        emb = unit(tflite_embed(path, faces))
        cos = np.sum(emb * ref_all, axis=1)
        variants[name] = {"file": str(path), "bytes": path.stat().st_size, "cosine_min": float(cos.min())}
    report["variants"] = variants
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
