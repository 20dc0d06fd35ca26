"""Test helpers that wait on conditions, never on sleep.

Each collects what arrives (MQTT messages, log records, lines of a child
process's stderr) under a Condition and wakes waiters on every arrival, so a test
says what it waits for and how long it may take.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion


class Waitable:
    def __init__(self) -> None:
        self._cond = threading.Condition()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_until(self, pred: Callable[[], bool], timeout: float) -> bool:
        """True as soon as ``pred()`` holds (re-checked at every arrival), False after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            return True


class Collector(Waitable):
    """An MQTT client that keeps every message of some topics (JSON-decoded when it can)."""

    def __init__(
        self, host: str, port: int, *topics: str, client_id: str = "", clean: bool = True, ca: Path | None = None
    ) -> None:
        """``ca``: the broker is TLS, with this CA pinned (default: the CA the test gave its devices,
        ``EDGE_MQTT__CA_FILE``, when it set one)."""
        super().__init__()
        ca = (
            ca
            if ca is not None
            else (Path(os.environ["EDGE_MQTT__CA_FILE"]) if os.environ.get("EDGE_MQTT__CA_FILE") else None)
        )
        self.messages: list[tuple[str, Any, bool]] = []
        self.topics = topics
        self.connected = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"collector-{id(self)}",
            clean_session=clean,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.connected.wait(10), "collector could not connect"

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        for t in self.topics:
            c.subscribe(t, 1)
        self.connected.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body: Any = json.loads(msg.payload)
        except ValueError:
            body = bytes(msg.payload)
        with self._cond:
            self.messages.append((msg.topic, body, bool(msg.retain)))
            self._cond.notify_all()

    def on(self, topic_part: str) -> list[Any]:
        with self._cond:
            return [b for t, b, _ in self.messages if topic_part in t]

    def wait_for(self, topic_part: str, pred: Callable[[Any], bool] = lambda b: True, timeout: float = 20) -> Any:
        """The first message on a topic containing ``topic_part`` that satisfies ``pred``."""
        found: list[Any] = []

        def check() -> bool:
            found[:] = [b for b in self.on(topic_part) if pred(b)]
            return bool(found)

        assert self.wait_until(check, timeout), f"nothing on *{topic_part}* matched; got {self.on(topic_part)[-3:]}"
        return found[0]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class LogWatch(logging.Handler, Waitable):
    """Captures log records of the process (every logger) and wakes waiters."""

    def __init__(self) -> None:
        logging.Handler.__init__(self, logging.DEBUG)
        Waitable.__init__(self)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")
            self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20) -> str:
        rx = re.compile(pattern)
        assert self.wait_until(lambda: rx.search(self.text()) is not None, timeout), (
            f"no log line matched {pattern!r}; last: {self.lines[-5:]}"
        )
        m = rx.search(self.text())
        assert m is not None
        return m.group(0)


@contextmanager
def watching_logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    root = logging.getLogger()
    old = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        root.removeHandler(watch)
        root.setLevel(old)


class Service(Waitable):
    """``edge run`` as a real process; its stderr read by a thread, waitable line by line."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, prefix: list[str] | None = None) -> None:
        super().__init__()
        self.lines: list[str] = []
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "edge.cli", "run", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        self._notify()

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60, count: int = 1) -> list[str]:
        rx = re.compile(pattern)

        def enough() -> bool:
            return len(rx.findall(self.text())) >= count or self.proc.poll() is not None

        self.wait_until(enough, timeout)
        found = rx.findall(self.text())
        assert len(found) >= count, f"{pattern!r} seen {len(found)}x (wanted {count}); log tail:\n{self.text()[-3000:]}"
        return found

    def stop(self, sig: int = 15, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def wait_exit(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc


def write_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG of ``width`` × ``height`` black pixels, written without decoding a buffer of that size
    (rows compressed one by one): a decompression bomb when large."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" + bytes(width * 3)
    body = b"".join(comp.compress(row) for _ in range(min(height, 64)))
    if height > 64:
        body += comp.compress(row * 0)  # the rest is declared but absent: the header is what matters
    body += comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def device_key(state_dir: Path) -> Any:
    """The device key a device started on ``state_dir`` will use (made now, as its first start would)."""
    from edge.device.keys import ensure_key

    return ensure_key(state_dir)[0]


def sealed_for(
    state_dirs: list[Path],
    identities: list[Any],
    gallery: str,
    version: int,
    sha: str,
    key: Any,
    kind: str = "full",
    dtype: str = "float16",
) -> bytes:
    """A bundle sealed to the devices of these state directories (their keys made if missing)."""
    from edge.gallery.sealed import seal

    recipients = [device_key(d).public for d in state_dirs]
    return seal(identities, gallery, version, sha, key, recipients, kind, dtype)  # type: ignore[arg-type]


# -- a throwaway PKI (the TLS tests' CA, server certificates valid and expired, another CA) -------------
def _cert(
    subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, days: tuple[int, int], ca: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.timezone.utc)
    issuer_name, issuer_key = issuer if issuer else (name, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256()), key


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )


def certificates(folder: Path) -> Path:
    """ca.pem, server.pem/key (valid), expired.pem/key (ended yesterday), client.pem/key (a device's, for
    mutual TLS), other-ca.pem: a throwaway PKI."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _cert("edge-test-ca", None, (-1, 2), ca=True)
    _write(folder, "ca", ca, ca_key)
    _write(folder, "server", *_cert("127.0.0.1", (ca.subject, ca_key), (-1, 2)))
    _write(folder, "expired", *_cert("127.0.0.1", (ca.subject, ca_key), (-3, -1)))
    _write(folder, "client", *_cert("door", (ca.subject, ca_key), (-1, 2)))
    _write(folder, "other-ca", *_cert("another-ca", None, (-1, 2), ca=True))
    return folder
