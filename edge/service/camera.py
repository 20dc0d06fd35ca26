"""One camera's chain, made once per camera: reader → hand-off → scanner → tracker → recognizer →
confirmation; and the frame loop that serves every camera in turn.

    [[cameras]] (or one [source]) ─┬─ Camera "door": CaptureThread → LatestFrame ─┐
                                   └─ Camera "yard": CaptureThread → LatestFrame ─┤ FrameHub
                                                                                  ▼
        FrameLoop: each camera's newest frame → scan → track → align → quality (per camera)
                   → embed (one batch for every camera's faces) → match (one gallery snapshot)
                   → confirm (per camera) → on_confirm(confirmation, frame, camera id)

One set of models and one gallery snapshot serve every camera; each camera has its own reader
thread, scanner (layout, motion, schedule), tracker and settings (frame size and rate, quality
gate, detection). One loop serves all cameras with the device's one set of interpreters
(measured against a loop per camera: docs/cameras.md). A camera with no new frame is passed over,
so one that is slow, dead or hung never holds up the others; its reader reopens it with back-off,
and a reader stuck inside its driver is reported by the supervisor as that camera's trouble while
the others go on (the device stops only when every camera has).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.capture import CaptureThread, FrameHub, LatestFrame, open_source
from edge.capture.sources import check_at_start
from edge.device.health import Stats
from edge.device.settings import Camera as CameraConfig
from edge.device.settings import TrackingSettings
from edge.device.supervisor import Supervisor, Worker
from edge.recognition.match import GalleryHolder
from edge.recognition.pipeline import Recognizer
from edge.recognition.process import camera_pipeline, process_frames
from edge.recognition.track import Confirmation
from edge.types import Frame

CAMERAS = "cameras"  # the supervisor's group of camera readers

OnCameraConfirm = Callable[[Confirmation, Frame, str], None]
OnCameraSeen = Callable[[set[str], str], None]


@dataclass(frozen=True)
class CameraState:
    """What the status says of one camera."""

    id: str
    state: str  # starting, ok, retrying, failed, exhausted, idle, stalled
    error: str | None
    fps: float
    dropped_frames: int


class Camera:
    """One camera: its reader thread and hand-off, and the frame processor that judges its faces."""

    def __init__(
        self,
        spec: CameraConfig,
        recognizer: Recognizer,
        gallery: GalleryHolder,
        tracking: TrackingSettings,
        supervisor: Supervisor,
        stop: threading.Event,
        hub: FrameHub,
        device_stats: Stats,
        on_confirm: OnCameraConfirm,
        on_seen: OnCameraSeen | None = None,
        single: bool = True,
    ) -> None:
        self.id = spec.id
        self.spec = spec
        limits = recognizer.check_gate(spec.quality, "quality" if single else f"cameras.{spec.id}.quality")
        self.slot = LatestFrame(hub)
        src = spec.source
        check_at_start(src.uri)
        # The one camera keeps the worker name it always had; of several, each is named.
        self.worker: Worker = supervisor.register("capture" if single else f"capture:{spec.id}", group=CAMERAS)
        self.capture = CaptureThread(
            open_source(src.uri, src.fps, src.width, src.height),
            self.slot,
            stop,
            realtime=src.rate == "native",
            at_end=src.at_end,
            retry_initial_s=src.retry_initial_s,
            retry_max_s=src.retry_max_s,
            worker=self.worker,
            name="capture" if single else f"capture:{spec.id}",
        )
        supervisor.attach(self.worker, self.capture)
        self.stats = Stats(parent=device_stats, period_s=device_stats.period_s)
        self.process = camera_pipeline(
            recognizer,
            gallery,
            lambda conf, frame: on_confirm(conf, frame, self.id),
            (lambda ids: on_seen(ids, self.id)) if on_seen is not None else None,
            stats=self.stats,
            tracking=tracking,
            detection=spec.detection,
            limits=limits,
        )
        self._last_fps = 0.0

    @property
    def display(self) -> str:
        return f"{self.id}: {self.spec.source.display}"

    def start(self) -> None:
        self.capture.start()

    def join(self, timeout: float) -> None:
        self.capture.join(timeout)

    @property
    def done(self) -> bool:
        """Its file or folder came to its end (with at_end 'exit'), or it could not be opened."""
        return self.capture.exhausted.is_set()

    @property
    def error(self) -> str | None:
        """What is wrong with this camera now (its reader stuck, or its source's last error), if anything."""
        if self.worker.trouble:
            return f"camera {self.id}: {self.worker.trouble}"
        return self.capture.status.error

    def state(self, now: float) -> CameraState:
        """This camera now (read-only: any thread); fps over the last whole statistics window."""
        fps, _, _ = self.stats.snapshot(now)
        state = "stalled" if self.worker.trouble else self.capture.status.state
        return CameraState(self.id, state, self.error, fps, self.slot.dropped)


class FrameLoop:
    """Serves every camera: each round takes the newest frame of every camera that has one (the order
    turning round, so none is always first) and processes them together: one embedding batch, one
    gallery snapshot. A camera with nothing new is passed over."""

    def __init__(self, cameras: Sequence[Camera], hub: FrameHub) -> None:
        self.cameras = list(cameras)
        self.hub = hub
        self._turn = 0
        self.rounds = 0

    def step(self, timeout: float) -> int:
        """One round: the frames processed (0 after ``timeout`` with none)."""
        frames = self._take()
        if not frames:
            self.hub.wait(timeout)
            frames = self._take()
        if frames:
            process_frames([(cam.process, frame) for cam, frame in frames])
            self.rounds += 1
        return len(frames)

    def _take(self) -> list[tuple[Camera, Frame]]:
        self.hub.clear()
        n = len(self.cameras)
        order = self.cameras[self._turn :] + self.cameras[: self._turn]
        self._turn = (self._turn + 1) % n if n else 0
        out = []
        for cam in order:
            frame = cam.slot.take(0.0)
            if frame is not None:
                out.append((cam, frame))
        return out

    @property
    def frames(self) -> int:
        return sum(cam.process.frames for cam in self.cameras)

    def all_done(self) -> bool:
        return all(cam.done for cam in self.cameras)


# Camera states, worst first: the status's one "camera" field says the worst of several.
STATE_ORDER = ("failed", "stalled", "retrying", "starting", "exhausted", "idle", "ok")


def summarise(states: Sequence[CameraState]) -> tuple[str, str | None]:
    """(the worst camera's state, the first camera error, naming its camera when there are several)."""
    worst = min(states, key=lambda c: STATE_ORDER.index(c.state) if c.state in STATE_ORDER else 0)
    return worst.state, summarise_error([(c.id, c.error) for c in states if c.error], len(states))


def summarise_error(errors: Sequence[tuple[str, str]], cameras: int) -> str | None:
    """The first camera error, naming its camera when the device has several."""
    if not errors:
        return None
    camera, error = errors[0]
    return error if cameras == 1 or error.startswith("camera ") else f"camera {camera}: {error}"


def wait_cameras(cameras: Sequence[Camera], timeout: float) -> None:
    """Join every reader within ``timeout`` in all."""
    deadline = time.monotonic() + timeout
    for cam in cameras:
        cam.join(max(0.0, deadline - time.monotonic()))
