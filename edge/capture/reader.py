"""The reader thread: keeps the newest frame for the processing loop.

``LatestFrame`` is a one-slot hand-off. For a live source the reader overwrites
the slot, so a slow loop always gets the newest frame and the stale ones are
counted as dropped. For a file read as fast as possible the reader waits for the
slot to empty instead, so every frame is processed, stamped with the file's own time
(frame n at n / fps after the first), not the wall clock. Nothing grows without limit.

A source that fails (whatever it raises) is reopened with exponential back-off;
the state (``ok``, ``retrying``, ``exhausted``, ``idle``, ``failed``) and the last
error are kept for the status heartbeat. The thread never ends the service because
a camera hiccuped; it beats the supervisor, so a read that hangs for good is noticed.
A file that cannot be opened with ``at_end = "exit"`` ends the run with its error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from edge.capture.sources import FrameSource, SourceError
from edge.device.supervisor import Worker
from edge.types import Frame

log = logging.getLogger(__name__)

AtEnd = Literal["idle", "exit", "loop"]


class FrameHub:
    """Where the frame loop waits for a frame from any camera: each camera's hand-off rings it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def ring(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> None:
        """Until some camera put a frame since the last ``clear`` (or ``timeout``)."""
        self._event.wait(timeout)

    def clear(self) -> None:
        self._event.clear()


class LatestFrame:
    def __init__(self, hub: FrameHub | None = None) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self.dropped = 0
        self.closed = False
        self.hub = hub

    def put(
        self, frame: Frame, wait_until_taken: bool, stop: threading.Event, beat: Callable[[], None] | None = None
    ) -> None:
        with self._cond:
            if wait_until_taken:
                while self._frame is not None and not stop.is_set():
                    self._cond.wait(0.1)
                    if beat is not None:
                        beat()
            elif self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._cond.notify_all()
        if self.hub is not None:
            self.hub.ring()

    def take(self, timeout: float) -> Frame | None:
        with self._cond:
            if self._frame is None and not self.closed and timeout > 0:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        if self.hub is not None:
            self.hub.ring()


@dataclass
class CaptureState:
    state: str = "starting"
    error: str | None = None
    frames: int = 0


class CaptureThread(threading.Thread):
    def __init__(
        self,
        source: FrameSource,
        slot: LatestFrame,
        stop: threading.Event,
        realtime: bool = True,
        at_end: AtEnd = "idle",
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        worker: Worker | None = None,
        name: str = "capture",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.source = source
        self.slot = slot
        self.stop_event = stop
        self.realtime = realtime
        self.at_end = at_end
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.worker = worker
        self.status = CaptureState()
        self.exhausted = threading.Event()
        self.failure: str | None = None  # why a file source gave up (the run ends with an error)

    def _beat(self) -> None:
        if self.worker is not None:
            self.worker.beat()

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.at_end == "exit" or self.failure is not None:
                self.slot.close()
            if self.worker is not None and (self.stop_event.is_set() or self.exhausted.is_set()):
                self.worker.done(self.status.state)

    def _run(self) -> None:
        delay = self.retry_initial_s
        seq = 0
        media_ts: float | None = None  # the file's own clock (fast playback), carried over a replay
        while not self.stop_event.is_set():
            self._beat()
            try:
                self.source.open()
            except Exception as exc:  # SourceError, or whatever a driver raises: the source is unusable now
                error = str(exc) if isinstance(exc, SourceError) else f"source {self.source.name}: {exc}"
                if not self.source.live and self.at_end == "exit":
                    # A file that cannot be opened will not open by retrying: end the run, saying why.
                    self.status.state, self.status.error, self.failure = "failed", error, error
                    log.error("%s; giving up (--exit-at-end)", error)
                    self.exhausted.set()
                    return
                delay = self._retry(error, delay)
                continue
            self.status.state, self.status.error = "ok", None
            delay = self.retry_initial_s
            interval = 1.0 / self.source.fps if (self.realtime and self.source.fps > 0) else 0.0
            # A file played as fast as processed keeps its own time (frame n at n / fps): tracking then
            # sees what it would at the native rate, however fast this machine is.
            step = (
                1.0 / self.source.fps if (not self.realtime and not self.source.live and self.source.fps > 0) else 0.0
            )
            next_due = time.monotonic()
            try:
                while not self.stop_event.is_set():
                    self._beat()
                    image = self.source.read()
                    if image is None:
                        break
                    seq += 1
                    self.status.frames += 1
                    if interval and not self.source.live:
                        next_due += interval
                        pause = next_due - time.monotonic()
                        if pause > 0 and self.stop_event.wait(pause):
                            break
                    media_ts = (time.monotonic() if media_ts is None else media_ts + step) if step else None
                    frame = Frame(image, seq, time.monotonic() if media_ts is None else media_ts, self.source.stills)
                    self.slot.put(
                        frame,
                        wait_until_taken=not self.source.live and not self.realtime,
                        stop=self.stop_event,
                        beat=self._beat,
                    )
            except Exception as exc:  # a dropped stream, a vanished device, a decoder error
                error = str(exc) if isinstance(exc, SourceError) else f"source {self.source.name}: {exc}"
                self._close()
                delay = self._retry(error, delay)
                continue
            self._close()
            if self.stop_event.is_set():
                break
            # A file or folder came to its end.
            if self.at_end == "loop":
                continue
            self.status.state = "exhausted" if self.at_end == "exit" else "idle"
            log.info(
                "source %s exhausted after %d frames (%s)", self.source.name, self.status.frames, self.status.state
            )
            self.exhausted.set()
            break

    def _close(self) -> None:
        try:
            self.source.close()
        except Exception as exc:
            log.warning("source %s did not close cleanly: %s", self.source.name, exc)

    def _retry(self, error: str, delay: float) -> float:
        self.status.state, self.status.error = "retrying", error
        log.warning("%s; retrying in %.1fs", error, delay)
        deadline = time.monotonic() + delay
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self._beat()
            self.stop_event.wait(min(1.0, max(0.0, deadline - time.monotonic())))
        return min(delay * 2, self.retry_max_s)
