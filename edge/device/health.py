"""Health: systemd notifications, rolling counters and the heartbeat status.

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
from collections.abc import Mapping
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


class Stats:
    """Rolling per-stage latencies and counts since the last heartbeat.

    Written by the frame loop, read and reset by whichever thread publishes a
    status (the loop's heartbeat, or MQTT's network thread on reconnect): one lock.
    """

    STAGES = ("detect", "align", "embed", "match", "frame")

    def __init__(self, window: int = 2000, parent: Stats | None = None) -> None:
        self.lat: dict[str, deque[float]] = {s: deque(maxlen=window) for s in self.STAGES}
        self.frames = 0
        self.faces = 0
        self.since = time.monotonic()
        self.parent = parent  # a camera's counts also go to the device's
        self._lock = threading.Lock()

    def count(self, faces: int) -> None:
        """One frame processed with ``faces`` faces in it."""
        with self._lock:
            self.frames += 1
            self.faces += faces
        if self.parent is not None:
            self.parent.count(faces)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.lat[stage].append(seconds)
        if self.parent is not None:
            self.parent.add(stage, seconds)

    def snapshot(self, now: float) -> tuple[float, float, dict[str, Latency]]:
        """(fps, faces per minute, latency) over the interval, then reset it."""
        with self._lock:
            span = max(now - self.since, 1e-6)
            fps, fpm = self.frames / span, self.faces * 60.0 / span
            samples = {s: np.array(v) for s, v in self.lat.items() if v}
            self.frames = self.faces = 0
            self.since = now
            for v in self.lat.values():
                v.clear()
        lat = {
            s: Latency(
                p50_ms=round(float(np.percentile(v, 50)) * 1e3, 2), p95_ms=round(float(np.percentile(v, 95)) * 1e3, 2)
            )
            for s, v in samples.items()
        }
        return round(fps, 2), round(fpm, 1), lat


def cpu_temperature() -> float | None:
    try:
        return round(int(THERMAL.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None
