"""``edge bench``: per-stage latency, the service loop's frames per second, the cost of
an empty scene, peak RSS, at any frame size (``--size``, default 640x480).

Without ``--source`` the streams are composed from face images (the test fixtures
of a source checkout, or ``--faces DIR``):

- stages: 1–3 faces per frame at 1.0–1.6 m, every face of every frame through
  detect → align → embed → match against a 10,000-identity gallery (no tracking:
  the worst case); detection here is what stills use (every window of the layout);
- the service loop: the demo clip (four enrolled people and four strangers, one at
  a time, ``--distance`` metres from a 60° camera, default 1.2) at this size,
  through the service's own ``FrameProcessor``, frames as fast as processed;
- nobody in view: an empty hall with a camera's sensor noise, through the same loop.

Only processing is timed, never the decoding or composing of frames.
"""

from __future__ import annotations

import resource
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edge.capture.imageio import IMAGE_SUFFIXES, read_image
from edge.demo.scenes import face_px_at, gradient_background, hall_background, paste, sensor_noise
from edge.device.health import Stats
from edge.errors import InputError
from edge.gallery.build import Entry, gallery_of
from edge.recognition.match import Gallery, GalleryHolder, GallerySnapshot
from edge.recognition.pipeline import Recognizer
from edge.recognition.process import camera_pipeline
from edge.recognition.track import Confirmation
from edge.types import Frame, ImageArray

FPS_IN = 30.0


def portraits(folder: Path) -> list[ImageArray]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no face images under {folder}")
    return [read_image(p) for p in files]


def synthetic_stream(
    faces: Sequence[ImageArray], frames: int, width: int = 640, height: int = 480, seed: int = 0
) -> Iterator[ImageArray]:
    """Frames with 1–3 people who each stay for a while and drift slowly."""
    rng = np.random.default_rng(seed)
    bg = gradient_background(width, height, rng)
    sx, sy = width / 640, height / 480
    slots = [(160.0, 240.0), (330.0, 230.0), (500.0, 250.0)]
    for i in range(frames):
        count = 1 + (i // 50) % 3
        frame = bg.copy()
        for k in range(count):
            portrait = faces[(i // 50 + k) % len(faces)]
            x, y = slots[k]
            t = i / 30.0
            size = face_px_at(1.0 + 0.3 * k, width) * 0.9
            paste(frame, portrait, (x + 8 * np.sin(t + k)) * sx, (y + 5 * np.cos(t)) * sy, size, feather=False)
        yield frame


def file_stream(source: Path, frames: int, loop: bool = True) -> Iterator[ImageArray]:
    """Up to ``frames`` frames of a video or image folder, replayed when ``loop``."""
    if source.is_dir():
        images = portraits(source)
        for i in range(frames if loop else min(frames, len(images))):
            yield images[i % len(images)]
        return
    if not source.is_file():
        raise InputError(f"--source {source}: no such file or folder")
    cap = cv2.VideoCapture(str(source))
    if not cap.isOpened():
        raise InputError(f"--source {source}: not a video OpenCV can read")
    n = 0
    try:
        while n < frames:
            ok, frame = cap.read()
            if not ok and (not loop or n == 0):
                break
            if not ok:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = cap.read()
                if not ok:
                    break
            yield np.asarray(frame, np.uint8)
            n += 1
    finally:
        cap.release()
    if n == 0:
        raise InputError(f"--source {source}: no frame could be decoded")


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if values else float("nan")


def random_gallery(size: int, dim: int, per_identity: int = 1, seed: int = 1) -> Gallery:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(size * per_identity, dim)).astype(np.float32)
    return gallery_of(Entry(f"id{i:05d}", None, vecs[i * per_identity : (i + 1) * per_identity]) for i in range(size))


@dataclass
class StageTimes:
    detect: list[float]
    align: list[float]
    embed_per_face: list[float]
    match: list[float]
    frame: list[float]
    faces: int = 0


def run_stream(rec: Recognizer, frames: Iterator[ImageArray], snap: GallerySnapshot) -> StageTimes:
    """Full pipeline on every face of every frame (no tracking: the worst case)."""
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


def window_ms(rec: Recognizer, image: ImageArray, reps: int = 50) -> float:
    """One detector window: crop, letterbox, invoke, decode (a 2.5× crop around a 60 px face)."""
    from edge.vision.detect import Region

    h, w = image.shape[:2]
    region = Region(w / 2 - 75, h / 2 - 75, w / 2 + 75, h / 2 + 75, kind="tile")
    rec.detector.detect(image, region)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        rec.detector.detect(image, region)
        times.append(time.perf_counter() - t)
    return round(pct(times, 50), 3)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench(
    rec: Recognizer,
    source: Path | None,
    faces_dir: Path | None,
    frames: int = 300,
    gallery_size: int = 10_000,
    width: int = 640,
    height: int = 480,
) -> dict[str, object]:
    snap = rec.matcher.snapshot(random_gallery(gallery_size, rec.embedder.dim))
    portraits_ = portraits(faces_dir) if faces_dir is not None else []
    stream = file_stream(source, frames) if source is not None else synthetic_stream(portraits_, frames, width, height)
    # Warm-up: first invokes allocate and pack weights.
    warm = (
        next(synthetic_stream(portraits_, 1, width, height)) if portraits_ else np.zeros((height, width, 3), np.uint8)
    )
    run_stream(rec, iter([warm] * 3), snap)
    st = run_stream(rec, stream, snap)
    total = sum(st.frame)
    result: dict[str, object] = {
        "threads": rec.settings.models.threads,
        "detector": rec.detector.kind,
        "embedder": rec.settings.models.embedder,
        "pipeline": rec.pipeline_id,
        "source": str(source) if source else f"synthetic {width}x{height}, 1-3 faces, {len(portraits_)} portraits",
        "frames": len(st.frame),
        "faces": st.faces,
        "detect_window_ms_p50": window_ms(rec, warm),
        "detect_still_ms_p50": round(pct(st.detect, 50), 3),
        "detect_still_windows": len(rec.scanner().layout_for(warm.shape[1], warm.shape[0])),
        "align_ms_per_face_p50": round(pct(st.align, 50), 3),
        "align_ms_per_face_p95": round(pct(st.align, 95), 3),
        "embed_ms_per_face_p50": round(pct(st.embed_per_face, 50), 3),
        "embed_ms_per_face_p95": round(pct(st.embed_per_face, 95), 3),
        "match_ms_p50": round(pct(st.match, 50), 3),
        "match_ms_p95": round(pct(st.match, 95), 3),
        "gallery_size": gallery_size,
        "stills_fps": round(len(st.frame) / total, 1) if total else 0.0,
    }
    if portraits_:
        from edge_lab.lfw import still_or_centre

        probe, _ = still_or_centre(rec, portraits_[0])
        result["embed_ms_per_face_by_batch"] = embed_batches(rec, probe.crop)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return result


def service_bench(
    rec: Recognizer,
    faces_dir: Path,
    work: Path,
    width: int = 640,
    height: int = 480,
    distance_m: float = 1.2,
    idle_frames: int = 300,
) -> dict[str, object]:
    """The service's own frame loop (tracking on) over the demo clip composed at this
    size, frames as fast as processed, timestamps as from a 30 fps camera; then an
    empty noisy hall through the same loop, measured once it is steady: after the scanner's
    first round (a one-off look at every window when watching begins) and the sweep's round
    after it (which passes over what the first round has just seen).

    Confirmation latency is the time from a track's first frame to its confirming
    frame, plus that frame's processing time (the event is in the outbox then;
    publication adds a loopback round trip)."""
    from edge.demo.assets import build_assets
    from edge.gallery.build import gallery_of
    from edge.gallery.enroll import enroll_directory

    assets = build_assets(faces_dir, work, width=width, height=height, distance_m=distance_m)
    reports = enroll_directory(rec, assets.gallery)
    holder = GalleryHolder(
        rec.matcher,
        gallery_of(reports),
    )
    latencies: list[float] = []
    confirmed: list[str] = []
    busy = {"t": 0.0}

    def on_confirm(conf: Confirmation, frame: Frame) -> None:
        latencies.append(frame.ts - conf.first_seen + (time.perf_counter() - busy["t"]))
        confirmed.append(str(conf.match.identity_id))

    stats = Stats(window=100_000, period_s=float("inf"))  # one window: the whole run
    proc = camera_pipeline(rec, holder, on_confirm, stats=stats)
    total, n, invokes = 0.0, 0, 0
    for i, image in enumerate(file_stream(assets.clip, 100_000, loop=False)):
        busy["t"] = time.perf_counter()
        proc(Frame(image, i, i / FPS_IN))
        total += time.perf_counter() - busy["t"]  # processing only, not the file's decoding
        invokes += proc.scanner.last.invokes
        n += 1
    shutil.rmtree(work, ignore_errors=True)
    # Nobody in view: an empty hall, with a camera's own noise in every frame.
    rng = np.random.default_rng(3)
    hall = hall_background(width, height, rng)
    blanks = [sensor_noise(hall, rng) for _ in range(16)]
    idle = camera_pipeline(rec, holder, on_confirm)
    warm = 0
    while warm == 0 or idle.scanner.first_round:  # the one-off first look at every window: not idle cost
        idle(Frame(blanks[warm % len(blanks)], warm, warm / FPS_IN))
        warm += 1
    # Nor the sweep's next round, which passes over the windows the first round has just seen.
    for _ in range(len(idle.scanner.layout_for(width, height)) * rec.settings.detection.idle_every):
        idle(Frame(blanks[warm % len(blanks)], warm, warm / FPS_IN))
        warm += 1
    empty_times, idle_invokes = [], 0
    for i in range(warm, warm + idle_frames):
        t = time.perf_counter()
        idle(Frame(blanks[i % len(blanks)], i, i / FPS_IN))
        empty_times.append(time.perf_counter() - t)
        idle_invokes += idle.scanner.last.invokes
    empty_ms = float(np.mean(empty_times) * 1000)
    return {
        "service_clip": f"{width}x{height}, 4 enrolled + 4 strangers one at a time, {distance_m:g} m "
        f"({face_px_at(distance_m, width):.0f} px faces)",
        "service_frames": n,
        "service_fps": round(n / total, 1),
        "service_frame_ms_p50": round(pct(list(stats.lat["frame"])[:n], 50), 3),
        "service_frame_ms_p95": round(pct(list(stats.lat["frame"])[:n], 95), 3),
        "service_detector_invokes_per_frame": round(invokes / max(n, 1), 2),
        "confirmations": confirmed,
        "confirm_latency_ms_at_30fps": [round(v * 1000, 1) for v in latencies],
        "empty_frame_ms_mean": round(empty_ms, 3),
        "empty_detector_invokes_per_frame": round(idle_invokes / idle_frames, 2),
        "idle_cpu_pct_of_one_core_at_30fps": round(empty_ms * FPS_IN / 10.0, 1),
    }


def audit_bench(folder: Path, records: int = 300) -> dict[str, object]:
    """What the audit log costs per event: one fsync'd append of an event record."""
    from edge.delivery.audit import AuditLog

    log = AuditLog(folder)
    times = []
    for i in range(records):
        data = {
            "event_id": f"{i:08d}-0000-0000-0000-000000000000",
            "identity_id": "visitor-0042",
            "score": 0.7342,
            "threshold": 0.6012,
            "est_false_match_rate": 3.1e-7,
            "gallery_version": 7,
            "track_id": i,
        }
        t = time.perf_counter()
        log.append("event", data)
        times.append(time.perf_counter() - t)
    return {"audit_append_ms_p50": round(pct(times, 50), 3), "audit_append_ms_p95": round(pct(times, 95), 3)}


def bundle_bench(rec: Recognizer, frame: ImageArray, identities: int = 10_000, per: int = 5) -> dict[str, object]:
    """Size of a 10,000 × 5 bundle and the time to apply it (verify + parse + swap) in a
    thread, while the frame loop keeps processing ``frame``: the longest gap between
    two processed frames during the apply is what a camera would see."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.gallery.admit import to_gallery, verify_bundle
    from edge.gallery.bundle import Identity, encode

    key = Ed25519PrivateKey.generate()
    vecs = np.random.default_rng(2).normal(size=(identities * per, rec.embedder.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    people = [Identity(f"p{i:05d}", None, vecs[i * per : (i + 1) * per], {}) for i in range(identities)]
    out: dict[str, object] = {"bundle_identities": identities, "bundle_embeddings": identities * per}
    holder = GalleryHolder(rec.matcher)
    scanner = rec.scanner()
    dtypes: tuple[Literal["float16", "int8"], ...] = ("float16", "int8")
    for dtype in dtypes:
        data = encode(people, "bench", 1, rec.embedder_sha256, key, dtype=dtype, embedder=rec.embedder_name)
        out[f"bundle_mb_{dtype}"] = round(len(data) / 1e6, 2)
        # Frame loop baseline, then the same loop while the bundle applies.
        base = []
        for _ in range(30):
            t = time.perf_counter()
            scanner.detect(frame)
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
            scanner.detect(frame)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
        worker.join()
        out[f"bundle_apply_s_{dtype}"] = round(took[0], 3)
        out[f"bundle_apply_frame_ms_baseline_{dtype}"] = round(float(np.median(base)) * 1000, 2)
        out[f"bundle_apply_max_frame_gap_ms_{dtype}"] = round(max(gaps) * 1000, 2)
    return out
