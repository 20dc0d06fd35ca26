"""The device service end to end: ``edge run`` as a real process, a real Mosquitto on a free
loopback port, and independent MQTT clients subscribing like any consumer would."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.demo.assets import DemoAssets, build_assets
from edge.demo.broker import LocalBroker, find_mosquitto
from edge.device.keys import public_line

from .conftest import FACES
from .support import Collector, Service, certificates, device_key

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_mosquitto() is None and not os.environ.get("CI"), reason="mosquitto not installed"),
]
EVENT_LINE = re.compile(r"event ([0-9a-f-]{36}) identity=(\S+)")
PLANTED = "pl4nted-Secr3t"
FAST = {"EDGE_MQTT__RECONNECT_MAX_S": "1", "EDGE_MQTT__HEARTBEAT_S": "1"}


@pytest.fixture()
def broker(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A TLS broker on loopback, as a device should use one: every device, tool and client of the test pins
    its CA (EDGE_MQTT__CA_FILE in the test's environment, which the devices it starts inherit)."""
    certs = certificates(tmp_path_factory.mktemp("pki"))
    monkeypatch.setenv("EDGE_MQTT__CA_FILE", str(certs / "ca.pem"))
    with LocalBroker(tls=(certs / "ca.pem", certs / "server.pem", certs / "server.key")) as b:
        yield b


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    """The demo's gallery folder and clip (read-only: every test uses its own state dir)."""
    return build_assets(FACES, tmp_path_factory.mktemp("demo"))


def service(args: list[str], state: Path, env: dict[str, str] | None = None, device: str = "cam1") -> Service:
    return Service(["--state-dir", str(state), "--device-id", device, *args], {**FAST, **(env or {})})


def logged_events(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in EVENT_LINE.finditer(text)}


def test_only_enrolled_people_produce_events(broker: LocalBroker, assets: DemoAssets, tmp_path: Path) -> None:
    sub = Collector(broker.host, broker.port, "edge/cam1/events/match")
    proc = service(
        [
            "--source",
            str(assets.clip),
            "--gallery",
            str(assets.gallery),
            "--rate",
            "fast",
            "--broker",
            f"{broker.host}:{broker.port}",
            "--exit-at-end",
        ],
        tmp_path,
    )
    assert proc.wait_exit(180) == 0, proc.text()[-2000:]
    logged = logged_events(proc.text())
    assert sub.wait_until(lambda: len(sub.on("events/match")) >= len(logged), 10)
    events = sub.on("events/match")
    sub.close()
    assert {str(e["identity_id"]) for e in events} == set(assets.enrolled), proc.text()[-3000:]
    assert foreign_lines(proc.text()) == []  # a run on a terminal shows only the project's own lines
    assert {str(e["event_id"]) for e in events} == set(logged)
    for e in events:
        assert e["device_id"] == "cam1" and e["schema"] == 1 and e["gallery_version"] == 0
        assert e["score"] >= e["threshold"] and e["evidence"]["agreed"] >= 3
        assert all(0.0 <= v <= 1.0 for v in e["bbox"])


def test_broker_restart_mid_run_loses_nothing(broker: LocalBroker, assets: DemoAssets, tmp_path: Path) -> None:
    sub = Collector(broker.host, broker.port, "edge/+/events/match", client_id="durable-sub", clean=False)
    sub.client.reconnect_delay_set(1, 1)
    proc = service(
        [
            "--source",
            str(assets.clip),
            "--gallery",
            str(assets.gallery),
            "--rate",
            "native",
            "--broker",
            f"{broker.host}:{broker.port}",
            "--exit-at-end",
        ],
        tmp_path,
    )
    proc.wait_for(EVENT_LINE.pattern)  # the first event is out
    broker.stop()
    # The next confirmed event can only wait in the outbox.
    proc.wait_for("mqtt disconnected")
    cut = len(proc.text())
    proc.wait_for(EVENT_LINE.pattern, count=2)
    broker.start()
    assert proc.wait_exit(180) == 0, proc.text()[-2000:]
    text = proc.text()
    logged = logged_events(text)
    assert len(logged) == len(assets.enrolled)
    assert sub.wait_until(lambda: {str(e["event_id"]) for e in sub.on("events/match")} >= set(logged), 20)
    sub.close()
    # At least one event was confirmed while the broker was away (it waited in the outbox).
    waited = EVENT_LINE.search(text, cut)
    assert waited is not None and text.index("mqtt connected", cut) > waited.start()


def test_sigkill_with_pending_events_then_restart_delivers(assets: DemoAssets, tmp_path: Path) -> None:
    with LocalBroker() as offline:
        port = offline.port
    # No broker on that port: events can only pile up in the outbox.
    proc = service(
        [
            "--source",
            str(assets.clip),
            "--gallery",
            str(assets.gallery),
            "--rate",
            "native",
            "--broker",
            f"127.0.0.1:{port}",
            "--loop",
        ],
        tmp_path,
    )
    proc.wait_for(EVENT_LINE.pattern, count=2)
    proc.stop(signal.SIGKILL)
    pending = logged_events(proc.text())
    assert len(pending) >= 2
    with LocalBroker(port=port) as broker:
        sub = Collector(broker.host, broker.port, "edge/cam1/events/match")
        empty = tmp_path / "empty"
        empty.mkdir()
        import cv2
        import numpy as np

        cv2.imwrite(str(empty / "blank.png"), np.zeros((48, 64, 3), np.uint8))
        again = service(["--source", str(empty), "--broker", f"{broker.host}:{port}", "--exit-at-end"], tmp_path)
        assert again.wait_exit(60) == 0, again.text()[-2000:]
        assert sub.wait_until(lambda: {str(e["event_id"]) for e in sub.on("events/match")} >= set(pending), 10)
        sub.close()


def test_malformed_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text("[mqtt]\nport = 99999\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "mqtt.port = 99999" in proc.stderr and "less than or equal to 65535" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


OWN_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) edge[.\w]*: ")


def foreign_lines(text: str) -> list[str]:
    """Lines of a service's stderr that the project did not write (a library's own chatter)."""
    return [line for line in text.splitlines() if line.strip() and not OWN_LINE.match(line)]


@pytest.mark.parametrize("source", ["/dev/video99", "rtsp://127.0.0.1:{port}/stream"], ids=["device", "stream"])
def test_camera_that_cannot_open_is_reported_not_fatal(broker: LocalBroker, tmp_path: Path, source: str) -> None:
    with socket.socket() as s:  # a port with nothing listening: the stream's connection is refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    source = source.format(port=closed)
    status = Collector(broker.host, broker.port, "edge/cam1/status")
    proc = service(["--source", source, "--broker", f"{broker.host}:{broker.port}"], tmp_path)
    status.wait_for("status", lambda s: s.get("camera") == "retrying" and source in str(s.get("camera_error")))
    assert proc.proc.poll() is None
    assert proc.stop() == 0
    status.wait_for("status", lambda s: s["state"] == "offline")  # the clean shutdown says so too
    status.close()
    # Said once by the project, not by OpenCV or FFmpeg on every retry ('[ WARN:0@0.029] global cap.cpp:212 …',
    # '[tcp @ 0x…] Connection … failed'): every line of the run is the project's own.
    assert foreign_lines(proc.text()) == []


def test_last_will_marks_the_device_offline_when_it_dies(broker: LocalBroker, tmp_path: Path) -> None:
    status = Collector(broker.host, broker.port, "edge/cam1/status")
    proc = service(["--source", "/dev/video99", "--broker", f"{broker.host}:{broker.port}"], tmp_path)
    status.wait_for("status", lambda s: s["state"] == "online")
    proc.stop(signal.SIGKILL)
    status.wait_until(lambda: status.on("status")[-1]["state"] == "offline", 10)
    assert status.on("status")[-1]["state"] == "offline" and "last_error" not in status.on("status")[-1]
    status.close()


def test_signed_bundle_gallery_events_carry_its_version(
    broker: LocalBroker, assets: DemoAssets, tmp_path: Path
) -> None:
    from edge.cli import main

    key = tmp_path / "k.pem"
    assert main(["gallery", "keygen", "--out", str(key)]) == 0
    bundle = tmp_path / "g.bundle"
    line = public_line(device_key(tmp_path).public)  # the device's key (its state directory is tmp_path)
    assert (
        main(
            [
                "enroll",
                str(assets.gallery),
                "--out",
                str(bundle),
                "--key",
                str(key),
                "--gallery-name",
                "demo",
                "--version",
                "2",
                "--recipient",
                line,
            ]
        )
        == 0
    )
    sub = Collector(broker.host, broker.port, "edge/cam1/events/match")
    args = [
        "--source",
        str(assets.clip),
        "--gallery",
        str(bundle),
        "--gallery-name",
        "demo",
        "--trusted-key",
        f"{key}.pub",
        "--rate",
        "fast",
        "--broker",
        f"{broker.host}:{broker.port}",
        "--exit-at-end",
    ]
    proc = service(args, tmp_path)
    assert proc.wait_exit(180) == 0, proc.text()[-2000:]
    logged = logged_events(proc.text())
    assert sub.wait_until(lambda: len(sub.on("events/match")) >= len(logged) > 0, 10)
    assert {e["gallery_version"] for e in sub.on("events/match")} == {2}
    assert {str(e["identity_id"]) for e in sub.on("events/match")} == set(assets.enrolled)
    sub.close()
    # A bundle signed by a key the device does not trust stops start-up with a clear error.
    other = tmp_path / "other.pem"
    assert main(["gallery", "keygen", "--out", str(other)]) == 0
    bad = service([*args[:6], "--trusted-key", f"{other}.pub", *args[8:]], tmp_path / "s2")
    assert bad.wait_exit(60) == 2 and "not trusted" in bad.text()
    # A bundle sealed to another device stops start-up naming the step (this device's key is not among them).
    stranger = service(args, tmp_path / "s3")
    assert stranger.wait_exit(60) == 2
    assert "rejected at recipient: this device (key " in stranger.text().strip().splitlines()[-1]


@pytest.mark.parametrize("at_end", [["--exit-at-end"], []], ids=["exit-at-end", "default"])
def test_a_missing_file_source_is_a_configuration_error_at_start(
    broker: LocalBroker, tmp_path: Path, at_end: list[str]
) -> None:
    """A path that does not exist is not retried (a camera or stream is): one line, exit 2, either way."""
    proc = service(
        ["--source", str(tmp_path / "missing.mp4"), "--broker", f"{broker.host}:{broker.port}", *at_end], tmp_path
    )
    assert proc.wait_exit(60) == 2
    assert "missing.mp4: no such file or folder" in proc.text() and "retrying" not in proc.text()


# -- TLS, credentials, secrets -----------------------------------------------------------
def make_ca(folder: Path) -> dict[str, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    p = {
        n: folder / n
        for n in (
            "ca.key",
            "ca.pem",
            "server.key",
            "server.csr",
            "server.pem",
            "client.key",
            "client.csr",
            "client.pem",
            "ext.cnf",
            "other.key",
            "other.pem",
        )
    }
    p["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*a: str) -> None:
        subprocess.run(["openssl", *a], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(p["ca.key"]),
        "-out",
        str(p["ca.pem"]),
        "-days",
        "2",
        "-subj",
        "/CN=edge-test-ca",
    )
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(p["other.key"]),
        "-out",
        str(p["other.pem"]),
        "-days",
        "2",
        "-subj",
        "/CN=another-ca",
    )
    for who, cn in (("server", "127.0.0.1"), ("client", "cam1")):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(p[f"{who}.key"]),
            "-out",
            str(p[f"{who}.csr"]),
            "-subj",
            f"/CN={cn}",
        )
        run(
            "x509",
            "-req",
            "-in",
            str(p[f"{who}.csr"]),
            "-CA",
            str(p["ca.pem"]),
            "-CAkey",
            str(p["ca.key"]),
            "-CAcreateserial",
            "-out",
            str(p[f"{who}.pem"]),
            "-days",
            "2",
            "-extfile",
            str(p["ext.cnf"]),
        )
    return p


needs_openssl = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")


@needs_openssl
def test_tls_with_a_private_ca_and_every_tls_mistake_is_logged(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    with LocalBroker(tls=(ca["ca.pem"], ca["server.pem"], ca["server.key"])) as tls_broker, LocalBroker() as plain:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="tls-sub")
        client.tls_set(ca_certs=str(ca["ca.pem"]))
        got: list[str] = []
        seen = threading.Event()

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            got.append(m.payload.decode())
            if '"online"' in got[-1]:
                seen.set()

        client.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/cam1/status", 1)
        client.on_message = on_message
        client.connect(tls_broker.host, tls_broker.port)
        client.loop_start()
        ok = service(
            ["--source", "/dev/video99", "--broker", f"127.0.0.1:{tls_broker.port}"],
            tmp_path / "a",
            {"EDGE_MQTT__CA_FILE": str(ca["ca.pem"])},
        )
        assert seen.wait(30), ok.text()[-2000:]
        assert ok.stop() == 0
        client.loop_stop()
        mistakes = {
            "wrong CA": (
                {"EDGE_MQTT__CA_FILE": str(ca["other.pem"])},
                tls_broker.port,
                r"TLS: the broker's certificate at 127\.0\.0\.1:\d+ was rejected .*check mqtt\.ca_file",
            ),
            "plain MQTT to the TLS port": (
                {},
                tls_broker.port,
                r"closed the connection before accepting it \(is the port TLS\?\)",
            ),
            "TLS to a plain port": (
                {"EDGE_MQTT__CA_FILE": str(ca["ca.pem"])},
                plain.port,
                r"TLS: 127\.0\.0\.1:\d+ (does not speak TLS|dropped the TLS handshake)",
            ),
        }
        for name, (env, port, pattern) in mistakes.items():
            proc = service(["--source", "/dev/video99", "--broker", f"127.0.0.1:{port}"], tmp_path / name, env)
            proc.wait_for(pattern, timeout=30)
            assert proc.stop() == 0, name
            assert "connected to" not in proc.text(), name
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    down = service(["--source", "/dev/video99", "--broker", f"127.0.0.1:{port}"], tmp_path / "down")
    down.wait_for(rf"broker 127\.0\.0\.1:{port} refused the connection \(nothing listening there\?\); retrying")
    assert down.stop() == 0
    missing = service(["--source", "/dev/video99"], tmp_path / "m", {"EDGE_MQTT__CA_FILE": str(tmp_path / "nope.pem")})
    assert missing.wait_exit(60) == 2
    assert missing.text().strip().splitlines()[-1] == (
        f"edge: config error in environment variable EDGE_MQTT__CA_FILE: mqtt.ca_file = '{tmp_path}/nope.pem': "
        "does not exist or is not a file"
    )


@needs_openssl
def test_password_file_and_mutual_tls_against_a_real_broker_and_no_secret_leaks(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    pw = tmp_path / "mqtt-password"
    pw.write_text(PLANTED + "\n")
    with LocalBroker(
        tls=(ca["ca.pem"], ca["server.pem"], ca["server.key"]), users={"cam1": PLANTED}, require_certificate=True
    ) as b:
        env = {
            "EDGE_MQTT__USERNAME": "cam1",
            "EDGE_MQTT__PASSWORD_FILE": str(pw),
            "EDGE_MQTT__CA_FILE": str(ca["ca.pem"]),
            "EDGE_MQTT__CERT_FILE": str(ca["client.pem"]),
            "EDGE_MQTT__KEY_FILE": str(ca["client.key"]),
        }
        camera = f"rtsp://admin:{PLANTED}@127.0.0.1:9/stream?token={PLANTED}"
        proc = service(["--source", camera, "--broker", f"127.0.0.1:{b.port}"], tmp_path / "s", env)
        proc.wait_for(r"mqtt connected to 127\.0\.0\.1")
        proc.wait_for(r"retrying", count=2)  # the camera URL has failed and been logged twice
        assert proc.stop() == 0
        # Every retained and live message of the device, read back by a client with the same credentials.
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        seen: list[bytes] = []
        done = threading.Event()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="reader")
        c.tls_set(ca_certs=str(ca["ca.pem"]), certfile=str(ca["client.pem"]), keyfile=str(ca["client.key"]))
        c.username_pw_set("cam1", PLANTED)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe([("edge/#", 1), ("marker/#", 1)])
        c.on_subscribe = lambda cl, u, mid, rc, p: cl.publish("marker/end", b"x", qos=1)

        def on_message(cl: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            seen.append(m.payload)
            if m.topic == "marker/end":
                done.set()

        c.on_message = on_message
        c.connect(b.host, b.port)
        c.loop_start()
        assert done.wait(20)
        c.loop_stop()
        status = [s for s in seen if b'"camera"' in s]
        assert status and any(b"admin:***@127.0.0.1:9" in s for s in status)
        assert all(PLANTED.encode() not in s for s in seen)
        assert PLANTED not in proc.text() and "admin:***@127.0.0.1:9/stream?token=***" in proc.text()
        # A wrong password is refused, and said so (still without printing it).
        pw.write_text("wrong-password\n")
        bad = service(["--source", "/dev/video99", "--broker", f"127.0.0.1:{b.port}"], tmp_path / "s2", env)
        bad.wait_for(r"broker refused the connection: (Bad user name or password|Not authorized)")
        assert bad.stop() == 0 and "wrong-password" not in bad.text()


def test_two_devices_with_one_id_say_so(broker: LocalBroker, tmp_path: Path) -> None:
    a = service(["--source", "/dev/video99", "--broker", f"{broker.host}:{broker.port}"], tmp_path / "a", device="twin")
    a.wait_for("mqtt connected")
    b = service(["--source", "/dev/video99", "--broker", f"{broker.host}:{broker.port}"], tmp_path / "b", device="twin")
    # Mosquitto 2.0.11 drops the older connection without MQTT v5's 'session taken over' reason
    # (later versions send it); either way both devices say what is going on.
    pattern = r"another client (is probably )?connected as 'twin'.*two devices share device\.id"
    a.wait_for(pattern)
    b.wait_for(pattern)
    assert a.stop() == 0 and b.stop() == 0


def test_a_hung_network_camera_ends_the_service_non_zero(broker: LocalBroker, tmp_path: Path) -> None:
    """A camera that accepts the connection and then sends nothing: the capture thread hangs in
    the driver; the supervisor ends the service (exit 1) and the final status says why."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    status = Collector(broker.host, broker.port, "edge/cam1/status")
    env = {"EDGE_HEALTH__STALL_TIMEOUT_S": "3", "EDGE_HEALTH__EXIT_GRACE_S": "5"}
    proc = service(
        [
            "--source",
            f"http://127.0.0.1:{silent.getsockname()[1]}/video.mjpg",
            "--broker",
            f"{broker.host}:{broker.port}",
        ],
        tmp_path,
        env,
    )
    assert proc.wait_exit(60) == 1, proc.text()[-2000:]
    assert "worker 'capture' stalled" in proc.text()
    final = status.wait_for("status", lambda s: s["state"] == "offline" and "last_error" in s)
    assert "capture" in final["last_error"]
    status.close()
    silent.close()


def test_a_message_over_the_size_limit_never_reaches_the_device(broker: LocalBroker, tmp_path: Path) -> None:
    """MQTT v5 Maximum Packet Size: the broker drops what the device would refuse, before it is sent."""
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.cli import main
    from edge.device.settings import Settings
    from edge.gallery.bundle import Identity, load_private_key
    from edge.gallery.sealed import seal
    from edge.recognition.pipeline import Recognizer

    device = device_key(tmp_path / "s")
    keyfile = tmp_path / "k.pem"
    assert main(["gallery", "keygen", "--out", str(keyfile)]) == 0
    key: Ed25519PrivateKey = load_private_key(keyfile)
    sha = Recognizer(Settings()).embedder_sha256
    watch = Collector(broker.host, broker.port, "edge/cam1/gallery/state")
    proc = service(
        [
            "--source",
            "/dev/video99",
            "--gallery-name",
            "lobby",
            "--trusted-key",
            f"{keyfile}.pub",
            "--broker",
            f"{broker.host}:{broker.port}",
        ],
        tmp_path / "s",
        {"EDGE_GALLERY__MAX_BUNDLE_BYTES": str(1 << 20)},
    )
    watch.wait_for("gallery/state")
    peak_before = peak_rss_kib(proc.proc.pid)
    oversized = 40 << 20
    watch.publish("edge/cam1/gallery/set", bytes(oversized))  # 40 MiB of nothing
    v = np.eye(Recognizer(Settings()).embedder.dim, dtype=np.float32)[:1]
    watch.publish("edge/cam1/gallery/set", seal([Identity("a", None, v, {})], "lobby", 1, sha, key, [device.public]))
    watch.wait_for("gallery/state", lambda s: s.get("version") == 1)
    assert not any(s.get("error") for s in watch.on("gallery/state"))  # never delivered, so never refused
    # Relative to what was sent: had the device buffered it, its peak would have grown by the whole payload.
    assert peak_rss_kib(proc.proc.pid) - peak_before < oversized // 1024 // 4
    assert proc.stop() == 0
    watch.close()


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_edge_demo_prints_the_events_of_the_enrolled_and_no_stranger() -> None:
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "demo"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith(
        "demo: 4 enrolled (Colin_Powell, Venus_Williams, Laura_Bush, Jean_Chretien), 4 not enrolled"
    )
    matches = [ln for ln in lines if ln.startswith("match ")]
    assert sorted(ln.split()[1] for ln in matches) == sorted(
        ["Colin_Powell", "Venus_Williams", "Laura_Bush", "Jean_Chretien"]
    )
    assert lines[-1] == (
        "demo: 4 match event(s) received for Colin_Powell, Jean_Chretien, Laura_Bush, Venus_Williams; "
        "strangers matched: none"
    )


def test_a_face_at_four_metres_in_720p_gives_its_event(broker: LocalBroker, tmp_path: Path) -> None:
    """The demo's people 4 m from a 60° 1280x720 camera: faces of 44 px, a tenth of what the
    whole-frame detector could see."""
    far = build_assets(FACES, tmp_path / "far", width=1280, height=720, distance_m=4.0)
    sub = Collector(broker.host, broker.port, "edge/cam1/events/match")
    proc = service(
        [
            "--source",
            str(far.clip),
            "--gallery",
            str(far.gallery),
            "--rate",
            "fast",
            "--broker",
            f"{broker.host}:{broker.port}",
            "--exit-at-end",
        ],
        tmp_path / "s",
    )
    assert proc.wait_exit(300) == 0, proc.text()[-2000:]
    logged = logged_events(proc.text())
    assert sub.wait_until(lambda: len(sub.on("events/match")) >= len(logged) > 0, 10)
    got = {str(e["identity_id"]) for e in sub.on("events/match")}
    sub.close()
    assert got == set(far.enrolled), proc.text()[-3000:]  # everyone enrolled, no stranger
    for e in sub.on("events/match"):
        x0, _y0, x1, _y1 = e["bbox"]
        assert 30 < (x1 - x0) * 1280 < 60, (e["identity_id"], e["bbox"], e["evidence"])  # the 44 px face it saw


class SilentCamera:
    """A network camera that accepts connections and never says a word: a reader opening it hangs
    inside the video library until that gives up."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_dead_and_a_hung_camera_leave_the_other_cameras_events_flowing(
    broker: LocalBroker, assets: DemoAssets, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    silent = SilentCamera()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f"[[cameras]]\nid = 'door'\nsource = '{assets.clip}'\n"
        f"[[cameras]]\nid = 'yard'\nsource = 'rtsp://127.0.0.1:{silent.port}/live'\n"
        "[[cameras]]\nid = 'gate'\nsource = '/dev/video99'\n"
    )
    sub = Collector(broker.host, broker.port, "edge/cam1/events/match", "edge/cam1/status")
    proc = service(
        [
            "--config",
            str(cfg),
            "--gallery",
            str(assets.gallery),
            "--rate",
            "fast",
            "--broker",
            f"{broker.host}:{broker.port}",
        ],
        tmp_path / "s",
        {"EDGE_HEALTH__STALL_TIMEOUT_S": "2", "EDGE_SOURCE__RETRY_MAX_S": "1"},
    )
    try:
        # The door camera's people are all reported, while the yard camera hangs and the gate one is missing.
        assert sub.wait_until(lambda: len(sub.on("events/match")) >= len(assets.enrolled), 120), proc.text()[-3000:]
        events = sub.on("events/match")
        assert {e["identity_id"] for e in events} == set(assets.enrolled) and {e["camera"] for e in events} == {"door"}
        status = sub.wait_for(
            "status",
            lambda s: (
                s.get("cameras", {}).get("yard", {}).get("state") == "stalled"
                and s["cameras"]["gate"]["state"] == "retrying"
            ),
            90,
        )
        assert "capture:yard' stalled" in status["cameras"]["yard"]["error"]
        assert (
            "camera gate" in status["cameras"]["gate"]["error"] or "/dev/video99" in status["cameras"]["gate"]["error"]
        )
        assert status["camera"] == "stalled" and status["camera_error"].startswith("camera ")
        assert status["state"] == "online"  # the device works on: only all its cameras down would stop it
        from edge.cli import main

        assert main(["fleet", "status", "--broker", f"{broker.host}:{broker.port}", "--json"]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert set(row["cameras"]) == {"door", "yard", "gate"} and row["cameras"]["door"]["state"] in ("ok", "idle")
        assert main(["fleet", "status", "--broker", f"{broker.host}:{broker.port}"]) == 0
        assert "/3 ok: gate retrying" in capsys.readouterr().out
        assert proc.stop() == 0
    finally:
        silent.close()
        sub.close()


def test_a_folder_of_photos_reports_each_enrolled_person_once_and_no_stranger(
    broker: LocalBroker, tmp_path: Path
) -> None:
    """Each photo of an image-folder source is a scene of its own (issue 27: 12 photos gave one event
    when the centred faces were followed as one track): three photos each of three enrolled people and
    three strangers' photos, interleaved, give one event per enrolled person and none for a stranger."""
    enrolled, strangers = (
        ("Colin_Powell", "Laura_Bush", "Venus_Williams"),
        ("Angelina_Jolie", "Halle_Berry", "Jean_Chretien"),
    )
    gallery, photos = tmp_path / "gallery", tmp_path / "photos"
    photos.mkdir()
    for name in enrolled:
        own = sorted((FACES / name).glob("*.jpg"))
        (gallery / name).mkdir(parents=True)
        for p in own[:3]:
            shutil.copy(p, gallery / name / p.name)
        for k, p in enumerate(own[-3:]):
            shutil.copy(p, photos / f"{k}-{name}.jpg")
    for k, name in enumerate(strangers):
        shutil.copy(sorted((FACES / name).glob("*.jpg"))[0], photos / f"{k}-{name}.jpg")
    assert len(list(photos.iterdir())) == 12
    sub = Collector(broker.host, broker.port, "edge/cam1/events/match")
    proc = service(
        [
            "--source",
            str(photos),
            "--gallery",
            str(gallery),
            "--rate",
            "fast",
            "--exit-at-end",
            "--broker",
            f"{broker.host}:{broker.port}",
        ],
        tmp_path / "state",
    )
    assert proc.wait_exit(180) == 0, proc.text()[-2000:]
    logged = logged_events(proc.text())
    assert sorted(logged.values()) == sorted(enrolled), proc.text()[-3000:]
    assert sub.wait_until(lambda: len(sub.on("events/match")) >= 3, 10)
    assert sorted(str(e["identity_id"]) for e in sub.on("events/match")) == sorted(enrolled)
    sub.close()


def test_two_enrolled_people_swapping_places_in_one_spot_without_a_gap_are_both_reported(
    broker: LocalBroker, assets: DemoAssets, tmp_path: Path
) -> None:
    """Issue 27: at a door people step, one after another, into the same spot. The box never leaves, so
    only the look says the person changed: the track splits and the second person gets an event too."""
    import cv2
    import numpy as np

    from edge.capture.imageio import read_image
    from edge.demo.assets import PROBES
    from edge.demo.scenes import face_px_at, gradient_background, paste

    first, second = "Colin_Powell", "Laura_Bush"
    clip = tmp_path / "swap.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 30, (640, 480))
    bg = gradient_background(640, 480, np.random.default_rng(3))
    for name in (first, second):  # 4 s each, the same spot, no empty frame between them
        portrait = read_image(FACES / name / PROBES[name])
        for i in range(120):
            frame = bg.copy()
            paste(frame, portrait, 320 + 2 * np.sin(i / 5), 240, face_px_at(1.2, 640), feather=False)
            writer.write(frame)
    writer.release()
    proc = service(
        [
            "--source",
            str(clip),
            "--gallery",
            str(assets.gallery),
            "--rate",
            "native",
            "--exit-at-end",
            "--broker",
            f"{broker.host}:{broker.port}",
        ],
        tmp_path / "state",
    )
    assert proc.wait_exit(180) == 0, proc.text()[-2000:]
    assert sorted(logged_events(proc.text()).values()) == sorted([first, second]), proc.text()[-3000:]
