"""Side by side with ``face_recognition`` (dlib), the usual choice on a Raspberry Pi:
same images, same pairs, same protocol, same process.

Optional: needs ``pip install face_recognition`` (dlib builds from source). dlib's
128-d encodings are L2-normalised and compared by cosine, so the LFW code is
shared; its HOG detector finds the face, falling back to the whole image.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.capture.imageio import read_image
from edge.errors import InputError
from edge_lab import lfw

FloatArray = Any


def dlib_embedder() -> tuple[Callable[[Path], tuple[FloatArray | None, str]], dict[str, list[float]]]:
    """An ``embed_image`` for ``lfw.embed_pairs_images`` and the timings it collects."""
    try:
        import face_recognition
    except ImportError:
        raise InputError("--compare-dlib needs the face_recognition package (pip install face_recognition)") from None
    times: dict[str, list[float]] = {"detect": [], "encode": []}

    def embed(path: Path) -> tuple[FloatArray | None, str]:
        rgb = cv2.cvtColor(read_image(path), cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        boxes = face_recognition.face_locations(rgb, model="hog")
        t1 = time.perf_counter()
        fallback = ""
        if not boxes:
            h, w = rgb.shape[:2]
            boxes, fallback = [(0, w, h, 0)], "whole-image"
        h, w = rgb.shape[:2]
        box = min(boxes, key=lambda b: ((b[1] + b[3]) / 2 - w / 2) ** 2 + ((b[0] + b[2]) / 2 - h / 2) ** 2)
        enc = face_recognition.face_encodings(rgb, known_face_locations=[box])
        t2 = time.perf_counter()
        times["detect"].append(t1 - t0)
        times["encode"].append(t2 - t1)
        if not enc:
            return None, fallback
        v = np.asarray(enc[0], np.float32)
        return v / np.linalg.norm(v), fallback

    return embed, times


def compare(root: Path, pairs: lfw.PairsFile, edge_report: lfw.LfwReport, edge_ms_per_face: float) -> dict[str, object]:
    embed, times = dlib_embedder()
    data = lfw.embed_pairs_images(root, pairs, embed)
    t = lfw.threshold_at_fmr(lfw.impostor_scores(data.emb, data.person), 1e-3) if len(data.emb) else 0.0
    report = lfw.evaluate(pairs, data, default_threshold=t, stated_fmr=1e-3)
    dlib_ms = float(np.median(times["encode"]) * 1000)
    return {
        "dlib_accuracy_mean": round(report.accuracy_mean, 4),
        "dlib_accuracy_std": round(report.accuracy_std, 4),
        "dlib_tar_at_fmr_1e-3": round(report.tar_at_fmr["1e-3"], 4),
        "dlib_no_face": report.no_face,
        "dlib_encode_ms_per_face_p50": round(dlib_ms, 2),
        "dlib_hog_detect_ms_p50": round(float(np.median(times["detect"]) * 1000), 2),
        "edge_ms_per_face_p50": round(edge_ms_per_face, 2),
        "speedup_per_face": round(dlib_ms / edge_ms_per_face, 1) if edge_ms_per_face else None,
        "edge_minus_dlib_accuracy": round(edge_report.accuracy_mean - report.accuracy_mean, 4),
    }
