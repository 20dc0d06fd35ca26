"""Home Assistant MQTT discovery: the appliance appears in Home Assistant by itself.

Per-entity discovery topics ``<prefix>/<component>/<node_id>/<object_id>/config``
(retained), one device per appliance, available while ``{topics}/status`` says
``online`` (the last will says ``offline``):

- ``event`` "Face match" on the match-event topic: event types are the enrolled
  identity ids; the event's attributes are the payload's fields (score, threshold,
  est_false_match_rate, evidence, track_id, camera, …), never an image; with several
  cameras, also one "Face match <camera>" per camera, firing for that camera's events;
- one ``binary_sensor`` per enrolled identity ("<label> seen"), on
  ``{prefix}/{device}/presence/<identity>``: ON at a match and while a confirmed
  track of that person is in view, OFF ``presence_timeout_s`` after the last sight,
  with the last score, time and the camera that saw them as attributes;
- diagnostic ``sensor``s read from the status heartbeat: frames/s, faces per
  minute, outbox depth, camera state, gallery version and identities, CPU
  temperature, last error.

A gallery larger than ``max_identity_entities`` (a watch list of thousands) gets
no per-identity entities: the event entity then has the one event type ``match``
(the identity is in its attributes), so discovery stays a few dozen messages.

Configs are published at every connection, whenever the gallery changes (event
types, presence entities added or removed), and again when Home Assistant says
``online`` on ``<prefix>/status``. Presence entities of identities no longer in
the gallery get an empty retained config (Home Assistant removes them), including
those a previous run published: their retained configs are read back at connect.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edge import __version__
from edge.delivery.events import MatchEvent
from edge.delivery.mqtt import MqttLink, Topics
from edge.device.settings import HomeAssistantSettings
from edge.recognition.match import GallerySnapshot

log = logging.getLogger(__name__)

# The match event as Home Assistant's event entity wants it: the payload's fields plus event_type.
EVENT_TEMPLATE = "{{ dict(value_json, event_type=value_json.identity_id) | to_json }}"
# …and for a gallery too large for an entity per identity: one event type.
EVENT_TYPE_ANY = "match"
EVENT_TEMPLATE_ANY = "{{ dict(value_json, event_type='match') | to_json }}"
# A camera's own event entity (with several cameras): the same topic, other cameras' events render
# empty, which Home Assistant passes over.
CAMERA_TEMPLATE = "{{% if value_json.camera == {camera!r} %}}{inner}{{% endif %}}"
# Status fields shown as diagnostic sensors: (object id, name, template field, unit, device class, icon).
DIAGNOSTICS: tuple[tuple[str, str, str, str | None, str | None, str | None], ...] = (
    ("fps", "Frames per second", "fps", "fps", None, "mdi:speedometer"),
    ("faces_per_min", "Faces per minute", "faces_per_min", "faces/min", None, "mdi:face-recognition"),
    ("outbox_depth", "Outbox depth", "outbox_depth", "events", None, "mdi:tray-full"),
    ("camera", "Camera", "camera", None, None, "mdi:cctv"),
    ("gallery_version", "Gallery version", "gallery_version", None, None, "mdi:account-multiple-check"),
    ("gallery_identities", "Gallery identities", "gallery_identities", "identities", None, "mdi:account-group"),
    ("cpu_temperature", "CPU temperature", "cpu_temp_c", "°C", "temperature", None),
    ("last_error", "Last error", "last_error", None, None, "mdi:alert-circle-outline"),
)


def slug(text: str) -> str:
    """Home Assistant's node and object ids allow [a-zA-Z0-9_-] only."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


@dataclass(frozen=True)
class Discovered:
    topic: str
    payload: dict[str, Any]


class HomeAssistant:
    def __init__(
        self,
        settings: HomeAssistantSettings,
        topics: Topics,
        link: MqttLink,
        include_label: bool,
        cameras: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.topics = topics
        self.link = link
        self.include_label = include_label
        self.cameras = tuple(cameras) if len(cameras) > 1 else ()  # one camera: the device's entity is its own
        self.node = slug(topics.device_id)
        self.presence = Presence(settings, topics, link, include_label)
        self._lock = threading.Lock()
        self._identities: dict[str, str | None] = {}  # id → label of identities with entities, as last published
        self._wanted: frozenset[str] = frozenset()  # object ids of the presence configs of _identities
        self._published_presence: set[str] = set()  # object ids of presence configs known to be retained

    # -- what is published -------------------------------------------------------------------
    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.settings.discovery_prefix}/{component}/{self.node}/{object_id}/config"

    def device(self) -> dict[str, Any]:
        return {
            "identifiers": [f"edge_{self.node}"],
            "name": self.settings.device_name or f"Face recognizer {self.topics.device_id}",
            "model": "edge-recognizer",
            "manufacturer": "edge-recognizer (open source)",
            "sw_version": __version__,
        }

    def availability(self) -> dict[str, Any]:
        return {
            "availability": [
                {
                    "topic": self.topics.status,
                    "value_template": "{{ value_json.state }}",
                    "payload_available": "online",
                    "payload_not_available": "offline",
                }
            ]
        }

    def configs(self, identities: dict[str, str | None], per_identity: bool = True) -> list[Discovered]:
        device, avail = self.device(), self.availability()
        out = [
            Discovered(
                self.config_topic("event", "face_match"),
                {
                    "name": "Face match",
                    "unique_id": f"edge_{self.node}_face_match",
                    "state_topic": self.topics.match,
                    "event_types": sorted(identities) if per_identity else [EVENT_TYPE_ANY],
                    "value_template": EVENT_TEMPLATE if per_identity else EVENT_TEMPLATE_ANY,
                    "icon": "mdi:face-recognition",
                    "device": device,
                    **avail,
                },
            )
        ]
        for camera in self.cameras:
            out.append(
                Discovered(
                    self.config_topic("event", f"face_match_{slug(camera)}"),
                    {
                        "name": f"Face match {camera}",
                        "unique_id": f"edge_{self.node}_face_match_{slug(camera)}",
                        "state_topic": self.topics.match,
                        "event_types": sorted(identities) if per_identity else [EVENT_TYPE_ANY],
                        "value_template": CAMERA_TEMPLATE.format(
                            camera=camera, inner=EVENT_TEMPLATE if per_identity else EVENT_TEMPLATE_ANY
                        ),
                        "icon": "mdi:cctv",
                        "device": device,
                        **avail,
                    },
                )
            )
        for ident, label in sorted(identities.items()):
            oid = f"presence_{slug(ident)}"
            topic = self.topics.presence(ident)
            out.append(
                Discovered(
                    self.config_topic("binary_sensor", oid),
                    {
                        "name": f"{(label if self.include_label else None) or ident} seen",
                        "unique_id": f"edge_{self.node}_{oid}",
                        "state_topic": topic,
                        "value_template": "{{ value_json.state }}",
                        "payload_on": "ON",
                        "payload_off": "OFF",
                        "json_attributes_topic": topic,
                        "json_attributes_template": Presence.ATTRIBUTES,
                        "device_class": "presence",
                        "device": device,
                        **avail,
                    },
                )
            )
        for oid, name, field, unit, dclass, icon in DIAGNOSTICS:
            cfg: dict[str, Any] = {
                "name": name,
                "unique_id": f"edge_{self.node}_{oid}",
                "state_topic": self.topics.status,
                "value_template": f"{{{{ value_json.{field} | default(none) }}}}",
                "entity_category": "diagnostic",
                "device": device,
                **avail,
            }
            if unit:
                cfg["unit_of_measurement"] = unit
                cfg["state_class"] = "measurement"
            if dclass:
                cfg["device_class"] = dclass
            if icon:
                cfg["icon"] = icon
            out.append(Discovered(self.config_topic("sensor", oid), cfg))
        return out

    # -- when ----------------------------------------------------------------------------------
    def attach(self) -> None:
        """Listen for Home Assistant's birth message and our own retained presence configs."""
        self.link.listen(f"{self.settings.discovery_prefix}/status", self._on_ha_status)
        self.link.listen(self.config_topic("binary_sensor", "+"), self._on_own_config)
        self.link.when_connected(self.publish)

    def on_gallery(self, snapshot: GallerySnapshot) -> None:
        """The gallery changed: new event types, presence entities added and removed."""
        g = snapshot.gallery
        per_identity = self.settings.per_person and len(g.identity_ids) <= self.settings.max_identity_entities
        identities = dict(zip(g.identity_ids, g.labels, strict=True)) if per_identity else {}
        with self._lock:
            switched = per_identity != self.presence.active
            changed = identities != self._identities or switched
            if switched:
                log.info(
                    "home assistant: %d identities %s max_identity_entities (%d): %s",
                    len(g.identity_ids),
                    "within" if per_identity else "over",
                    self.settings.max_identity_entities,
                    "a presence sensor per identity" if per_identity else "the event entity only (event type 'match')",
                )
            self._identities = identities
            self._wanted = frozenset(f"presence_{slug(i)}" for i in identities)
            self.presence.active = per_identity  # the one record of whether entities are per identity
        if changed:
            self.publish()  # the entities of identities gone are removed first…
            self.presence.forget(set(self.presence.known) - set(identities))  # …then their topics cleared

    def publish(self) -> None:
        with self._lock:
            identities, per_identity = dict(self._identities), self.presence.active
        for d in self.configs(identities, per_identity):
            self.link.publish_retained(d.topic, json.dumps(d.payload).encode())
        self._remove_stale()
        self.presence.publish_all(identities)

    def _remove_stale(self) -> None:
        with self._lock:
            keep = self._wanted
            stale = self._published_presence - keep
            self._published_presence = set(keep)
        for oid in sorted(stale):
            self.link.publish_retained(self.config_topic("binary_sensor", oid), b"")
            log.info("home assistant: entity %s removed (identity no longer in the gallery)", oid)

    def _on_ha_status(self, topic: str, payload: bytes, retained: bool) -> None:
        if payload.strip() == b"online":
            log.info("home assistant announced itself: discovery published again")
            self.publish()

    def _on_own_config(self, topic: str, payload: bytes, retained: bool) -> None:
        """A presence config under our node (retained from an earlier run, or our own echo)."""
        oid = topic.split("/")[-2]
        if not payload or not oid.startswith("presence_"):
            return
        with self._lock:  # on the network thread: O(1) per message (a gallery may hold thousands)
            wanted = oid in self._wanted
            self._published_presence.add(oid)
        if not wanted and retained:
            self._remove_stale()


class Presence:
    """Who is in view, per identity: ON at a match and while a confirmed track of them is seen,
    OFF ``presence_timeout_s`` after the last sight. Retained on the identity's presence topic."""

    name = "presence"
    ATTRIBUTES = (
        "{{ {'score': value_json.score, 'last_seen': value_json.last_seen, 'label': value_json.label, "
        "'camera': value_json.camera | default(none)} | to_json }}"
    )

    def __init__(self, settings: HomeAssistantSettings, topics: Topics, link: MqttLink, include_label: bool) -> None:
        self.timeout = settings.presence_timeout_s
        self.topics = topics
        self.link = link
        self.include_label = include_label
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # identity → monotonic time of the last sight (ON while present)
        self._last: dict[str, dict[str, Any]] = {}  # identity → last published state
        # False while entities are not per identity: per_person off, or the gallery too large for them
        self.active = settings.per_person

    @property
    def known(self) -> list[str]:
        with self._lock:
            return list(self._last)

    def emit(self, event: MatchEvent) -> None:
        """A confirmed match: ON now, with the score, time and camera."""
        if self.active:
            self._set(event.identity_id, True, event.score, event.label, event.camera)

    def seen(self, identities: Iterable[str], camera: str | None = None, now: float | None = None) -> None:
        """Identities of confirmed tracks in view this frame (of ``camera``): they stay ON; one now seen
        by another camera than its state says is published again, naming it."""
        now = time.monotonic() if now is None else now
        if not self.active:
            return
        moved = []
        with self._lock:
            for ident in identities:
                if ident in self._seen:
                    self._seen[ident] = now
                    if camera is not None and self._last.get(ident, {}).get("camera") not in (None, camera):
                        moved.append(ident)
        for ident in moved:
            self._set(ident, True, camera=camera)

    def tick(self, now: float | None = None) -> None:
        """OFF for whoever was not seen for ``presence_timeout_s``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            gone = [i for i, t in self._seen.items() if now - t >= self.timeout]
        for ident in gone:
            self._set(ident, False)

    def _set(
        self, ident: str, on: bool, score: float | None = None, label: str | None = None, camera: str | None = None
    ) -> None:
        with self._lock:
            last = self._last.get(ident, {})
            state = {
                "state": "ON" if on else "OFF",
                "score": score if score is not None else last.get("score"),
                "last_seen": datetime.now(timezone.utc).isoformat(timespec="seconds") if on else last.get("last_seen"),
                "label": (label if label is not None else last.get("label")) if self.include_label else None,
                "camera": camera if camera is not None else last.get("camera"),
            }
            if on:
                self._seen[ident] = time.monotonic()
            else:
                self._seen.pop(ident, None)
            self._last[ident] = state
        self.link.publish_retained(self.topics.presence(ident), json.dumps(state).encode())

    def publish_all(self, identities: dict[str, str | None]) -> None:
        """Every enrolled identity's current state (OFF unless seen), e.g. after a (re)connection."""
        for ident, label in identities.items():
            with self._lock:
                state = self._last.get(ident) or {
                    "state": "OFF",
                    "score": None,
                    "last_seen": None,
                    "label": label if self.include_label else None,
                    "camera": None,
                }
                self._last[ident] = state
            self.link.publish_retained(self.topics.presence(ident), json.dumps(state).encode())

    def forget(self, identities: set[str]) -> None:
        """Identities gone from the gallery: their presence topic is cleared."""
        for ident in identities:
            with self._lock:
                self._last.pop(ident, None)
                self._seen.pop(ident, None)
            self.link.publish_retained(self.topics.presence(ident), b"")
