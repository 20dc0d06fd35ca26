"""The MQTT link (paho-mqtt 2.x, MQTT v5): topics, TLS/auth, last will, (re)connection
with the reason of every failure, and the publisher that drains the durable outbox.

The link runs its own network thread: it connects (TCP, TLS, CONNECT), runs paho's
loop while connected, and reconnects with exponential back-off. Because it makes
each connection attempt itself, every failure is logged with its cause (refused,
unreachable, certificate rejected, the port not speaking TLS, bad credentials) and
kept as ``last_error`` for the status, instead of being retried in silence. With
MQTT v5 the broker says why it dropped the connection; "session taken over" means
another client uses this device id, which is logged as such.

The CONNECT carries a Maximum Packet Size, so the broker never sends this device a
message larger than it accepts: size is checked before anything is buffered here.

Events go out only from the outbox: a pump thread hands pending rows to paho in
order (QoS 1) while connected and deletes a row when its PUBACK arrives. A failed
delete (a full disk) is retried, never fatal: the row is sent again at worst
(delivery is at-least-once). Both threads beat the supervisor.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import __version__
from edge.delivery.events import Status
from edge.delivery.outbox import Outbox
from edge.device.config import MqttSettings
from edge.device.logs import protect
from edge.device.supervisor import Worker
from edge.errors import EdgeError, InputError

log = logging.getLogger(__name__)
SESSION_TAKEN_OVER = 142
FLAP_SECONDS = 20.0  # a connection the broker drops this soon after accepting it counts as a flap
FLAPS = 3  # that many in a row: another client is almost surely using this client id


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


def password_of(m: MqttSettings) -> str | None:
    """The broker password: from ``password_file`` (e.g. a systemd credential) or inline."""
    if m.password_file is not None:
        try:
            value = m.password_file.read_text().strip()
        except OSError as exc:
            raise InputError(f"mqtt.password_file {m.password_file} cannot be read: {exc.strerror or exc}") from None
        protect(value)
        return value
    return m.password.get_secret_value() if m.password is not None else None


def explain(exc: BaseException, host: str, port: int, tls: bool) -> str:
    """One line saying why a connection attempt failed, with the likely fix."""
    where = f"{host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate at {where} was rejected ({exc.verify_message}); check mqtt.ca_file"
    if isinstance(exc, ssl.SSLError):
        text = str(exc)
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
            return f"TLS: {where} does not speak TLS (plain MQTT port?); set mqtt.tls = false or use the TLS port"
        return f"TLS handshake with {where} failed: {exc.reason or text}"
    if tls and isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLEOFError)):
        return f"TLS: {where} dropped the TLS handshake (plain MQTT port?); set mqtt.tls = false or use the TLS port"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve broker host {host!r}: {exc.strerror or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return f"broker {where} refused the connection (nothing listening there?)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"broker {where} did not answer in time (unreachable or filtered)"
    if isinstance(exc, OSError):
        return f"cannot reach broker {where}: {exc.strerror or exc}"
    return f"connecting to {where} failed: {type(exc).__name__}: {exc}"


def configure(client: mqtt.Client, opts: MqttSettings) -> bool:
    """Credentials and TLS from the settings on a paho client; True when TLS is on."""
    if opts.username is not None:
        client.username_pw_set(opts.username, password_of(opts))
    tls = opts.tls or opts.ca_file is not None
    if tls:
        try:
            client.tls_set(
                ca_certs=str(opts.ca_file) if opts.ca_file else None,
                certfile=str(opts.cert_file) if opts.cert_file else None,
                keyfile=str(opts.key_file) if opts.key_file else None,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise InputError(f"mqtt TLS files cannot be used: {exc}") from None
    return tls


def tool_client(opts: MqttSettings, name: str) -> mqtt.Client:
    """A connected client for a command-line tool (publish, fleet), with the devices' TLS and credentials.

    Connection failures are one line saying why (EdgeError)."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{os.getpid()}-{int(time.time() * 1000) % 100000}",
        protocol=mqtt.MQTTv5,
    )
    tls = configure(client, opts)
    refused: list[str] = []
    ready = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        ready.set()

    client.on_connect = on_connect
    try:
        client.connect(opts.host, opts.port, keepalive=30)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise EdgeError(explain(exc, opts.host, opts.port, tls)) from None
    client.loop_start()
    if not ready.wait(2.0):  # a broker answers at once; say what is being waited for before waiting longer
        log.warning("waiting for %s:%d to answer as an MQTT broker (up to 10 s)…", opts.host, opts.port)
    if not ready.wait(8.0) or refused:
        client.loop_stop()
        why = refused[0] if refused else "no MQTT answer (CONNACK) within 10 s: is it an MQTT broker, and TLS or not?"
        raise EdgeError(f"broker {opts.host}:{opts.port} refused the connection: {why}")
    return client


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
        self.opts = opts
        self.topics = topics
        self.outbox = outbox
        self.stop_event = stop
        self.connected = threading.Event()
        self.last_error: str | None = None
        self.published = 0
        self.refused = 0  # events the broker refused (failure PUBACK): kept in the outbox
        self.ack_failures = 0  # PUBACKs whose outbox delete failed (retried)
        self._network_worker = network
        self._pump_worker = pump
        self._acks: queue.SimpleQueue[tuple[int, bool, str]] = queue.SimpleQueue()
        self._unstored_acks: list[int] = []  # outbox seqs acknowledged but not yet deleted (disk trouble)
        self._wake = threading.Event()
        self._closing = threading.Event()  # set by close(): the network thread may end
        self._progress = threading.Condition()  # notified after every pump round
        self._inflight: dict[int, int] = {}  # paho mid → outbox seq (pump thread only)
        self._cursor = 0  # highest outbox seq handed to paho in this process
        self._subscriptions: dict[str, int] = {}
        self._got_connack = False
        self._logged_at = 0.0
        self._flaps = 0
        self._connected_at = 0.0
        self._accepted = False  # the current connection was accepted (CONNACK success)
        self._handlers: list[tuple[str, Callable[[str, bytes, bool], None]]] = []
        self._on_connect_actions: list[Callable[[], None]] = []
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=topics.device_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # this link reconnects itself, to know and say why
        )
        offline = Status(device_id=topics.device_id, state="offline", ts=None, lost=True, version=__version__).to_json()
        client.will_set(topics.status, offline, qos=1, retain=True)
        self.tls = configure(client, opts)
        client.max_inflight_messages_set(opts.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self.client = client
        self.connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # The whole bundle plus topic and framing; MQTT's own ceiling is 256 MiB.
        self.connect_properties.MaximumPacketSize = min(max_message_bytes + (64 << 10), 268_435_455)
        self._net_thread = threading.Thread(target=self._network_loop, name="mqtt-network", daemon=True)
        self._pump = threading.Thread(target=self._pump_loop, name="mqtt-pump", daemon=True)

    @property
    def in_flight(self) -> int:
        """Outbox rows handed to the MQTT library and not yet acknowledged by the broker (a snapshot)."""
        return len(self._inflight)

    @property
    def threads(self) -> tuple[threading.Thread, threading.Thread]:
        return self._net_thread, self._pump

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._net_thread.start()
        self._pump.start()

    def notify(self) -> None:
        """A new event is in the outbox."""
        self._wake.set()

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds, re-checked after every round of the pump (publishes, acks)."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._progress.wait(min(left, 0.5))
            return True

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (every event acknowledged) or ``timeout``."""
        return self.wait(lambda: self.outbox.depth() == 0, timeout)

    def close(self, final_status: Status | None, timeout: float = 3.0) -> None:
        """Publish the final (offline) status, disconnect cleanly, stop the threads."""
        if final_status is not None and self.connected.is_set():
            info = self.client.publish(self.topics.status, final_status.to_json(), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("the final status was not acknowledged before shutdown")
        self._closing.set()  # before the DISCONNECT: what follows is not a lost connection
        self.client.disconnect()
        self._wake.set()
        self._net_thread.join(timeout)
        self._pump.join(timeout)

    # -- the network thread ----------------------------------------------------
    def _beat(self, worker: Worker | None) -> None:
        if worker is not None:
            worker.beat()

    def _network_loop(self) -> None:
        delay = self.opts.reconnect_min_s
        while not self._closing.is_set():
            self._beat(self._network_worker)
            self._got_connack = self._accepted = False
            try:
                self.client.connect(
                    self.opts.host, self.opts.port, keepalive=self.opts.keepalive, clean_start=True,
                    properties=self.connect_properties,
                )  # fmt: skip
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._failed(explain(exc, self.opts.host, self.opts.port, self.tls), delay)
                delay = min(delay * 2, self.opts.reconnect_max_s)
                continue
            rc = mqtt.MQTT_ERR_SUCCESS
            while rc == mqtt.MQTT_ERR_SUCCESS:
                self._beat(self._network_worker)
                try:
                    rc = self.client.loop(timeout=0.5)
                except Exception as exc:  # a callback bug must not end the network thread silently
                    log.exception("mqtt loop failed")
                    self.last_error = f"mqtt loop failed: {type(exc).__name__}: {exc}"
                    break
            self.connected.clear()
            if self._closing.is_set():
                break
            if self._accepted:
                delay = self.opts.reconnect_min_s
                self._note_flap(time.monotonic() - self._connected_at)
            elif not self._got_connack and self.last_error is None:
                self.last_error = (
                    f"broker {self.opts.host}:{self.opts.port} closed the connection before accepting it "
                    f"({'is the port TLS?' if not self.tls else 'wrong port or protocol?'})"
                )
                log.error("mqtt: %s", self.last_error)
            self._sleep(delay)
            delay = min(delay * 2, self.opts.reconnect_max_s)
        if self._network_worker is not None:
            self._network_worker.done("stopped")

    def _note_flap(self, lasted: float) -> None:
        """Brokers without MQTT v5 'session taken over' just drop the older connection of two clients
        with the same id: the sign is connections dropped moments after they are accepted, in a row."""
        self._flaps = self._flaps + 1 if lasted < FLAP_SECONDS else 0
        if self._flaps == FLAPS or (self._flaps > FLAPS and self._flaps % 20 == 0):
            self.last_error = (
                f"the broker dropped {self._flaps} connections in a row moments after accepting them: "
                f"another client is probably connected as {self.topics.device_id!r} (two devices share "
                "device.id, or a second instance is running); give each device its own device.id"
            )
            log.error("mqtt: %s", self.last_error)

    def _failed(self, reason: str, delay: float) -> None:
        """Log a failed attempt: at once when the reason is new, then at most once a minute."""
        now = time.monotonic()
        if reason != self.last_error:
            log.error("mqtt: %s; retrying in %.0fs", reason, delay)
            self._logged_at = now
        elif now - self._logged_at >= 60:
            log.warning("mqtt: still failing: %s; retrying in %.0fs", reason, delay)
            self._logged_at = now
        self.last_error = reason
        self._sleep(delay)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing.is_set() and time.monotonic() < deadline:
            self._beat(self._network_worker)
            self._closing.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    # -- publishing ------------------------------------------------------------
    def publish_status(self, status: Status) -> None:
        if self.connected.is_set():
            self.client.publish(self.topics.status, status.to_json(), qos=1, retain=True)

    def publish_retained(self, topic: str, payload: bytes, qos: int = 1) -> None:
        if self.connected.is_set():
            self.client.publish(topic, payload, qos=qos, retain=True)

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        if self.connected.is_set():
            self.client.publish(topic, payload, qos=qos, retain=False)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscriptions[topic] = qos
        if self.connected.is_set():
            self.client.subscribe(topic, qos)

    def listen(self, topic_filter: str, handler: Callable[[str, bytes, bool], None], qos: int = 1) -> None:
        """Subscribe (now and after every reconnect) and hand matching messages to ``handler``
        (topic, payload, retained), on the network thread: it must return quickly."""
        self._handlers.append((topic_filter, handler))
        self.subscribe(topic_filter, qos)

    def when_connected(self, action: Callable[[], None]) -> None:
        """Run ``action`` after every successful (re)connection, on the network thread."""
        self._on_connect_actions.append(action)

    def _pump_loop(self) -> None:
        while True:
            self._beat(self._pump_worker)
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._pump_once()
            except Exception as exc:  # e.g. the outbox failing to read: report, keep pumping
                self.last_error = f"outbox pump: {exc}"
                log.exception("mqtt pump: %s", exc)
                self.stop_event.wait(1.0)
            with self._progress:
                self._progress.notify_all()
            if self._closing.is_set() or (self.stop_event.is_set() and not self.connected.is_set()):
                break
        if self._pump_worker is not None:
            self._pump_worker.done("stopped")

    def _pump_once(self) -> None:
        self._take_acks()
        if not self.connected.is_set():
            return
        room = self.opts.max_inflight * 5 - len(self._inflight)
        if room <= 0:
            return
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
                mid, ok, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue
            if ok:
                self._unstored_acks.append(seq)
                self.published += 1
            else:
                self.refused += 1
                self.last_error = f"broker refused event (outbox row {seq}): {reason}"
                log.error("mqtt: %s; kept in the outbox, sent again at the next start", self.last_error)
        while self._unstored_acks:
            try:
                self.outbox.ack(self._unstored_acks[0])
            except EdgeError as exc:  # disk full or I/O error: keep the ack, retry on the next round
                self.ack_failures += 1
                self.last_error = str(exc)
                if self.ack_failures == 1 or self.ack_failures % 100 == 0:
                    log.error("%s (%d acknowledged event(s) waiting to be removed)", exc, len(self._unstored_acks))
                return
            self._unstored_acks.pop(0)

    # -- paho callbacks (network thread) ----------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._got_connack = True
        if reason.is_failure:
            hint = {
                "Bad user name or password": "check mqtt.username and the password",
                "Not authorized": "check the broker's access rules for this user",
                "Client identifier not valid": "check device.id",
            }.get(str(reason), "")
            refused = f"broker refused the connection: {reason}{'; ' + hint if hint else ''}"
            now = time.monotonic()
            if refused != self.last_error:  # said once, with the retry; then at most once a minute
                log.error("mqtt %s:%d: %s; retrying, at least every %.0fs", self.opts.host, self.opts.port, refused,
                          self.opts.reconnect_max_s)  # fmt: skip
                self._logged_at = now
            elif now - self._logged_at >= 60:
                log.warning("mqtt %s:%d: still refused: %s", self.opts.host, self.opts.port, refused)
                self._logged_at = now
            self.last_error = refused
            return
        self.last_error = None
        self._connected_at = time.monotonic()
        self._accepted = True
        self.connected.set()
        log.info("mqtt connected to %s:%d as %s", self.opts.host, self.opts.port, self.topics.device_id)
        for topic, qos in self._subscriptions.items():
            client.subscribe(topic, qos)
        for action in self._on_connect_actions:
            try:
                action()
            except Exception:
                log.exception("mqtt: an on-connect action failed")
        self._wake.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self._closing.is_set():
            return
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER:
            self.last_error = (
                f"another client connected as {self.topics.device_id!r} and took this session over: "
                "two devices share device.id (give each its own), or a second instance is running"
            )
            log.error("mqtt: %s", self.last_error)
            self._flaps = FLAPS  # already said
        elif was:
            self.last_error = f"disconnected: {reason}"
            log.warning("mqtt disconnected (%s); reconnecting with back-off", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        failed = bool(getattr(reason, "is_failure", False))
        self._acks.put((mid, not failed, str(reason)))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
        for topic_filter, handler in self._handlers:
            if not mqtt.topic_matches_sub(topic_filter, msg.topic):
                continue
            try:
                handler(msg.topic, payload, bool(msg.retain))
            except Exception:
                log.exception("mqtt: message on %s could not be handled", msg.topic)
