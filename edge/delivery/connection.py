"""The connection to the broker (paho-mqtt 2.x, MQTT v5): credentials and TLS, the last will,
(re)connection with exponential back-off and the reason of every failure.

The connection runs its own network thread: it connects (TCP, TLS, CONNECT), runs paho's loop while
connected, and reconnects with back-off. Because it makes each attempt itself, every failure is logged
with its cause (refused, unreachable, certificate rejected, the port not speaking TLS, bad credentials)
and kept as ``last_error`` for the status, instead of being retried in silence: said once, then at most
once a minute. With MQTT v5 the broker says why it dropped the connection; "session taken over" means
another client uses this device id, which is logged as such (and so are connections dropped moments
after they were accepted, the sign of the same on brokers that do not say it).

The CONNECT carries a Maximum Packet Size, so the broker never sends this device a message larger
than it accepts: size is checked before anything is buffered here.
"""

from __future__ import annotations

import logging
import os
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

from edge.device.logs import protect
from edge.device.settings import MqttSettings
from edge.device.supervisor import Worker
from edge.errors import EdgeError, InputError

log = logging.getLogger(__name__)
SESSION_TAKEN_OVER = 142
FLAP_SECONDS = 20.0  # a connection the broker drops this soon after accepting it counts as a flap
FLAPS = 3  # that many in a row: another client is almost surely using this client id
REFUSAL_HINTS = {
    "Bad user name or password": "check mqtt.username and the password",
    "Not authorized": "check the broker's access rules for this user",
    "Client identifier not valid": "check device.id",
}


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
        # ``reason`` is set by OpenSSL's errors; an SSLError raised by Python code has none.
        return f"TLS handshake with {where} failed: {getattr(exc, 'reason', None) or text}"
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


def closed_before_connack(tls: bool) -> str:
    """Why a broker may close a connection before answering CONNECT, with the likely fix."""
    hint = (
        "does it require a client certificate (mqtt.cert_file)? wrong port or protocol?" if tls else "is the port TLS?"
    )
    return f"it closed the connection before accepting it ({hint})"


def tool_client(opts: MqttSettings, name: str, answer_within: float = 10.0) -> mqtt.Client:
    """A connected client for a command-line tool (publish, fleet), with the devices' TLS and credentials.

    Connection failures are one line saying why (EdgeError); a broker that has not answered the CONNECT
    within ``answer_within`` seconds is one too (said after 2 s that it is being waited for)."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{name}-{os.getpid()}-{int(time.time() * 1000) % 100000}",  # pragma: no mutate (a unique suffix)
        protocol=mqtt.MQTTv5,
    )
    tls = configure(client, opts)
    refused: list[str] = []
    ready = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        if reason.is_failure:
            refused.append(str(reason))
        ready.set()

    def on_disconnect(c: mqtt.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        if not ready.is_set():  # closed before any CONNACK: say so now, not after waiting 10 s
            refused.append(closed_before_connack(tls))
            ready.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(opts.host, opts.port, keepalive=30)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise EdgeError(explain(exc, opts.host, opts.port, tls)) from None
    client.loop_start()
    first = min(2.0, answer_within)
    if not ready.wait(first):  # a broker answers at once; say what is being waited for before waiting longer
        log.warning("waiting for %s:%d to answer as an MQTT broker (up to %g s)…", opts.host, opts.port, answer_within)
    if not ready.wait(answer_within - first) or refused:
        client.loop_stop()
        why = (
            refused[0]
            if refused
            else (f"no MQTT answer (CONNACK) within {answer_within:g} s: is it an MQTT broker, and TLS or not?")
        )
        raise EdgeError(f"broker {opts.host}:{opts.port} refused the connection: {why}")
    return client


@dataclass(frozen=True, slots=True)
class ConnectionHealth:
    """A snapshot of the connection's own health."""

    connected: bool
    problem: str | None


class Connection:
    """One client id's session with the broker, kept up by a network thread of its own."""

    def __init__(
        self,
        opts: MqttSettings,
        client_id: str,
        will: tuple[str, bytes],
        max_message_bytes: int = 64 << 20,
        worker: Worker | None = None,
    ) -> None:
        self.opts = opts
        self.client_id = client_id
        self.worker = worker
        self.connected = threading.Event()
        self.closing = threading.Event()  # set by close(): what follows is not a lost connection
        self.last_error: str | None = None
        self._actions: list[Callable[[], object]] = []
        self._got_connack = False
        self._logged_at = 0.0
        self._flaps = 0
        self._connected_at = 0.0
        self._accepted = False  # the current connection was accepted (CONNACK success)
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # this connection reconnects itself, to know and say why
        )
        client.will_set(will[0], will[1], qos=1, retain=True)
        self.tls = configure(client, opts)
        client.max_inflight_messages_set(opts.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self.client = client
        self.connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # The whole bundle plus topic and framing; MQTT's own ceiling is 256 MiB.
        self.connect_properties.MaximumPacketSize = min(max_message_bytes + (64 << 10), 268_435_455)
        self.thread = threading.Thread(target=self.run, name="mqtt-network", daemon=True)

    def health(self) -> ConnectionHealth:
        return ConnectionHealth(self.connected.is_set(), self.last_error)

    def when_connected(self, action: Callable[[], object]) -> None:
        """Run ``action`` after every accepted (re)connection, on the network thread, in the order added."""
        self._actions.append(action)

    def send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Publish when connected (status, retained state): what is sent while down is sent again on connect."""
        if self.connected.is_set():
            self.client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic: str, qos: int) -> None:
        if self.connected.is_set():
            self.client.subscribe(topic, qos)

    def close(self, timeout: float) -> None:
        self.closing.set()  # before the DISCONNECT: what follows is not a lost connection
        self.client.disconnect()
        if self.thread.ident is not None:
            self.thread.join(timeout)

    # -- the network thread ----------------------------------------------------
    def _beat(self) -> None:
        if self.worker is not None:
            self.worker.beat()

    def run(self) -> None:
        delay = self.opts.reconnect_min_s
        while not self.closing.is_set():
            delay = self.attempt(delay)
        if self.worker is not None:
            self.worker.done("stopped")

    def next_delay(self, delay: float) -> float:
        """The back-off after a wait of ``delay``: doubled, at most ``reconnect_max_s``."""
        return min(delay * 2, self.opts.reconnect_max_s)

    def attempt(self, delay: float) -> float:
        """One connection: connect, serve it until it ends, then wait ``delay`` (at once again after a
        connection that was accepted: the back-off starts over). Returns the next back-off."""
        self._beat()
        self._got_connack = self._accepted = False
        try:
            self.client.connect(
                self.opts.host,
                self.opts.port,
                keepalive=self.opts.keepalive,
                clean_start=True,
                properties=self.connect_properties,
            )
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.failed(explain(exc, self.opts.host, self.opts.port, self.tls), delay)
            return self.next_delay(delay)
        self.serve()
        if self.closing.is_set():
            return delay
        if self._accepted:
            delay = self.opts.reconnect_min_s
            self.note_flap(time.monotonic() - self._connected_at)
        elif not self._got_connack and self.last_error is None:
            self.last_error = f"broker {self.opts.host}:{self.opts.port}: {closed_before_connack(self.tls)}"
            log.error("mqtt: %s", self.last_error)
        self._sleep(delay)
        return self.next_delay(delay)

    def serve(self) -> None:
        """paho's loop on a connection until it ends (or a callback fails, which is said, not swallowed)."""
        rc = mqtt.MQTT_ERR_SUCCESS
        while rc == mqtt.MQTT_ERR_SUCCESS:
            self._beat()
            try:
                rc = self.client.loop(timeout=0.5)  # pragma: no mutate (a poll interval: any value serves)
            except Exception as exc:  # a callback bug must not end the network thread silently
                log.exception("mqtt loop failed")
                self.last_error = f"mqtt loop failed: {type(exc).__name__}: {exc}"
                break
        self.connected.clear()

    def note_flap(self, lasted: float) -> None:
        """Brokers without MQTT v5 'session taken over' just drop the older connection of two clients
        with the same id: the sign is connections dropped moments after they are accepted, in a row."""
        self._flaps = self._flaps + 1 if lasted < FLAP_SECONDS else 0
        if self._flaps == FLAPS or (self._flaps > FLAPS and self._flaps % 20 == 0):
            self.last_error = (
                f"the broker dropped {self._flaps} connections in a row moments after accepting them: "
                f"another client is probably connected as {self.client_id!r} (two devices share "
                "device.id, or a second instance is running); give each device its own device.id"
            )
            log.error("mqtt: %s", self.last_error)

    def failed(self, reason: str, delay: float) -> None:
        """Log a failed attempt: at once when the reason is new, then at most once a minute; then wait."""
        self._say(reason, f"{reason}; retrying in {delay:.0f}s", f"still failing: {reason}; retrying in {delay:.0f}s")
        self._sleep(delay)

    def _say(self, reason: str, first: str, again: str) -> None:
        now = time.monotonic()
        if reason != self.last_error:
            log.error("mqtt: %s", first)
            self._logged_at = now
        elif now - self._logged_at >= 60:
            log.warning("mqtt: %s", again)
            self._logged_at = now
        self.last_error = reason

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.closing.is_set() and time.monotonic() < deadline:
            self._beat()
            self.closing.wait(min(1.0, max(0.0, deadline - time.monotonic())))  # pragma: no mutate (a poll interval)

    # -- paho callbacks (network thread) ----------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._got_connack = True
        if reason.is_failure:
            self.refused(str(reason))
            return
        self.last_error = None
        self._connected_at = time.monotonic()
        self._accepted = True
        self.connected.set()
        log.info("mqtt connected to %s:%d as %s", self.opts.host, self.opts.port, self.client_id)
        for action in self._actions:
            try:
                action()
            except Exception:
                log.exception("mqtt: an on-connect action failed")

    def refused(self, reason: str) -> None:
        """The broker answered CONNECT with a failure: said once with the retry, then at most once a minute."""
        hint = REFUSAL_HINTS.get(reason, "")
        refused = f"broker refused the connection: {reason}{'; ' + hint if hint else ''}"
        where = f"{self.opts.host}:{self.opts.port}"
        self._say(
            refused,
            f"{where}: {refused}; retrying, at least every {self.opts.reconnect_max_s:.0f}s",
            f"{where}: still refused: {refused}",
        )

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        if self.closing.is_set():
            return
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER:
            self.last_error = (
                f"another client connected as {self.client_id!r} and took this session over: "
                "two devices share device.id (give each its own), or a second instance is running"
            )
            log.error("mqtt: %s", self.last_error)
            self._flaps = FLAPS  # already said
        elif was:
            self.last_error = f"disconnected: {reason}"
            log.warning("mqtt disconnected (%s); reconnecting with back-off", reason)
