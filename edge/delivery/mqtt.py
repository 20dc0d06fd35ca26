"""The MQTT link: one connection, the outbox pump and the routing of incoming topics, put together.

- ``connection``: credentials, TLS, last will, (re)connection with back-off and the reason of every
  failure (its own network thread);
- ``pump``: the durable outbox drained in order at QoS 1, a row deleted only on its PUBACK (its own
  thread);
- ``routing``: the device's topic names, and incoming messages handed to their handlers.

Status and retained state are sent only while connected (each is sent again on connection); events
only ever go out through the outbox, so none is lost while the broker is away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge import __version__
from edge.delivery.connection import Connection, tool_client
from edge.delivery.events import Status
from edge.delivery.outbox import Outbox
from edge.delivery.pump import OutboxPump
from edge.delivery.routing import Handler, Router, Topics
from edge.device.settings import MqttSettings
from edge.device.supervisor import Worker

log = logging.getLogger(__name__)
__all__ = ["LinkHealth", "MqttLink", "Topics", "tool_client"]


@dataclass(frozen=True, slots=True)
class LinkHealth:
    """A snapshot of the link's health, composed of its parts' own."""

    connected: bool
    published: int
    refused: int
    ack_failures: int
    in_flight: int
    problem: str | None  # the connection's problem first (nothing goes out without it), else the pump's


class MqttLink:
    def __init__(
        self,
        opts: MqttSettings,
        topics: Topics,
        outbox: Outbox,
        stop: threading.Event,
        max_message_bytes: int = 64 << 20,
        network: Worker | None = None,
        pump: Worker | None = None,
    ) -> None:
        self.topics = topics
        self.outbox = outbox
        offline = Status(device_id=topics.device_id, state="offline", ts=None, lost=True, version=__version__)
        self.connection = Connection(
            opts, topics.device_id, (topics.status, offline.to_json()), max_message_bytes, network
        )
        self.router = Router()
        self.pump = OutboxPump(outbox, self.connection.client, self.connection.connected, stop, opts.max_inflight, pump)
        client = self.connection.client
        client.on_publish = self.pump.on_publish
        client.on_message = self.router.on_message
        self.connection.when_connected(lambda: self.router.subscribe_all(client))
        self.connection.when_connected(self.pump.reconnected)
        self.connected = self.connection.connected

    # -- health ------------------------------------------------------------------
    def health(self) -> LinkHealth:
        conn, pump = self.connection.health(), self.pump.health()
        return LinkHealth(
            conn.connected,
            pump.published,
            pump.refused,
            pump.ack_failures,
            pump.in_flight,
            conn.problem or pump.problem,
        )

    @property
    def last_error(self) -> str | None:
        return self.health().problem

    @property
    def published(self) -> int:
        return self.pump.published

    @property
    def ack_failures(self) -> int:
        return self.pump.ack_failures

    @property
    def in_flight(self) -> int:
        return self.pump.in_flight

    @property
    def threads(self) -> tuple[threading.Thread, threading.Thread]:
        return self.connection.thread, self.pump.thread

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self.connection.thread.start()
        self.pump.thread.start()

    def notify(self) -> None:
        """A new event is in the outbox."""
        self.pump.notify()

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds, re-checked after every round of the pump (publishes, acks)."""
        return self.pump.wait(done, timeout)

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (every event acknowledged) or ``timeout``."""
        return self.wait(lambda: self.outbox.depth() == 0, timeout)

    def close(self, final_status: Status | None, timeout: float = 3.0) -> None:
        """Publish the final (offline) status, disconnect cleanly, stop the threads."""
        if final_status is not None and self.connected.is_set():
            info = self.connection.client.publish(self.topics.status, final_status.to_json(), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("the final status was not acknowledged before shutdown")
        self.pump.closing.set()
        self.connection.close(timeout)
        self.pump.notify()
        if self.pump.thread.ident is not None:
            self.pump.thread.join(timeout)

    # -- publishing and subscribing ---------------------------------------------
    def publish_status(self, status: Status) -> None:
        self.connection.send(self.topics.status, status.to_json(), qos=1, retain=True)

    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.connection.send(topic, payload, qos=qos, retain=True)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.connection.send(topic, payload, qos=qos, retain=False)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.router.add(topic, None, qos)
        self.connection.subscribe(topic, qos)

    def listen(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Subscribe (now and after every reconnect) and hand matching messages to ``handler``
        (topic, payload, retained), on the network thread: it must return quickly."""
        self.router.add(topic_filter, handler, qos)
        self.connection.subscribe(topic_filter, qos)

    def when_connected(self, action: Callable[[], object]) -> None:
        """Run ``action`` after every successful (re)connection, on the network thread."""
        self.connection.when_connected(action)
