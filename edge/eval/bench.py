"""``edge bench``: per-stage latency, end-to-end frames per second, peak RSS.

Without ``--source`` a 640×480 stream is composed from face images (the test
fixtures of a source checkout, or ``--faces DIR``): one to three faces per frame,
drifting slowly, at sizes of people standing about 1–1.6 m from a 60° camera.
The same composition at 1, 2, 3 and 4 m measures each detector's recall by
distance, which is how the default detector is chosen.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edge.config import TrackingSettings
from edge.imageio import IMAGE_SUFFIXES, read_image
from edge.match import Gallery, GalleryHolder, GallerySnapshot
from edge.pipeline import Recognizer
from edge.types import ImageArray

FRAME_W, FRAME_H = 640, 480
HFOV_DEG = 60.0
FACE_WIDTH_M = 0.16
# LFW-style 250×250 portraits: the face is about 100 px wide in the middle.
PORTRAIT_FACE_FRACTION = 0.4


def face_px_at(distance_m: float, width: int = FRAME_W, hfov_deg: float = HFOV_DEG) -> float:
    """Width in pixels of a 16 cm wide face at ``distance_m`` from a ``hfov_deg`` camera."""
    return float(width * FACE_WIDTH_M / (2 * distance_m * np.tan(np.radians(hfov_deg / 2))))


def portraits(folder: Path) -> list[ImageArray]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no face images under {folder}")
    return [read_image(p) for p in files]


def background(rng: np.random.Generator) -> ImageArray:
    y, x = np.mgrid[0:FRAME_H, 0:FRAME_W]
    base = (90 + 60 * x / FRAME_W + 30 * y / FRAME_H)[..., None] * np.array([1.0, 0.95, 0.9])
    noise = rng.normal(0, 6, (FRAME_H, FRAME_W, 3))
    out: ImageArray = np.clip(base + noise, 0, 255).astype(np.uint8)
    return out


def paste(frame: ImageArray, portrait: ImageArray, cx: float, cy: float, face_px: float) -> None:
    side = max(8, round(face_px / PORTRAIT_FACE_FRACTION))
    tile = cv2.resize(portrait, (side, side), interpolation=cv2.INTER_AREA)
    x0, y0 = int(cx - side / 2), int(cy - side / 2)
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + side, FRAME_W), min(y0 + side, FRAME_H)
    if fx1 > fx0 and fy1 > fy0:
        frame[fy0:fy1, fx0:fx1] = tile[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]


def synthetic_stream(faces: Sequence[ImageArray], frames: int, seed: int = 0) -> Iterator[ImageArray]:
    """Frames with 1–3 people who each stay for a while and drift slowly."""
    rng = np.random.default_rng(seed)
    bg = background(rng)
    slots = [(160.0, 240.0), (330.0, 230.0), (500.0, 250.0)]
    for i in range(frames):
        count = 1 + (i // 50) % 3
        frame = bg.copy()
        for k in range(count):
            portrait = faces[(i // 50 + k) % len(faces)]
            sx, sy = slots[k]
            t = i / 30.0
            size = face_px_at(1.0 + 0.3 * k) * 0.9
            paste(frame, portrait, sx + 8 * np.sin(t + k), sy + 5 * np.cos(t), size)
        yield frame


def file_stream(source: Path, frames: int, loop: bool = True) -> Iterator[ImageArray]:
    """Up to ``frames`` frames of a video or image folder, replayed when ``loop``."""
    if source.is_dir():
        images = portraits(source)
        for i in range(frames if loop else min(frames, len(images))):
            yield images[i % len(images)]
        return
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {source}")
    n = 0
    while n < frames:
        ok, frame = cap.read()
        if not ok and not loop:
            break
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = cap.read()
            if not ok:
                break
        yield np.asarray(frame, np.uint8)
        n += 1
    cap.release()


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def random_gallery(size: int, dim: int, per_identity: int = 1, seed: int = 1) -> Gallery:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(size * per_identity, dim)).astype(np.float32)
    return Gallery.build([(f"id{i:05d}", None, vecs[i * per_identity : (i + 1) * per_identity]) for i in range(size)])


@dataclass
class StageTimes:
    detect: list[float]
    align: list[float]
    embed_per_face: list[float]
    match: list[float]
    frame: list[float]
    faces: int = 0


def run_stream(rec: Recognizer, frames: Iterator[ImageArray], snap: GallerySnapshot) -> StageTimes:
    """Full pipeline on every frame (no tracking: the worst case)."""
    st = StageTimes([], [], [], [], [])
    clock = time.perf_counter
    for image in frames:
        t0 = clock()
        faces = rec.detect(image)
        t1 = clock()
        aligned = rec.align(image, faces)
        t2 = clock()
        ok = [a for a in aligned if a.quality.ok]
        emb = rec.embed(ok)
        t3 = clock()
        if len(ok):
            snap.match(emb, [a.quality.face_px for a in ok])
        t4 = clock()
        st.detect.append(t1 - t0)
        if faces:
            st.align.append((t2 - t1) / len(faces))
        if ok:
            st.embed_per_face.append((t3 - t2) / len(ok))
            st.match.append(t4 - t3)
        st.frame.append(t4 - t0)
        st.faces += len(faces)
    return st


def embed_batches(
    rec: Recognizer, crop: ImageArray, sizes: Sequence[int] = (1, 2, 4), reps: int = 30
) -> dict[str, float]:
    out = {}
    for n in sizes:
        crops = [crop] * n
        rec.embedder.embed(crops)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            rec.embedder.embed(crops)
            times.append((time.perf_counter() - t) / n)
        out[str(n)] = round(pct(times, 50), 3)
    return out


def detector_recall(
    rec: Recognizer, faces: Sequence[ImageArray], distances: Sequence[float] = (1, 2, 3, 4)
) -> dict[str, dict[str, float]]:
    """Share of single-face 640×480 scenes in which each detector finds the face, by distance."""
    rng = np.random.default_rng(7)
    bg = background(rng)
    out: dict[str, dict[str, float]] = {}
    for det in (rec.detector, rec.other_detector()):
        row = {}
        for d in distances:
            hits = 0
            for i, portrait in enumerate(faces):
                frame = bg.copy()
                cx, cy = 120 + (i * 97) % 400, 140 + (i * 53) % 200
                paste(frame, portrait, cx, cy, face_px_at(d))
                found = det.detect(frame)
                hits += any(abs((f.box.x0 + f.box.x1) / 2 - cx) < face_px_at(d) for f in found)
            row[f"{d:g}m"] = round(hits / len(faces), 3)
        out[det.kind] = row
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench(
    rec: Recognizer,
    source: Path | None,
    faces_dir: Path | None,
    frames: int = 300,
    gallery_size: int = 10_000,
) -> dict[str, object]:
    snap = rec.matcher.snapshot(random_gallery(gallery_size, rec.embedder.dim))
    portraits_ = portraits(faces_dir) if faces_dir is not None else []
    stream = file_stream(source, frames) if source is not None else synthetic_stream(portraits_, frames)
    # Warm-up: first invokes allocate and pack weights.
    warm = next(synthetic_stream(portraits_, 1)) if portraits_ else np.zeros((FRAME_H, FRAME_W, 3), np.uint8)
    run_stream(rec, iter([warm] * 5), snap)
    st = run_stream(rec, stream, snap)
    total = sum(st.frame)
    result: dict[str, object] = {
        "threads": rec.settings.models.threads,
        "detector": rec.detector.kind,
        "embedder": rec.settings.models.embedder,
        "pipeline": rec.pipeline_id,
        "source": str(source) if source else f"synthetic 640x480, 1-3 faces, {len(portraits_)} portraits",
        "frames": len(st.frame),
        "faces": st.faces,
        "detect_ms_p50": round(pct(st.detect, 50), 3),
        "detect_ms_p95": round(pct(st.detect, 95), 3),
        "align_ms_per_face_p50": round(pct(st.align, 50), 3),
        "align_ms_per_face_p95": round(pct(st.align, 95), 3),
        "embed_ms_per_face_p50": round(pct(st.embed_per_face, 50), 3),
        "embed_ms_per_face_p95": round(pct(st.embed_per_face, 95), 3),
        "match_ms_p50": round(pct(st.match, 50), 3),
        "match_ms_p95": round(pct(st.match, 95), 3),
        "gallery_size": gallery_size,
        "fps": round(len(st.frame) / total, 1) if total else 0.0,
    }
    if portraits_:
        probe = rec.still(portraits_[0], centre_fallback=True).aligned
        if probe is not None:
            result["embed_ms_per_face_by_batch"] = embed_batches(rec, probe.crop)
        result["detector_recall_by_distance"] = detector_recall(rec, portraits_)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def service_bench(
    rec: Recognizer, clip: Path, gallery_dir: Path, params: TrackingSettings, fps_in: float = 30.0
) -> dict[str, object]:
    """The service's own frame loop (tracking on) over ``clip``, frames as fast as
    processed, timestamps as from a ``fps_in`` camera. Confirmation latency is the
    time from a track's first frame to its confirming frame, plus that frame's
    processing time (the event is in the outbox then; publication adds a loopback
    round trip)."""
    from edge.gallery.enroll import enroll_directory
    from edge.health import Stats
    from edge.process import FrameProcessor
    from edge.track import Confirmation, Tracker
    from edge.types import Frame

    reports = enroll_directory(rec, gallery_dir)
    holder = GalleryHolder(
        rec.matcher,
        Gallery.build([(r.identity_id, r.label, r.embeddings) for r in reports if r.embeddings is not None]),
    )
    latencies: list[float] = []
    confirmed: list[str] = []
    busy = {"t": 0.0}

    def on_confirm(conf: Confirmation, frame: Frame) -> None:
        latencies.append(frame.ts - conf.first_seen + (time.perf_counter() - busy["t"]))
        confirmed.append(str(conf.match.identity_id))

    stats = Stats(window=100_000)
    proc = FrameProcessor(rec, holder, Tracker(params), stats, on_confirm)
    total, n = 0.0, 0
    for i, image in enumerate(file_stream(clip, 100_000, loop=False)):
        busy["t"] = time.perf_counter()
        proc(Frame(image, i, i / fps_in))
        total += time.perf_counter() - busy["t"]  # processing only, not the file's decoding
        n += 1
    empty_times = []
    # Nobody in view: the per-frame cost on the clip's empty frames.
    blank = background(np.random.default_rng(3))
    for i in range(100):
        t = time.perf_counter()
        proc(Frame(blank, n + i, (n + i) / fps_in))
        empty_times.append(time.perf_counter() - t)
    empty_ms = float(np.median(empty_times) * 1000)
    return {
        "service_frames": n,
        "service_fps": round(n / total, 1),
        "service_frame_ms_p50": round(pct(list(stats.lat["frame"])[:n], 50), 3),
        "service_frame_ms_p95": round(pct(list(stats.lat["frame"])[:n], 95), 3),
        "confirmations": confirmed,
        "confirm_latency_ms_at_30fps": [round(v * 1000, 1) for v in latencies],
        "empty_frame_ms_p50": round(empty_ms, 3),
        "idle_cpu_pct_of_one_core_at_30fps": round(empty_ms * fps_in / 10.0, 1),
    }


def bundle_bench(rec: Recognizer, frame: ImageArray, identities: int = 10_000, per: int = 5) -> dict[str, object]:
    """Size of a 10,000 × 5 bundle and the time to apply it (verify + parse + swap) in a
    thread, while the frame loop keeps processing ``frame``: the longest gap between
    two processed frames during the apply is what a camera would see."""
    import threading

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.gallery.bundle import Identity, encode
    from edge.gallery.store import to_gallery, verify_bundle

    key = Ed25519PrivateKey.generate()
    vecs = np.random.default_rng(2).normal(size=(identities * per, rec.embedder.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    people = [Identity(f"p{i:05d}", None, vecs[i * per : (i + 1) * per], {}) for i in range(identities)]
    out: dict[str, object] = {"bundle_identities": identities, "bundle_embeddings": identities * per}
    holder = GalleryHolder(rec.matcher)
    dtypes: tuple[Literal["float16", "int8"], ...] = ("float16", "int8")
    for dtype in dtypes:
        data = encode(people, "bench", 1, rec.embedder_sha256, key, dtype=dtype)
        out[f"bundle_mb_{dtype}"] = round(len(data) / 1e6, 2)
        # Frame loop baseline, then the same loop while the bundle applies.
        base = []
        for _ in range(30):
            t = time.perf_counter()
            rec.detect(frame)
            base.append(time.perf_counter() - t)
        done = threading.Event()
        took: list[float] = []

        def apply(data: bytes = data, took: list[float] = took, done: threading.Event = done) -> None:
            t = time.perf_counter()
            holder.swap(to_gallery(verify_bundle(data, [key.public_key()], rec.embedder_sha256)))
            took.append(time.perf_counter() - t)
            done.set()

        worker = threading.Thread(target=apply)
        last = time.perf_counter()
        gaps = []
        worker.start()
        while not done.is_set():
            rec.detect(frame)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        worker.join()
        out[f"bundle_apply_s_{dtype}"] = round(took[0], 3)
        out[f"bundle_apply_frame_ms_baseline_{dtype}"] = round(float(np.median(base)) * 1000, 2)
        out[f"bundle_apply_max_frame_gap_ms_{dtype}"] = round(max(gaps) * 1000, 2)
    return out
