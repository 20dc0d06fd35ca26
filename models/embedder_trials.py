#!/usr/bin/env python3
"""Which SFace variant ships: speed and accuracy of every TFLite variant on the same aligned faces.

    python models/embedder_trials.py --variants float32=models/.work/sface/saved_model/onnx2tf_input_float32.tflite \\
        float16=models/sface_fp16.tflite dynamic=models/sface_int8.tflite int8=models/.work/sface/sface_int8.tflite \\
        --json docs/figures/data/sface-variants.json

Every LFW View 1 image is aligned once by the device's own still path (``models/calibrate.py``'s crops
cache, full size, colour, five-point alignment) and embedded by each variant with flip averaging (the
default pipeline). For each: per-face milliseconds at batch 1 and 4 on one interpreter thread, the
LFW-protocol accuracy on pairsDevTest.txt (10 folds), and the true-accept rate of every same-person
pair of View 1 at the thresholds where every cross-person pair (about 12 million) passes at 1e-4,
1e-5 and 1e-6, overall and per labelled group. The rule (issue 25): ship the fastest variant within
0.1 point of float's accuracy and 0.5 point of its TAR at 1e-5. LFW images are read, never copied:
only rates are written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from calibrate import view1  # noqa: E402

from edge.device.runtime import EmbedderSpec, TFLiteModel  # noqa: E402
from edge.vision.embed import Embedder  # noqa: E402
from edge_lab import groups as G  # noqa: E402
from edge_lab import lfw  # noqa: E402

SFACE_INPUT = EmbedderSpec("trial", 112, "RGB", 0.0, 1.0, 128)
FMRS = (1e-4, 1e-5, 1e-6)


def speed(model: TFLiteModel, x: np.ndarray, batch: int, n: int = 120) -> float:
    """Median milliseconds per face over rounds of ``batch`` faces (after two warm-up rounds)."""
    times = []
    for i in range(-2, n // batch):
        b = x[(i % 10) * batch : (i % 10) * batch + batch]
        t = time.perf_counter()
        model.run(b)
        if i >= 0:
            times.append((time.perf_counter() - t) / batch)
    return round(float(np.median(times)) * 1000, 2)


def tar_at(impostors: dict[str, np.ndarray], genuine: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    order = np.sort(impostors["all"])[::-1]
    for f in FMRS:
        k = int(f * len(order))
        threshold = float(order[k]) if k < len(order) else float(order[-1])
        out[f"{f:g}"] = {
            "threshold": round(threshold, 4),
            **{g: round(float((genuine[g] > threshold).mean()) * 100, 2) for g in ("all", "female", "male")},
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", required=True, help="NAME=FILE.tflite (SFace input spec)")
    ap.add_argument("--lfw", type=Path, default=HERE.parent.parent / "shared" / "data" / "lfw-view1")
    ap.add_argument("--groups", type=Path, default=HERE.parent.parent / "shared" / "data" / "lfw-groups" / "gender.csv")
    ap.add_argument("--cache", type=Path, default=HERE / ".work" / "calibrate", help="calibrate.py's crops cache")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    images, _, person, label = view1(args.lfw, args.groups)
    stored = np.load(args.cache / "80-mesh5-0-crops.npz")
    keep, crops = stored["keep"], stored["crops"]
    keys = [(p.parent.name, int(p.stem.rsplit("_", 1)[1])) for p, k in zip(images, keep, strict=True) if k]
    pairs = lfw.parse_pairs(args.lfw / "pairsDevTest.txt")
    results: dict[str, object] = {}
    for item in args.variants:
        name, _, file = item.partition("=")
        path = Path(file)
        model = TFLiteModel(path, hashlib.sha256(path.read_bytes()).hexdigest())
        embedder = Embedder(model, SFACE_INPUT, flip_average=True)
        x = embedder.preprocess(list(crops[:40]))
        ms = {"batch_1": speed(model, x, 1), "batch_4": speed(model, x, 4)}
        t0 = time.time()
        emb = np.concatenate([embedder.embed(list(crops[i : i + 64])) for i in range(0, len(crops), 64)])
        rep = lfw.evaluate(pairs, lfw.EmbeddedSet(keys, emb, person[keep], set(), 0, {}), 1.0, 0.0)
        imp = G.impostors_by_group(emb, person[keep], label[keep])
        gen = G.genuine_by_group(emb, person[keep], label[keep])
        results[name] = {
            "file": str(path),
            "bytes": path.stat().st_size,
            "ms_per_face_1_thread": ms,
            "ms_per_face_with_flip_batch_1": round(2 * ms["batch_1"], 2),
            "lfw_devtest_accuracy": round(rep.accuracy_mean * 100, 2),
            "lfw_devtest_accuracy_std": round(rep.accuracy_std * 100, 2),
            "impostor_pairs": len(imp["all"]),
            "genuine_pairs": len(gen["all"]),
            "tar_percent_at_fmr": tar_at(imp, gen),
        }
        print(f"{name}: {json.dumps(results[name])} ({time.time() - t0:.0f}s)", file=sys.stderr)
    float_ref = results.get("float32") or results.get("float16")
    if isinstance(float_ref, dict):
        ok = {
            n: r
            for n, r in results.items()
            if isinstance(r, dict)
            and r["lfw_devtest_accuracy"] >= float_ref["lfw_devtest_accuracy"] - 0.1
            and r["tar_percent_at_fmr"]["1e-05"]["all"] >= float_ref["tar_percent_at_fmr"]["1e-05"]["all"] - 0.5
        }
        fastest = min(ok, key=lambda n: ok[n]["ms_per_face_1_thread"]["batch_1"])  # type: ignore[index]
        results["rule"] = "the fastest variant within 0.1 point of float's accuracy and 0.5 point of its TAR at 1e-5"
        results["chosen"] = fastest
    results["machine"] = {"processor": platform.processor() or platform.machine(), "images": int(keep.sum())}
    results["command"] = "python models/embedder_trials.py " + " ".join(sys.argv[1:])
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
