"""edge fleet status and simulate, over a real Mosquitto with real (and simulated) devices."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.cli import main
from edge.delivery.broker import LocalBroker

from .support import Collector, Service


@pytest.fixture()
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


def run_device(broker: LocalBroker, state: Path, device: str) -> Service:
    return Service(["--source", "/dev/video99", "--device-id", device, "--state-dir", str(state),
                    "--broker", f"{broker.host}:{broker.port}"], {"EDGE_MQTT__HEARTBEAT_S": "1"})  # fmt: skip


@pytest.mark.slow
def test_fleet_status_shows_online_stopped_and_lost_devices(
    broker: LocalBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
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
    assert rows["door-1"]["online"] and rows["door-1"]["camera"] == "retrying" and rows["door-1"]["last_seen_s"] < 30
    assert rows["door-1"]["sw_version"] and rows["door-1"]["outbox_depth"] == 0 and rows["door-1"]["gallery"] is None
    assert not rows["door-2"]["online"] and rows["door-2"]["state"] == "offline" and rows["door-2"]["since"]
    assert not rows["hall"]["online"] and rows["hall"]["connection_lost"] and rows["hall"]["since"] is None
    for r in rows.values():
        assert set(r) >= {"device_id", "online", "gallery", "fps", "camera", "outbox_depth", "last_seen_s",
                          "sw_version", "last_gallery_error"}  # fmt: skip
    assert main(["fleet", "status", "--broker", f"{broker.host}:{broker.port}"]) == 0
    text = capsys.readouterr().out
    assert "3 device(s): 1 online, 2 not" in text and "offline (conn. lost)" in text
    assert devices["door-1"].stop() == 0
    watch.close()


@pytest.mark.slow
def test_fleet_simulate_brings_a_bundle_to_every_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "simulate", "--devices", "12", "--processes", "2", "--heartbeat", "1",
                 "--identities", "20", "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["all_on_new_version"] and out["devices_on_new_version"] == 12
    assert 0 < out["seconds_until_every_device_reports_it"] < 60
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
