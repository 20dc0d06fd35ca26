#!/usr/bin/env python3
"""Capture what a real device publishes for Home Assistant, for tests/ha/test_discovery.py.

Runs with the project's own environment: a real Mosquitto on a free loopback port,
the real service (``edge run``) following a gallery over the air, with two cameras: the
front door playing the demo clip (four enrolled people, four strangers) and a yard camera
that is missing; and a recorder subscribed to ``#`` with
MQTT v5's *retain as published*, so each message keeps the retain flag the device
set. The scenario, in order: gallery v1 (4 identities) applied; the clip plays
(match events, presence ON); nobody in view (presence OFF after its timeout);
Home Assistant announces itself (discovery again); gallery v2 without one
identity (its entity removed); a clean stop (status offline).

    .venv/bin/python tests/ha/capture.py OUT.json

The file lists every message the device published (topic, payload as text,
retain) and the phase it belongs to.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge.cli import main as edge_cli  # noqa: E402
from edge.demo.assets import build_assets  # noqa: E402
from edge.demo.broker import LocalBroker  # noqa: E402
from edge.device.keys import ensure_key, public_line  # noqa: E402

DEVICE = "ha-cam"
REMOVED = "Jean_Chretien"


class Recorder:
    def __init__(self, broker: LocalBroker) -> None:
        self.messages: list[dict[str, object]] = []
        self.phase = "start"
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="recorder", protocol=mqtt.MQTTv5
        )
        ready = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (
            c.subscribe("#", options=SubscribeOptions(qos=1, retainAsPublished=True)),
            ready.set(),
        )
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert ready.wait(10)

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        mine = topic.startswith(("homeassistant/event/", "homeassistant/binary_sensor/", "homeassistant/sensor/")) or (
            topic.startswith(f"edge/{DEVICE}/") and "/gallery/set" not in topic
        )
        if not mine:
            return
        with self.cond:
            self.messages.append(
                {"phase": self.phase, "topic": topic, "payload": msg.payload.decode(), "retain": bool(msg.retain)}
            )
            self.cond.notify_all()

    def wait(self, what: str, pred: object, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.messages):  # type: ignore[operator]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"capture: timed out waiting for {what}")
                self.cond.wait(min(left, 1.0))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def count(messages: list[dict[str, object]], pred: object) -> int:
    return sum(1 for m in messages if pred(m))  # type: ignore[operator]


def presence(m: dict[str, object], state: str) -> bool:
    return "/presence/" in str(m["topic"]) and f'"state": "{state}"' in str(m["payload"])


def edge(args: list[str]) -> int:
    """An edge command whose own output (keys, the enrolment report) stays out of the test run's; shown only
    when it fails."""
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        code = edge_cli(args)
    if code != 0:
        print(said.getvalue(), file=sys.stderr)
    return code


def main(out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="edge-ha-capture-"))
    try:
        faces = ROOT / "tests" / "fixtures" / "faces"
        assets = build_assets(faces, work / "demo")
        key = work / "owner.pem"
        assert edge(["gallery", "keygen", "--out", str(key)]) == 0
        v1, v2 = work / "v1.bundle", work / "v2.bundle"
        # The device's key, made as its first start would: the galleries are sealed to it.
        device = public_line(ensure_key(work / "state")[0].public)
        assert (
            edge(
                [
                    "enroll",
                    str(assets.gallery),
                    "--out",
                    str(v1),
                    "--key",
                    str(key),
                    "--gallery-name",
                    "lobby",
                    "--version",
                    "1",
                    "--recipient",
                    device,
                ]
            )
            == 0
        )
        smaller = work / "gallery-v2"
        shutil.copytree(assets.gallery, smaller)
        shutil.rmtree(smaller / REMOVED)
        assert (
            edge(
                [
                    "enroll",
                    str(smaller),
                    "--out",
                    str(v2),
                    "--key",
                    str(key),
                    "--gallery-name",
                    "lobby",
                    "--version",
                    "2",
                    "--recipient",
                    device,
                ]
            )
            == 0
        )
        with LocalBroker() as broker:
            rec = Recorder(broker)
            rec.publish("edge/galleries/lobby", v1.read_bytes(), retain=True)
            env = {
                **os.environ,
                "EDGE_HOMEASSISTANT__PRESENCE_TIMEOUT_S": "3",
                "EDGE_MQTT__HEARTBEAT_S": "1",
                "EDGE_HOMEASSISTANT__DEVICE_NAME": "Front door",
                "EDGE_HOMEASSISTANT__PER_PERSON": "true",
            }
            # Two cameras: the front door plays the clip, the yard camera is missing (its entity stays quiet).
            config = work / "edge.toml"
            config.write_text(
                f"[[cameras]]\nid = 'door'\nsource = '{assets.clip}'\n"
                "[[cameras]]\nid = 'yard'\nsource = '/dev/video99'\n"
            )
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge.cli",
                    "run",
                    "--config",
                    str(config),
                    "--device-id",
                    DEVICE,
                    "--state-dir",
                    str(work / "state"),
                    "--gallery-name",
                    "lobby",
                    "--trusted-key",
                    f"{key}.pub",
                    "--broker",
                    f"{broker.host}:{broker.port}",
                ],
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                rec.phase = "clip"
                rec.wait(
                    "a match event for every enrolled person",
                    lambda ms: count(ms, lambda m: m["topic"].endswith("/events/match")) >= 4,
                )
                rec.wait(
                    "presence OFF for everyone after the timeout",
                    lambda ms: (
                        count(
                            ms,
                            lambda m: (
                                presence(m, "OFF") and m["phase"] == "clip" and '"last_seen": null' not in m["payload"]
                            ),
                        )
                        >= 4
                    ),
                )
                rec.wait("a heartbeat after the clip", lambda ms: ms[-1]["topic"].endswith("/status"))
                rec.phase = "birth"
                seen = len(rec.messages)
                rec.publish("homeassistant/status", b"online")
                rec.wait(
                    "discovery published again",
                    lambda ms: count(ms[seen:], lambda m: m["topic"].endswith("face_match/config")) >= 1,
                )
                rec.phase = "gallery v2"
                rec.publish("edge/galleries/lobby", v2.read_bytes(), retain=True)
                rec.wait(
                    "the removed identity's entity removed",
                    lambda ms: any(
                        m["topic"].endswith(f"presence_{REMOVED}/config") and m["payload"] == "" for m in ms
                    ),
                )
                rec.wait(
                    "a heartbeat with gallery v2",
                    lambda ms: any(
                        m["topic"].endswith("/status") and '"gallery_version":2' in m["payload"] for m in ms
                    ),
                )
                rec.phase = "stop"
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(30) == 0, (proc.stderr.read() if proc.stderr else "")[-2000:]
                rec.wait("the final offline status", lambda ms: '"state":"offline"' in str(ms[-1]["payload"]))
            finally:
                if proc.poll() is None:
                    proc.kill()
            rec.client.loop_stop()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "device_id": DEVICE,
                    "removed": REMOVED,
                    "enrolled": list(assets.enrolled),
                    "cameras": ["door", "yard"],
                    "messages": rec.messages,
                },
                indent=1,
            )
        )
        print(f"capture: {len(rec.messages)} messages the device published -> {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "ha-capture.json")
