"""The shipped broker configuration (deploy/mosquitto/edge.conf) with the ACL 'edge fleet acl' writes, run by
a real Mosquitto over TLS: anonymous clients are refused, a device can neither read another device's topics
nor publish as it, only the publisher writes galleries, and a device runs end to end with its CA pinned.
A wrong CA, an expired server certificate and a refused password are each one line and a retry."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.cli import main
from edge.demo.broker import LocalBroker, free_port
from edge.device.keys import public_line

from .support import Waitable, certificates, device_key
from .test_service_e2e import DemoAssets, assets, service  # noqa: F401

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
PASSWORDS = {"door": "door-pw-1", "yard": "yard-pw-2", "publisher": "pub-pw-3", "homeassistant": "ha-pw-4"}


def shipped_broker(tmp_path: Path, server: str = "server") -> LocalBroker:
    """deploy/mosquitto/edge.conf as shipped, its paths pointed at this test's files."""
    etc = tmp_path / "etc"
    certs = certificates(etc / "certs")
    import shutil
    import subprocess

    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(
            [tool, "-b", *(["-c"] if i == 0 else []), str(etc / "edge.passwd"), user, password],
            check=True,
            capture_output=True,
        )
    assert (
        main(["fleet", "acl", "--device", "door=lobby", "--device", "yard=garden", "--out", str(etc / "edge.acl")]) == 0
    )
    port = free_port()
    conf = (ROOT / "deploy" / "mosquitto" / "edge.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf and "listener 8883\n" in conf
    conf = conf.replace("/etc/mosquitto/certs/server.", f"{certs}/{server}.").replace("/etc/mosquitto/", f"{etc}/")
    conf = conf.replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    return LocalBroker(port=port, config=conf)


class Client(Waitable):
    """A paho client over TLS (the test CA pinned) as one account; keeps what it receives."""

    def __init__(self, b: LocalBroker, ca: Path, user: str | None, *subscribe: str) -> None:
        super().__init__()
        self.got: list[tuple[str, bytes]] = []
        self.connack: Any = None
        self.subscribed = threading.Event()
        self.c = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{id(self)}", protocol=mqtt.MQTTv5
        )
        self.c.tls_set(ca_certs=str(ca))
        if user is not None:
            self.c.username_pw_set(user, PASSWORDS[user])
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        self.c.on_message = self._on_message
        self.topics = subscribe
        self.c.connect(b.host, b.port)
        self.c.loop_start()

    def _on_connect(self, c: mqtt.Client, u: object, f: object, rc: Any, p: object) -> None:
        with self._cond:
            self.connack = rc
            self._cond.notify_all()
        if not rc.is_failure and self.topics:
            c.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.got.append((m.topic, bytes(m.payload)))
            self._cond.notify_all()

    def ready(self) -> Client:
        assert self.wait_until(lambda: self.connack is not None, 10) and not self.connack.is_failure, self.connack
        if self.topics:
            assert self.subscribed.wait(10)
        return self

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def topics_seen(self) -> list[str]:
        with self._cond:
            return [t for t, _ in self.got]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_the_shipped_acl_keeps_devices_apart_and_refuses_anonymous_clients(tmp_path: Path) -> None:
    with shipped_broker(tmp_path) as b:
        ca = tmp_path / "etc" / "certs" / "ca.pem"
        anonymous = Client(b, ca, None)
        assert anonymous.wait_until(lambda: anonymous.connack is not None, 10)
        assert anonymous.connack.is_failure and anonymous.connack.value in (
            134,
            135,
        )  # bad credentials / not authorised
        anonymous.close()
        door = Client(b, ca, "door", "edge/yard/#", "edge/galleries/#", "edge/door/gallery/set").ready()
        ha = Client(b, ca, "homeassistant", "edge/+/events/match", "edge/+/status").ready()
        yard = Client(b, ca, "yard").ready()
        publisher = Client(b, ca, "publisher").ready()
        # Reading: what yard publishes and yard's gallery do not reach door; door's own gallery/set does (in
        # order, after them: once it has arrived, the others would have).
        yard.publish("edge/yard/status", b'{"state": "online"}')
        publisher.publish("edge/yard/gallery/set", b"yard's bundle")
        publisher.publish("edge/galleries/garden", b"garden's bundle")
        publisher.publish("edge/galleries/lobby", b"lobby's bundle", retain=True)
        publisher.publish("edge/door/gallery/set", b"door's bundle")
        assert door.wait_until(lambda: "edge/door/gallery/set" in door.topics_seen(), 10)
        assert sorted(door.topics_seen()) == ["edge/door/gallery/set", "edge/galleries/lobby"]
        # Writing: door cannot publish as yard, nor a gallery; its own events reach Home Assistant.
        door.publish("edge/yard/events/match", b'{"identity_id": "forged"}')
        door.publish("edge/galleries/lobby", b"a forged gallery", retain=True)
        door.publish("edge/door/events/match", b'{"identity_id": "real"}')
        assert ha.wait_until(lambda: "edge/door/events/match" in ha.topics_seen(), 10)
        assert "edge/yard/events/match" not in ha.topics_seen()
        check = Client(b, ca, "door", "edge/galleries/lobby").ready()  # the retained lobby gallery is the publisher's
        assert check.wait_until(lambda: bool(check.got), 10) and check.got == [
            ("edge/galleries/lobby", b"lobby's bundle")
        ]
        for c in (door, ha, yard, publisher, check):
            c.close()


def test_a_device_runs_end_to_end_over_tls_with_its_acl_and_bad_credentials_are_one_line_and_a_retry(
    tmp_path: Path,
    assets: DemoAssets,  # noqa: F811
) -> None:
    with shipped_broker(tmp_path) as b:
        etc = tmp_path / "etc"
        ca = etc / "certs" / "ca.pem"
        (tmp_path / "door.pw").write_text(PASSWORDS["door"] + "\n")
        tls = {
            "EDGE_MQTT__CA_FILE": str(ca),
            "EDGE_MQTT__USERNAME": "door",
            "EDGE_MQTT__PASSWORD_FILE": str(tmp_path / "door.pw"),
            "EDGE_TRACKING__COOLDOWN_S": "0",
        }
        owner = tmp_path / "owner.pem"
        assert main(["gallery", "keygen", "--out", str(owner)]) == 0
        state = tmp_path / "door"
        bundle = tmp_path / "lobby.bundle"
        assert (
            main(
                [
                    "enroll",
                    str(assets.gallery),
                    "--out",
                    str(bundle),
                    "--key",
                    str(owner),
                    "--gallery-name",
                    "lobby",
                    "--recipient",
                    public_line(device_key(state).public),
                ]
            )
            == 0
        )
        publisher = Client(b, ca, "publisher").ready()
        publisher.publish("edge/galleries/lobby", bundle.read_bytes(), retain=True)
        ha = Client(b, ca, "homeassistant", "edge/+/events/match", "edge/+/status").ready()
        args = [
            "--source",
            str(assets.clip),
            "--loop",
            "--gallery-name",
            "lobby",
            "--trusted-key",
            f"{owner}.pub",
            "--broker",
            f"127.0.0.1:{b.port}",
        ]
        proc = service(args, state, tls, device="door")
        try:
            assert ha.wait_until(lambda: "edge/door/events/match" in ha.topics_seen(), 90), proc.text()[-3000:]
            assert "refused" not in proc.text() and "Not authorized" not in proc.text()
        finally:
            assert proc.stop() == 0, proc.text()[-2000:]
        publisher.close()
        ha.close()
        # Each mistake: one line naming it, then a retry (the process keeps running, no crash loop).
        (tmp_path / "wrong.pw").write_text("not-the-password\n")
        mistakes = {
            "wrong CA": (
                {**tls, "EDGE_MQTT__CA_FILE": str(etc / "certs" / "other-ca.pem")},
                r"TLS: the broker's certificate at 127\.0\.0\.1:\d+ was rejected .*check mqtt\.ca_file",
            ),
            "refused password": (
                {**tls, "EDGE_MQTT__PASSWORD_FILE": str(tmp_path / "wrong.pw")},
                r"broker refused the connection: (Bad user name or password|Not authorized)[^\n]*",
            ),
        }
        for name, (env, pattern) in mistakes.items():
            before = attempts(b)
            bad = service(
                ["--source", "/dev/video99", "--broker", f"127.0.0.1:{b.port}"], tmp_path / name, env, device="door"
            )
            bad.wait_for(pattern + r".*; retrying")  # said once, with the retry
            assert bad.wait_until(lambda n=before: attempts(b) >= n + 3, 30), name  # and it does retry
            assert bad.proc.poll() is None, name  # still running: retrying, not crashing
            assert bad.stop() == 0, name
            assert len(re.findall(pattern, bad.text())) == 1, name  # one line, not one per attempt
            assert "not-the-password" not in bad.text()
    with shipped_broker(tmp_path / "expired", server="expired") as b:
        bad = service(
            ["--source", "/dev/video99", "--broker", f"127.0.0.1:{b.port}"],
            tmp_path / "exp",
            {**tls, "EDGE_MQTT__CA_FILE": str(tmp_path / "expired" / "etc" / "certs" / "ca.pem")},
            device="door",
        )
        bad.wait_for(
            r"TLS: the broker's certificate at 127\.0\.0\.1:\d+ was rejected \(certificate has expired\)"
            r".*; retrying in"
        )
        assert bad.wait_until(lambda: attempts(b) >= 3, 30)
        assert bad.proc.poll() is None and bad.stop() == 0


def attempts(b: LocalBroker) -> int:
    """Connections the broker has seen (its log says each)."""
    return b.log.read_text().count("New connection from") if b.log.is_file() else 0
