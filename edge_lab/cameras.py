"""``edge bench --cameras N``: what several cameras cost one device, and how they share it.

Each camera plays the demo clip (four enrolled people and four strangers, one at a time,
``distance`` metres from a 60° camera), each starting at another point of it, so that one
face is in view of most cameras most of the time, at ``width`` × ``height``. Measured:

- **live**: the cameras deliver 30 frames/s each, in real time; the device takes the newest
  frame of each camera whenever it is free (as its readers' hand-offs do) and drops the ones
  it had no time for. Per camera: frames processed per second, frames dropped, and face →
  event latency (from the person's first frame arriving to their event being confirmed);
- **capacity**: frames as fast as processed: frames per second per camera;
- **nobody in view**: an empty hall on every camera, once steady: ms per frame, and the share
  of one core per camera at 30 frames/s.

Two ways to serve the cameras, measured in the same run (``loops``): ``shared``, one frame loop
for every camera with one set of interpreters, each round's faces embedded in one batch (what
the service does); ``per-camera``, a thread per camera with interpreters of its own.
Only processing is timed, never the decoding of frames (they are decoded first).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.demo.scenes import hall_background, sensor_noise
from edge.errors import InputError
from edge.recognition.match import GalleryHolder
from edge.recognition.pipeline import Recognizer
from edge.recognition.process import FrameProcessor, camera_pipeline, process_frames
from edge.recognition.track import Confirmation
from edge.types import Frame, ImageArray

FPS_IN = 30.0
LOOPS = ("shared", "per-camera")


@dataclass
class CameraRun:
    """One camera's side of a run."""

    frames: list[ImageArray]
    proc: FrameProcessor
    processed: int = 0
    dropped: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, face's first frame → its event
    events: list[str] = field(default_factory=list)


def _demo(
    rec: Recognizer, faces_dir: Path, work: Path, width: int, height: int, distance: float
) -> tuple[GalleryHolder, list[ImageArray]]:
    from edge.demo.assets import build_assets
    from edge.gallery.build import gallery_of
    from edge.gallery.enroll import enroll_directory
    from edge_lab.bench import file_stream

    assets = build_assets(faces_dir, work, width=width, height=height, distance_m=distance)
    reports = enroll_directory(rec, assets.gallery)
    holder = GalleryHolder(
        rec.matcher,
        gallery_of(reports),
    )
    frames = list(file_stream(assets.clip, 100_000, loop=False))
    shutil.rmtree(work, ignore_errors=True)
    return holder, frames


def _cameras(
    rec: Recognizer, holder: GalleryHolder, clip: Sequence[ImageArray], n: int, seconds: float
) -> list[CameraRun]:
    """``n`` cameras, camera k starting k/n of the way into the clip (looping), ``seconds`` long each."""
    total = int(seconds * FPS_IN)
    runs: list[CameraRun] = []
    for k in range(n):
        offset = k * len(clip) // n + 17 * k  # not a whole number of visits: faces arrive at other times
        latencies: list[float] = []
        events: list[str] = []

        def on_confirm(
            conf: Confirmation, frame: Frame, latencies: list[float] = latencies, events: list[str] = events
        ) -> None:
            # Frames are stamped when they arrive (real time): from the face's first frame to now.
            latencies.append(time.perf_counter() - _T0[0] - conf.first_seen)
            events.append(str(conf.match.identity_id))

        proc = camera_pipeline(rec, holder, on_confirm)
        frames = [clip[(offset + i) % len(clip)] for i in range(total)]
        runs.append(CameraRun(frames, proc, latencies=latencies, events=events))
    return runs


_T0 = [0.0]  # the run's start (perf_counter), shared by the confirmation callbacks


def _camera_clock(total: int) -> Iterator[tuple[int, int]]:
    """A 30 frames/s camera's newest frame whenever the caller is ready for one, and how many frames
    it skipped since the last; waits for the next frame when the caller is ahead of the camera."""
    last = -1
    while True:
        now = time.perf_counter() - _T0[0]
        idx = min(int(now * FPS_IN), total - 1)
        if idx <= last:
            if idx == total - 1:
                return
            time.sleep((idx + 1) / FPS_IN - now)  # a benchmark waiting for the camera's next frame
            continue
        yield idx, idx - last - 1
        last = idx


def _enough(runs: Sequence[CameraRun], until_events: int) -> bool:
    """Every camera has had ``until_events`` events (0: play the whole clip)."""
    return until_events > 0 and all(len(r.events) >= until_events for r in runs)


def _live_shared(runs: Sequence[CameraRun], until_events: int = 0) -> float:
    """Every camera at 30 frames/s in real time, one loop: each round the newest frame of every camera."""
    _T0[0] = time.perf_counter()
    for idx, skipped in _camera_clock(len(runs[0].frames)):
        work = []
        for run in runs:
            run.dropped += skipped
            run.processed += 1
            work.append((run.proc, Frame(run.frames[idx], idx, idx / FPS_IN)))
        process_frames(work)
        if _enough(runs, until_events):
            break
    return time.perf_counter() - _T0[0]


def _live_per_camera(runs: Sequence[CameraRun], until_events: int = 0) -> float:
    """Every camera at 30 frames/s in real time, a thread each with its own interpreters."""
    _T0[0] = time.perf_counter()

    def loop(run: CameraRun) -> None:
        for idx, skipped in _camera_clock(len(run.frames)):
            run.dropped += skipped
            run.processed += 1
            run.proc(Frame(run.frames[idx], idx, idx / FPS_IN))
            if _enough(runs, until_events):
                break

    threads = [threading.Thread(target=loop, args=(r,), name=f"bench-camera-{k}") for k, r in enumerate(runs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - _T0[0]


def _capacity(runs: Sequence[CameraRun]) -> float:
    """Frames per second per camera, every frame, as fast as the shared loop goes."""
    t0 = time.perf_counter()
    for i in range(len(runs[0].frames)):
        process_frames([(r.proc, Frame(r.frames[i], i, i / FPS_IN)) for r in runs])
    return len(runs[0].frames) / (time.perf_counter() - t0)


def _idle(rec: Recognizer, holder: GalleryHolder, n: int, width: int, height: int, frames: int = 300) -> float:
    """ms per round of ``n`` empty cameras through the shared loop, once steady."""
    rng = np.random.default_rng(3)
    hall = hall_background(width, height, rng)
    blanks = [sensor_noise(hall, rng) for _ in range(16)]
    procs = [camera_pipeline(rec, holder, lambda c, f: None) for _ in range(n)]
    warm = len(procs[0].scanner.layout_for(width, height)) * (rec.settings.detection.idle_every + 1) + 40
    for i in range(warm):  # the first round and the sweep's next round are not idle cost
        process_frames([(p, Frame(blanks[(i + k) % 16], i, i / FPS_IN)) for k, p in enumerate(procs)])
    t0 = time.perf_counter()
    for i in range(warm, warm + frames):
        process_frames([(p, Frame(blanks[(i + k) % 16], i, i / FPS_IN)) for k, p in enumerate(procs)])
    return (time.perf_counter() - t0) / frames * 1000


def _summary(runs: Sequence[CameraRun], seconds: float) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for k, r in enumerate(runs):
        lat = np.array(r.latencies) * 1000 if r.latencies else np.zeros(0)
        out.append(
            {
                "camera": k,
                "fps": round(r.processed / seconds, 1),
                "dropped_frames": r.dropped,
                "events": len(r.events),
                "event_ms_p50": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
                "event_ms_p90": round(float(np.percentile(lat, 90)), 1) if len(lat) else None,
                "event_ms_max": round(float(lat.max()), 1) if len(lat) else None,
            }
        )
    return out


def cameras_bench(
    rec: Recognizer,
    faces_dir: Path,
    work: Path,
    cameras: int = 2,
    width: int = 1280,
    height: int = 720,
    distance: float = 1.2,
    seconds: float = 20.0,
    loops: Sequence[str] = LOOPS,
    until_events: int = 0,
    capacity_seconds: float = 10.0,
) -> dict[str, object]:
    """``until_events``: a live run ends as soon as every camera has had that many events (``seconds`` is then
    the most it lasts); ``capacity_seconds``: the clip's length for the capacity run (every frame processed)."""
    if not 1 <= cameras <= 16:
        raise InputError("--cameras: 1 to 16")
    if any(lp not in LOOPS for lp in loops):
        raise InputError(f"--loops: {', '.join(LOOPS)}")
    holder, clip = _demo(rec, faces_dir, work, width, height, distance)
    out: dict[str, object] = {
        "cameras": cameras,
        "size": f"{width}x{height}",
        "seconds": seconds,
        "threads_per_interpreter": rec.settings.models.threads,
        "clip": f"the demo clip on every camera, camera k starting k/{cameras} of the way into it",
    }
    for mode in loops:
        if mode == "shared":
            runs = _cameras(rec, holder, clip, cameras, seconds)
            spent = _live_shared(runs, until_events)
        else:  # every camera its own interpreters (models loaded again), its own thread
            recs = [Recognizer(rec.settings) for _ in range(cameras)]
            runs = [
                _cameras(r, GalleryHolder(r.matcher, holder.current.gallery), clip, cameras, seconds)[k]
                for k, r in enumerate(recs)
            ]
            spent = _live_per_camera(runs, until_events)
        out[f"live_{mode.replace('-', '_')}"] = _summary(runs, spent)
    out["capacity_fps_per_camera"] = round(
        _capacity(_cameras(rec, holder, clip, cameras, min(seconds, capacity_seconds))), 1
    )
    idle_ms = _idle(rec, holder, cameras, width, height)
    out["idle_ms_per_round"] = round(idle_ms, 3)
    out["idle_cpu_pct_of_one_core_per_camera_at_30fps"] = round(idle_ms / cameras * FPS_IN / 10.0, 2)
    return out
