"""What the device's MQTT topics are called, and which handler gets what arrives on them.

``Topics`` names every topic of one device (the contract in docs/mqtt.md). ``Router`` keeps the
subscriptions (made again after every reconnection) and hands each incoming message to the handlers
whose filter matches its topic; a handler that fails is logged and the others still run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes, bool], None]  # (topic, payload, retained)


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def match(self) -> str:
        return f"{self.prefix}/{self.device_id}/events/match"

    @property
    def status(self) -> str:
        return f"{self.prefix}/{self.device_id}/status"

    @property
    def gallery_state(self) -> str:
        return f"{self.prefix}/{self.device_id}/gallery/state"

    @property
    def gallery_set(self) -> str:
        return f"{self.prefix}/{self.device_id}/gallery/set"

    def gallery_fleet(self, name: str) -> str:
        return f"{self.prefix}/galleries/{name}"

    def presence(self, identity_id: str) -> str:
        return f"{self.prefix}/{self.device_id}/presence/{identity_id}"


class Subscriber(Protocol):
    def subscribe(self, topic: str, qos: int) -> Any: ...


class Router:
    """Subscriptions and the handlers of incoming messages. Added to from any thread while the network
    thread subscribes and routes: one lock, and each of those works on a copy."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, int] = {}
        self._handlers: list[tuple[str, Handler]] = []
        self._lock = threading.Lock()

    @property
    def subscriptions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._subscriptions)

    def add(self, topic_filter: str, handler: Handler | None, qos: int = 1) -> None:
        """Subscribe to ``topic_filter`` (from the next ``subscribe_all`` on); hand its messages to ``handler``."""
        with self._lock:
            self._subscriptions[topic_filter] = qos
            if handler is not None:
                self._handlers.append((topic_filter, handler))

    def subscribe_all(self, client: Subscriber) -> None:
        """Make every subscription on a (new) connection."""
        for topic, qos in self.subscriptions.items():
            client.subscribe(topic, qos)

    def route(self, topic: str, payload: bytes, retained: bool) -> int:
        """Hand a message to every handler whose filter matches its topic; returns how many took it."""
        handled = 0
        with self._lock:
            handlers = list(self._handlers)
        for topic_filter, handler in handlers:
            if not mqtt.topic_matches_sub(topic_filter, topic):
                continue
            handled += 1
            try:
                handler(topic, payload, retained)
            except Exception:
                log.exception("mqtt: message on %s could not be handled", topic)
        return handled

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's callback (network thread)."""
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        self.route(msg.topic, payload, bool(msg.retain))
