"""``edge fleet status``: every device under a topic prefix, at a glance, from the broker.

It reads the retained ``<prefix>/+/status`` and ``<prefix>/+/gallery/state`` of
every device. To know when the broker has delivered all retained messages it
then subscribes to a private marker topic and publishes on it: the broker answers
a client's subscriptions in order, so the marker comes back after the retained
messages of the earlier subscriptions (if publishing is not allowed, a short
quiet period ends the wait instead). ``--watch`` keeps listening and redraws.

A device is ``online`` while its retained status says so and its last heartbeat is
recent; ``stale`` when it says online but has been silent for ``stale_after_s``;
``offline`` after a clean stop (its final status, with the time) or when the
broker published its last will (connection lost, time unknown).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt

from edge.delivery.connection import tool_client
from edge.device.settings import MqttSettings

QUIET_S = 2.0  # without the marker: this long without a new retained message ends the wait


@dataclass
class DeviceView:
    device_id: str
    status: dict[str, Any] = field(default_factory=dict)
    gallery_state: dict[str, Any] = field(default_factory=dict)

    def row(self, now: datetime, stale_after_s: float) -> dict[str, Any]:
        s, g = self.status, self.gallery_state
        ts = _time(s.get("ts"))
        last_seen = round((now - ts).total_seconds(), 1) if ts else None
        state = s.get("state", "unknown")
        if state == "online" and last_seen is not None and last_seen > stale_after_s:
            state = "stale"
        if state == "online":
            since = s.get("since")
        elif state == "offline":
            since = None if s.get("lost") else s.get("ts")
        else:
            since = s.get("ts")
        name = g.get("gallery") or s.get("gallery_name")
        version = g.get("version") if g.get("version") is not None else s.get("gallery_version")
        error = g.get("error")
        return {
            "device_id": self.device_id,
            "online": state == "online",
            "state": state,
            "since": since,
            "connection_lost": bool(s.get("lost")),
            "fps": s.get("fps"),
            "camera": s.get("camera"),
            "cameras": {
                cid: {"state": c.get("state"), "fps": c.get("fps"), "error": c.get("error")}
                for cid, c in (s.get("cameras") or {}).items()
                if isinstance(c, dict)
            },
            "gallery": {"name": name, "version": version} if name or version else None,
            "last_gallery_error": f"{error['step']}: {error['reason']}" if isinstance(error, dict) else None,
            "outbox_depth": s.get("outbox_depth"),
            "last_seen_s": last_seen,
            "sw_version": s.get("version") or None,
            "embedder": s.get("embedder") or None,
            "key_id": s.get("key_id") or None,
            "last_error": s.get("last_error"),
        }


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


class Fleet:
    """The devices under one prefix, kept up to date from the broker."""

    def __init__(self, opts: MqttSettings, prefix: str) -> None:
        self.opts = opts
        self.prefix = prefix
        self.devices: dict[str, DeviceView] = {}
        self._cond = threading.Condition()
        self._marker = f"{prefix}/_fleet/{uuid.uuid4().hex}"
        self._synced = False
        self._last_message = time.monotonic()
        self.updates = 0
        self.client: mqtt.Client | None = None

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._last_message = time.monotonic()
            if msg.topic == self._marker:
                self._synced = True
                self._cond.notify_all()
                return
            parts = msg.topic.split("/")
            if len(parts) < 3 or not msg.payload:
                return
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            if not isinstance(body, dict):
                return
            device = parts[-2] if parts[-1] == "status" else parts[-3]
            view = self.devices.setdefault(device, DeviceView(device))
            if parts[-1] == "status":
                view.status = body
            else:
                view.gallery_state = body
            self.updates += 1
            self._cond.notify_all()

    def connect(self) -> None:
        client = tool_client(self.opts, "edge-fleet")
        client.on_message = self._on_message
        client.subscribe([(f"{self.prefix}/+/status", 1), (f"{self.prefix}/+/gallery/state", 1)])
        client.subscribe(self._marker, 1)  # answered after the retained messages above
        client.publish(self._marker, b"sync", qos=1)
        self.client = client

    def wait_synced(self, timeout: float = 15.0) -> None:
        """Until every retained message was delivered (the marker came back, or it went quiet)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._synced and time.monotonic() < deadline:
                if time.monotonic() - self._last_message > QUIET_S:
                    break
                self._cond.wait(0.2)

    def rows(self, stale_after_s: float) -> list[dict[str, Any]]:
        now = datetime.now(timezone.utc)
        with self._cond:
            return [v.row(now, stale_after_s) for _, v in sorted(self.devices.items())]

    def watch(self, draw: Callable[[list[dict[str, Any]]], None], stale_after_s: float, stop: threading.Event) -> None:
        """Redraw at every change, and every few seconds for the ages, until ``stop``."""
        while not stop.is_set():
            with self._cond:
                self._cond.wait(5.0)
            draw(self.rows(stale_after_s))

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


HEALTHY = ("ok", "idle")  # idle: a file source at its end, waiting; not a fault


def _cameras(r: dict[str, Any]) -> str:
    """One camera's state; of several, how many work and which do not (``door ok, yard stalled`` → ``1/2 ok: yard stalled``)."""
    cams = r.get("cameras") or {}
    if len(cams) <= 1:
        return str(r["camera"] or "-")
    bad = [f"{cid} {c['state']}" for cid, c in sorted(cams.items()) if c.get("state") not in HEALTHY]
    ok = len(cams) - len(bad)
    return f"{ok}/{len(cams)} ok" + (f": {', '.join(bad)}" if bad else "")


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'DEVICE':<22} {'STATE':<22} {'FPS':>6} {'CAMERAS':<24} {'GALLERY':<20} {'OUTBOX':>6} {'SEEN':>7} {'VERSION':<8} {'EMBEDDER':<18} {'KEY':<16} NOTE"
    lines = [head]
    for r in rows:
        since = r["since"][11:19] if isinstance(r["since"], str) and len(r["since"]) >= 19 else ""
        state = r["state"] + (" (conn. lost)" if r["connection_lost"] else f" {since}" if since else "")
        g = r["gallery"]
        gallery = f"{g['name'] or '-'} v{g['version']}" if g else "-"
        seen = f"{r['last_seen_s']:.0f}s" if r["last_seen_s"] is not None else "-"
        fps = f"{r['fps']:.1f}" if isinstance(r["fps"], (int, float)) and r["online"] else "-"
        note = r["last_gallery_error"] or r["last_error"] or ""
        lines.append(
            f"{r['device_id'][:22]:<22} {state[:22]:<22} {fps:>6} {_cameras(r)[:24]:<24} {gallery[:20]:<20} "
            f"{r['outbox_depth'] if r['outbox_depth'] is not None else '-':>6} {seen:>7} {r['sw_version'] or '-':<8} {(r.get('embedder') or '-')[:18]:<18} {(r.get('key_id') or '-')[:16]:<16} {note}"
        )
    online = sum(r["online"] for r in rows)
    lines.append(f"{len(rows)} device(s): {online} online, {len(rows) - online} not")
    return "\n".join(lines)
