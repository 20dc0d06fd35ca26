"""Health: systemd notifications and counters over windows that roll on their own clock.

sd_notify speaks the datagram protocol on ``$NOTIFY_SOCKET`` directly (no
systemd library). The watchdog is pinged from the frame loop, so a hung loop is
what systemd restarts.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")


class SystemdNotifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() else 0.0
        self._last_ping = 0.0

    def notify(self, message: str) -> bool:
        if not self.address:
            return False
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), addr)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self, now: float) -> None:
        if self.watchdog_interval and now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.notify("WATCHDOG=1")


@dataclass(frozen=True, slots=True)
class Latency:
    """One stage's latency over an interval."""

    p50_ms: float
    p95_ms: float


@dataclass(frozen=True, slots=True)
class StatsWindow:
    """Frames, faces and per-stage latencies over one window of the monotonic clock."""

    fps: float
    faces_per_min: float
    latency: dict[str, Latency]
    since: float
    until: float


class _Counts:
    def __init__(self, since: float, window: int) -> None:
        self.since = since
        self.frames = 0
        self.faces = 0
        self.lat: dict[str, deque[float]] = {s: deque(maxlen=window) for s in Stats.STAGES}

    def summary(self, until: float) -> StatsWindow:
        span = max(until - self.since, 1e-6)
        lat = {
            s: Latency(
                p50_ms=round(float(np.percentile(v, 50)) * 1e3, 2), p95_ms=round(float(np.percentile(v, 95)) * 1e3, 2)
            )
            for s, v in self.lat.items()
            if v
        }
        return StatsWindow(round(self.frames / span, 2), round(self.faces * 60.0 / span, 1), lat, self.since, until)


class Stats:
    """Per-stage latencies and counts over windows of ``period_s`` that roll on the monotonic clock, not
    on being read: a snapshot is the last whole window (until the first is whole, the one under way), and
    reading it changes nothing, so any thread may, any number of times.

    Written by one camera's frame processing (a camera's counts also go to the device's ``parent``);
    one lock. ``period_s`` of ``inf``: one window from the start (a benchmark's whole run)."""

    STAGES = ("detect", "align", "embed", "match", "frame")

    def __init__(
        self,
        window: int = 2000,
        parent: Stats | None = None,
        period_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.parent = parent
        self.period_s = period_s
        self.clock = clock
        self._lock = threading.Lock()
        self._current = _Counts(clock(), window)
        self._last: StatsWindow | None = None

    @property
    def lat(self) -> dict[str, deque[float]]:
        """The window under way's latency samples, seconds per stage."""
        return self._current.lat

    def _roll(self, now: float) -> None:
        """Close the window under way once it is ``period_s`` old (under the lock)."""
        if now - self._current.since >= self.period_s:
            self._last = self._current.summary(now)
            self._current = _Counts(now, self.window)

    def count(self, faces: int) -> None:
        """One frame processed with ``faces`` faces in it."""
        with self._lock:
            self._roll(self.clock())
            self._current.frames += 1
            self._current.faces += faces
        if self.parent is not None:
            self.parent.count(faces)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._roll(self.clock())
            self._current.lat[stage].append(seconds)
        if self.parent is not None:
            self.parent.add(stage, seconds)

    def window_at(self, now: float) -> StatsWindow:
        """The last whole window at ``now`` (the one under way until the first is whole)."""
        with self._lock:
            self._roll(now)
            return self._last if self._last is not None else self._current.summary(now)

    def snapshot(self, now: float) -> tuple[float, float, dict[str, Latency]]:
        """(fps, faces per minute, latency) of ``window_at(now)``."""
        w = self.window_at(now)
        return w.fps, w.faces_per_min, w.latency


def cpu_temperature() -> float | None:
    try:
        return round(int(THERMAL.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None
