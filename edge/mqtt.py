"""The MQTT link (paho-mqtt 2.x): topics, TLS/auth, last will, reconnect, and the
publisher that drains the durable outbox.

Events go out only from the outbox: a pump thread hands pending rows to paho in
order (QoS 1) while connected and deletes a row when its PUBACK arrives. paho
itself re-sends in-flight QoS 1 messages after a reconnect; rows that were never
acknowledged before a restart are sent again from the outbox (at-least-once).
``on_publish`` runs under paho's internal lock, so it only queues the ack for the
pump thread; nothing here blocks the frame loop.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.config import MqttSettings
from edge.errors import InputError
from edge.events import Status
from edge.outbox import Outbox

log = logging.getLogger(__name__)


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


def password_of(m: MqttSettings) -> str | None:
    """The broker password: from ``password_file`` (e.g. a systemd credential) or inline."""
    if m.password_file is not None:
        try:
            return m.password_file.read_text().strip()
        except OSError as exc:
            raise InputError(f"mqtt.password_file {m.password_file} cannot be read: {exc.strerror or exc}") from None
    return m.password.get_secret_value() if m.password is not None else None


class MqttLink:
    def __init__(self, opts: MqttSettings, topics: Topics, outbox: Outbox, stop: threading.Event) -> None:
        self.opts = opts
        self.topics = topics
        self.outbox = outbox
        self.stop_event = stop
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.published = 0
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._inflight: dict[int, int] = {}  # paho mid → outbox seq (pump thread only)
        self._cursor = 0  # highest outbox seq handed to paho in this process
        self._subscriptions: dict[str, int] = {}
        self.on_message: Any = None
        self.on_connected: Any = None
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=topics.device_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        offline = Status(device_id=topics.device_id, state="offline").to_json()
        client.will_set(topics.status, offline, qos=1, retain=True)
        password = password_of(opts)
        if opts.username is not None:
            client.username_pw_set(opts.username, password)
        if opts.tls or opts.ca_file is not None:
            client.tls_set(
                ca_certs=str(opts.ca_file) if opts.ca_file else None,
                certfile=str(opts.cert_file) if opts.cert_file else None,
                keyfile=str(opts.key_file) if opts.key_file else None,
            )
        client.reconnect_delay_set(
            min_delay=max(1, int(opts.reconnect_min_s)), max_delay=max(1, int(opts.reconnect_max_s))
        )
        client.max_inflight_messages_set(opts.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client
        self._pump = threading.Thread(target=self._pump_loop, name="mqtt-pump", daemon=True)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self.client.connect_async(self.opts.host, self.opts.port, keepalive=self.opts.keepalive)
        self.client.loop_start()
        self._pump.start()

    def notify(self) -> None:
        """A new event is in the outbox."""
        self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (every event acknowledged) or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self.outbox.depth() == 0

    def close(self, final_status: Status | None, timeout: float = 3.0) -> None:
        """Publish the final (offline) status, disconnect cleanly, stop the threads."""
        if final_status is not None and self.connected.is_set():
            info = self.client.publish(self.topics.status, final_status.to_json(), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):  # not sent before the timeout
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self._wake.set()
        self._pump.join(timeout)

    # -- publishing ------------------------------------------------------------
    def publish_status(self, status: Status) -> None:
        if self.connected.is_set():
            self.client.publish(self.topics.status, status.to_json(), qos=1, retain=True)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        if self.connected.is_set():
            self.client.publish(topic, payload, qos=1, retain=True)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscriptions[topic] = qos
        if self.connected.is_set():
            self.client.subscribe(topic, qos)

    def _pump_loop(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            self._take_acks()
            if self.stop_event.is_set() and not self._inflight and not self.connected.is_set():
                return
            if not self.connected.is_set():
                if self.stop_event.is_set():
                    return
                continue
            room = self.opts.max_inflight * 5 - len(self._inflight)
            if room <= 0:
                continue
            for row in self.outbox.pending(after=self._cursor, limit=room):
                info = self.client.publish(row.topic, row.payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    log.warning("publish of outbox row %d deferred: %s", row.seq, mqtt.error_string(info.rc))
                    break
                self._inflight[info.mid] = row.seq
                self._cursor = row.seq

    def _take_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            seq = self._inflight.pop(mid, None)
            if seq is not None:
                self.outbox.ack(seq)
                self.published += 1

    # -- paho callbacks (network thread) ----------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.error("mqtt %s:%d: %s", self.opts.host, self.opts.port, self.last_error)
            return
        self.last_error = None
        self.connected.set()
        log.info("mqtt connected to %s:%d as %s", self.opts.host, self.opts.port, self.topics.device_id)
        for topic, qos in self._subscriptions.items():
            client.subscribe(topic, qos)
        if self.on_connected is not None:
            self.on_connected()
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if was and not self.stop_event.is_set():
            self.last_error = f"disconnected: {reason}"
            log.warning("mqtt disconnected (%s); reconnecting with back-off", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
