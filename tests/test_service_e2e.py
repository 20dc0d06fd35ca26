"""The device service end to end, against a real Mosquitto on a free loopback port.

The service runs as a real process (``edge run``); an independent paho client
subscribes like any consumer would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.broker import LocalBroker, find_mosquitto
from edge.demo import DemoAssets, Subscriber, build_assets

from .conftest import FACES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_mosquitto() is None and not os.environ.get("CI"), reason="mosquitto not installed"),
]
EVENT_LINE = re.compile(r"event ([0-9a-f-]{36}) identity=(\S+)")


@pytest.fixture()
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> DemoAssets:
    return build_assets(FACES, tmp_path_factory.mktemp("demo"))


def service(args: list[str], state: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {**os.environ, "EDGE_MQTT__RECONNECT_MAX_S": "1", "EDGE_MQTT__HEARTBEAT_S": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--state-dir", str(state), "--device-id", "cam1", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
    )  # fmt: skip


def logged_events(stderr: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in EVENT_LINE.finditer(stderr)}


def wait_for(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_only_enrolled_people_produce_events(broker: LocalBroker, assets: DemoAssets, tmp_path: Path) -> None:
    sub = Subscriber(broker.host, broker.port, "edge/cam1/events/match")
    assert sub.ready.wait(5)
    proc = service(["--source", str(assets.clip), "--gallery", str(assets.gallery), "--rate", "fast",
                    "--broker", f"{broker.host}:{broker.port}", "--exit-at-end"], tmp_path)  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    logged = logged_events(err)
    assert wait_for(lambda: len(sub.received()) >= len(logged), 5)
    sub.close()
    got = {str(e["identity_id"]) for e in sub.received()}
    assert got == set(assets.enrolled), err[-3000:]
    assert {str(e["event_id"]) for e in sub.received()} == set(logged)
    for e in sub.received():
        assert e["device_id"] == "cam1" and e["schema"] == 1 and e["gallery_version"] == 0
        assert e["score"] >= e["threshold"] and e["evidence"]["agreed"] >= 3  # type: ignore[index]
        assert all(0.0 <= v <= 1.0 for v in e["bbox"])  # type: ignore[attr-defined]


def durable_subscriber(broker: LocalBroker) -> tuple[mqtt.Client, list[dict[str, object]]]:
    got: list[dict[str, object]] = []
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="durable-sub", clean_session=False)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("edge/+/events/match", 1)
    c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
    c.reconnect_delay_set(1, 1)
    c.connect_async(broker.host, broker.port)
    c.loop_start()
    return c, got


def test_broker_restart_mid_run_loses_nothing(broker: LocalBroker, assets: DemoAssets, tmp_path: Path) -> None:
    sub, got = durable_subscriber(broker)
    time.sleep(0.5)
    proc = service(["--source", str(assets.clip), "--gallery", str(assets.gallery), "--rate", "native",
                    "--broker", f"{broker.host}:{broker.port}", "--exit-at-end"], tmp_path)  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []

    def read_until(done: Callable[[str], bool], limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not done("".join(lines)):
            lines.append(proc.stderr.readline())  # type: ignore[union-attr]

    read_until(lambda text: len(logged_events(text)) >= 1)  # the first event is out
    broker.stop()
    # The next confirmed event can only wait in the outbox.
    read_until(lambda text: "mqtt disconnected" in text and len(logged_events(text)) >= 2)
    broker.start()
    _, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 0, err[-2000:]
    logged = logged_events(err)
    assert len(logged) == len(assets.enrolled)
    assert wait_for(lambda: {str(e["event_id"]) for e in got} >= set(logged), 10), (logged, got)
    sub.loop_stop()
    ids = [str(e["event_id"]) for e in got]
    assert set(ids) == set(logged)
    # At least one event was confirmed while the broker was away (it waited in the outbox).
    cut = err.index("mqtt disconnected")
    assert EVENT_LINE.search(err, cut) and err.index("mqtt connected", cut) > EVENT_LINE.search(err, cut).start()  # type: ignore[union-attr]


def test_sigkill_with_pending_events_then_restart_delivers(assets: DemoAssets, tmp_path: Path) -> None:
    with LocalBroker() as offline:
        port = offline.port
    # No broker on that port: events can only pile up in the outbox.
    proc = service(["--source", str(assets.clip), "--gallery", str(assets.gallery), "--rate", "native",
                    "--broker", f"127.0.0.1:{port}", "--loop"], tmp_path)  # fmt: skip
    lines: list[str] = []
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(logged_events("".join(lines))) < 2:
        lines.append(proc.stderr.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    pending = logged_events("".join(lines))
    assert len(pending) >= 2
    with LocalBroker(port=port) as broker:
        sub = Subscriber(broker.host, broker.port, "edge/cam1/events/match")
        assert sub.ready.wait(5)
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "blank.png").write_bytes(
            __import__("cv2").imencode(".png", __import__("numpy").zeros((48, 64, 3), "uint8"))[1].tobytes()
        )
        again = service(["--source", str(empty), "--broker", f"{broker.host}:{port}", "--exit-at-end"], tmp_path)
        _, err = again.communicate(timeout=60)
        assert again.returncode == 0, err[-2000:]
        assert wait_for(lambda: {str(e["event_id"]) for e in sub.received()} >= set(pending), 5)
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


def status_listener(broker: LocalBroker) -> tuple[mqtt.Client, list[dict[str, object]]]:
    got: list[dict[str, object]] = []
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="status-sub")
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("edge/cam1/status", 1)
    c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
    c.connect_async(broker.host, broker.port)
    c.loop_start()
    return c, got


def test_camera_that_cannot_open_is_reported_not_fatal(broker: LocalBroker, tmp_path: Path) -> None:
    c, got = status_listener(broker)
    proc = service(["--source", "/dev/video99", "--broker", f"{broker.host}:{broker.port}"], tmp_path)
    ok = wait_for(
        lambda: any(s.get("camera") == "retrying" and "/dev/video99" in str(s.get("camera_error")) for s in got), 20
    )
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    c.loop_stop()
    assert ok, (got, err[-2000:])
    assert alive and proc.returncode == 0
    assert got[-1]["state"] == "offline"  # the clean shutdown says so too


def test_last_will_marks_the_device_offline_when_it_dies(broker: LocalBroker, tmp_path: Path) -> None:
    c, got = status_listener(broker)
    proc = service(["--source", "/dev/video99", "--broker", f"{broker.host}:{broker.port}"], tmp_path)
    assert wait_for(lambda: any(s.get("state") == "online" for s in got), 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert wait_for(lambda: got[-1].get("state") == "offline", 10), got[-3:]
    c.loop_stop()


def test_signed_bundle_gallery_events_carry_its_version(
    broker: LocalBroker, assets: DemoAssets, tmp_path: Path
) -> None:
    from edge.cli import main

    key = tmp_path / "k.pem"
    assert main(["gallery", "keygen", "--out", str(key)]) == 0
    bundle = tmp_path / "g.bundle"
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
            ]
        )
        == 0
    )
    sub = Subscriber(broker.host, broker.port, "edge/cam1/events/match")
    assert sub.ready.wait(5)
    args = ["--source", str(assets.clip), "--gallery", str(bundle), "--gallery-name", "demo", "--trusted-key", f"{key}.pub",
            "--rate", "fast", "--broker", f"{broker.host}:{broker.port}", "--exit-at-end"]  # fmt: skip
    proc = service(args, tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert wait_for(lambda: len(sub.received()) >= len(logged_events(err)) > 0, 5)
    sub.close()
    assert {e["gallery_version"] for e in sub.received()} == {2}
    assert {str(e["identity_id"]) for e in sub.received()} == set(assets.enrolled)
    # A bundle signed by a key the device does not trust stops start-up with a clear error.
    other = tmp_path / "other.pem"
    assert main(["gallery", "keygen", "--out", str(other)]) == 0
    bad = service([*args[:6], "--trusted-key", f"{other}.pub", *args[8:]], tmp_path)
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and "not trusted" in err


def make_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl)."""
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "2",
        "-subj",
        "/CN=edge-test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out", str(cert),
        "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="openssl not installed")
def test_tls_connection_with_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = make_ca(tmp_path)
    with LocalBroker(tls=(ca, cert, key)) as b:
        got: list[dict[str, object]] = []
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="tls-sub")
        c.tls_set(ca_certs=str(ca))
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("edge/cam1/status", 1)
        c.on_message = lambda cl, u, m: got.append(json.loads(m.payload))
        c.connect(b.host, b.port)
        c.loop_start()
        env = {"EDGE_MQTT__CA_FILE": str(ca)}
        proc = service(["--source", "/dev/video99", "--broker", f"127.0.0.1:{b.port}"], tmp_path, env)
        ok = wait_for(lambda: any(s.get("state") == "online" for s in got), 20)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        c.loop_stop()
        assert ok, err[-2000:]
        # Without the CA the device refuses the broker's certificate (and keeps retrying).
        proc = service(
            ["--source", "/dev/video99", "--broker", f"127.0.0.1:{b.port}"], tmp_path, {"EDGE_MQTT__TLS": "true"}
        )
        time.sleep(3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert "connected to" not in err and proc.returncode == 0
