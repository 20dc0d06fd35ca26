"""edge fleet status and simulate, over a real Mosquitto with real (and simulated) devices."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.cli import main
from edge.demo.broker import LocalBroker
from edge.device.config import load_settings
from edge.device.keys import public_line

from .support import Collector, Service, device_key


@pytest.fixture()
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


def run_device(broker: LocalBroker, state: Path, device: str) -> Service:
    return Service(
        [
            "--source",
            "/dev/video99",
            "--device-id",
            device,
            "--state-dir",
            str(state),
            "--broker",
            f"{broker.host}:{broker.port}",
        ],
        {"EDGE_MQTT__HEARTBEAT_S": "1"},
    )


@pytest.mark.slow
def test_fleet_status_shows_online_stopped_and_lost_devices(
    broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    watch = Collector(broker.host, broker.port, "edge/+/status")
    devices = {name: run_device(broker, tmp_path / name, name) for name in ("door-1", "door-2", "hall")}
    for name in devices:
        watch.wait_for(f"{name}/status", lambda s: s["state"] == "online" and s.get("camera") == "retrying")
    assert devices["door-2"].stop() == 0  # a clean stop: its final status says offline, with the time
    devices["hall"].stop(signal.SIGKILL)  # the broker publishes its last will: connection lost
    watch.wait_for("door-2/status", lambda s: s["state"] == "offline" and "ts" in s)
    watch.wait_for("hall/status", lambda s: s["state"] == "offline" and s.get("lost") is True)
    assert main(["fleet", "status", "--broker", f"{broker.host}:{broker.port}", "--json"]) == 0
    rows = {r["device_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"door-1", "door-2", "hall"}
    assert rows["door-1"]["online"] and rows["door-1"]["camera"] == "retrying"
    # Seen since this test began (a bound from the test's own clock, not a guess at the machine's speed).
    assert 0 <= rows["door-1"]["last_seen_s"] <= time.monotonic() - started + 1
    assert rows["door-1"]["embedder"] == "sface_int8"
    # Each device's key id, as its own key file says (shown to compare; galleries are sealed to pinned keys).
    from edge.device.keys import load_key

    door1 = load_key(tmp_path / "door-1")
    assert door1 is not None and rows["door-1"]["key_id"] == door1.key_id.hex()
    assert rows["door-1"]["sw_version"] and rows["door-1"]["outbox_depth"] == 0 and rows["door-1"]["gallery"] is None
    assert not rows["door-2"]["online"] and rows["door-2"]["state"] == "offline" and rows["door-2"]["since"]
    assert not rows["hall"]["online"] and rows["hall"]["connection_lost"] and rows["hall"]["since"] is None
    for r in rows.values():
        assert set(r) >= {
            "device_id",
            "online",
            "gallery",
            "fps",
            "camera",
            "outbox_depth",
            "last_seen_s",
            "sw_version",
            "last_gallery_error",
        }
    assert main(["fleet", "status", "--broker", f"{broker.host}:{broker.port}"]) == 0
    text = capsys.readouterr().out
    assert "3 device(s): 1 online, 2 not" in text and "offline (conn. lost)" in text and "sface_int8" in text
    assert door1.key_id.hex()[:16] in text
    assert devices["door-1"].stop() == 0
    watch.close()


@pytest.mark.slow
def test_fleet_simulate_brings_a_bundle_to_every_device(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert (
        main(
            [
                "fleet",
                "simulate",
                "--devices",
                "12",
                "--processes",
                "2",
                "--heartbeat",
                "1",
                "--identities",
                "20",
                "--json",
            ]
        )
        == 0
    )
    took = time.monotonic() - started
    out = json.loads(capsys.readouterr().out)
    assert out["all_on_new_version"] and out["devices_on_new_version"] == 12
    # Measured inside the run it reports on: positive and within the command's own wall time.
    assert 0 < out["seconds_until_every_device_reports_it"] <= took
    assert out["broker_peak_rss_mb"] > 0 and len(out["simulator_peak_rss_mb_per_process"]) == 2
    assert out["per_device_bytes_per_s_at_rest"] > 100  # a status heartbeat a second
    assert out["per_device_bytes_per_gallery_update"] > out["bundle_bytes"]


def test_fleet_simulate_refuses_more_devices_per_process_than_paho_can_watch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["fleet", "simulate", "--devices", "500", "--processes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge: fleet simulate: 250 devices per process, over 150") and "--processes 4" in err


def test_fleet_status_on_an_empty_broker_and_a_bad_broker(
    broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fleet", "status", "--broker", f"{broker.host}:{broker.port}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    with LocalBroker() as gone:
        port = gone.port
    assert main(["fleet", "status", "--broker", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"edge: broker 127.0.0.1:{port} refused the connection (nothing listening there?)"
    assert threading.active_count() < 50


def repeated_clip(clip: Path, out: Path, times: int) -> Path:
    """The demo clip played ``times`` times over, as one file."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter.fourcc(*"MJPG"), 30, (w, h))
    for _ in range(times):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return out


@pytest.mark.slow
def test_two_sites_bridged_to_a_central_broker_get_the_gallery_and_lose_no_event_over_a_site_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three real Mosquitto processes: two site brokers bridged to a central one with the configuration
    ``edge fleet bridge-config`` prints (the docs' own). A device at each site; the gallery published at
    central only; events and states watched at central only."""
    from edge.delivery.bridge import bridge_config
    from edge.demo.assets import build_assets

    from .conftest import FACES

    with LocalBroker() as central:
        sites = {s: LocalBroker(extra=bridge_config(s, central.host, central.port)).start() for s in ("north", "south")}
        try:
            assets = build_assets(FACES, tmp_path / "assets")
            clip = repeated_clip(assets.clip, tmp_path / "long.avi", 5)
            key = tmp_path / "owner.pem"
            assert main(["gallery", "keygen", "--out", str(key)]) == 0
            bundle = tmp_path / "lobby.bundle"
            # Both devices' keys, as 'edge device key' prints them, one a line: the bundle is sealed to both.
            recipients = tmp_path / "devices.txt"
            recipients.write_text("".join(f"{public_line(device_key(tmp_path / s).public)} door-{s}\n" for s in sites))
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
                        "lobby",
                        "--version",
                        "3",
                        "--recipients",
                        str(recipients),
                    ]
                )
                == 0
            )
            watch = Collector(
                central.host,
                central.port,
                "edge/+/events/match",
                "edge/+/gallery/state",
                client_id="central-watch",
                clean=False,
            )
            assert main(["gallery", "publish", str(bundle), "--broker", f"{central.host}:{central.port}"]) == 0
            devices = {
                s: Service(
                    [
                        "--source",
                        str(clip),
                        "--rate",
                        "fast",
                        "--exit-at-end",
                        "--gallery-name",
                        "lobby",
                        "--trusted-key",
                        f"{key}.pub",
                        "--broker",
                        f"{b.host}:{b.port}",
                        "--device-id",
                        f"door-{s}",
                        "--state-dir",
                        str(tmp_path / s),
                    ],
                    {
                        "EDGE_MQTT__HEARTBEAT_S": "1",
                        "EDGE_MQTT__RECONNECT_MAX_S": "1",
                        "EDGE_TRACKING__COOLDOWN_S": "0",
                        "EDGE_OUTBOX__DRAIN_TIMEOUT_S": "60",
                    },
                )
                for s, b in sites.items()
            }
            for s in sites:  # the gallery came down from central through each site's bridge, and was applied
                watch.wait_for(
                    f"door-{s}/gallery/state", lambda st: st.get("version") == 3 and st["identities"] == 4, 90
                )
            # Events flow to central from both sites; then the north site's broker restarts mid-stream.
            assert watch.wait_until(lambda: all(len(watch.on(f"door-{s}/events")) >= 2 for s in sites), 120)
            sites["north"].stop()
            devices["north"].wait_for("mqtt disconnected", 30)  # the device saw its broker go
            sites["north"].start()
            codes = {s: d.wait_exit(300) for s, d in devices.items()}
            assert codes == {"north": 0, "south": 0}, {s: d.text()[-2000:] for s, d in devices.items()}
            north = devices["north"].text()
            assert logged_events(north[north.index("mqtt disconnected") :])  # events confirmed while it was away
            for s, d in devices.items():
                logged = set(logged_events(d.text()))
                assert len(logged) >= 8  # several plays of the clip's four enrolled people
                assert watch.wait_until(lambda s=s, logged=logged: logged <= received(watch, s), 30), s
                # Counted by event id, not compared as sets: a duplicate would be invisible in a set.
                deliveries = Counter(str(e["event_id"]) for e in watch.on(f"door-{s}/events"))
                assert set(deliveries) == logged  # every event it confirmed reached central
                duplicates = sum(n - 1 for n in deliveries.values())
                if s == "south":
                    assert duplicates == 0  # no restart on its path: exactly once
                else:
                    # At-least-once over the restart (consumers deduplicate by event_id, docs/mqtt.md):
                    # only what was in flight when the site broker went can arrive twice.
                    assert duplicates <= load_settings(environ={}).mqtt.max_inflight
            capsys.readouterr()
            assert main(["fleet", "status", "--broker", f"{central.host}:{central.port}", "--json"]) == 0
            rows = {r["device_id"]: r for r in json.loads(capsys.readouterr().out)}
            assert set(rows) == {"door-north", "door-south"}
            assert all(r["gallery"] == {"name": "lobby", "version": 3} for r in rows.values())
            watch.close()
        finally:
            for b in sites.values():
                b.__exit__(None, None, None)


def received(watch: Collector, site: str) -> set[str]:
    return {str(e["event_id"]) for e in watch.on(f"door-{site}/events")}


def logged_events(text: str) -> list[str]:
    import re

    return re.findall(r"event ([0-9a-f-]{36}) identity=", text)


def test_the_cameras_column_names_the_cameras_at_fault_and_counts_an_idle_file_source_as_working() -> None:
    from edge.delivery.fleet import _cameras

    def row(**states: str) -> dict[str, object]:
        return {"camera": "stalled", "cameras": {cid: {"state": s} for cid, s in states.items()}}

    assert _cameras(row(door="idle", yard="stalled", gate="retrying")) == "1/3 ok: gate retrying, yard stalled"
    assert _cameras(row(door="ok", yard="idle")) == "2/2 ok"
    assert _cameras(row(door="starting", yard="ok")) == "1/2 ok: door starting"
    assert _cameras({"camera": "ok", "cameras": {"door": {"state": "ok"}}}) == "ok"


@pytest.mark.slow
def test_a_port_that_is_no_mqtt_broker_is_announced_before_the_wait_and_named_after(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Something listens but never answers as MQTT (a web server, a TLS port): the tool says what it waits
    for within about 2 s, then fails with one line saying why."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        assert main(["fleet", "status", "--broker", f"127.0.0.1:{port}"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and f"waiting for 127.0.0.1:{port} to answer as an MQTT broker (up to 10 s)" in lines[0]
    assert lines[1] == (
        f"edge: broker 127.0.0.1:{port} refused the connection: no MQTT answer (CONNACK) within 10 s: "
        "is it an MQTT broker, and TLS or not?"
    )
