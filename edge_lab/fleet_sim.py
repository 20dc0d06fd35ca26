"""``edge fleet simulate``: many devices on one broker (or behind bridged site brokers), to measure
what a fleet costs.

Each simulated device runs the service's real MQTT link (connection, last will,
outbox pump) and real gallery sync (bounded assembly, every admission check,
atomic store, state message), with its own state folder, and publishes its status
at connect and every ``heartbeat_s``; there is no camera. Devices are spread over a
few processes, and with ``--sites S`` over S site brokers bridged to a central one (the
configuration ``edge fleet bridge-config`` prints), where everything is published and watched. One signed bundle is then published, retained, on the fleet topic;
the figure is the time until every device has reported the new version on its
``gallery/state``. Also measured: the broker's and the simulator processes' peak
resident memory, and the bytes per device at rest, per event and per gallery update
(payloads and topics as seen by a subscriber, without MQTT framing).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.delivery.events import Status, utc_now
from edge.delivery.mqtt import MqttLink, Topics
from edge.delivery.outbox import Outbox
from edge.device.config import load_settings
from edge.device.keys import ensure_key
from edge.errors import EdgeError, InputError
from edge.gallery.admit import Policy, load_trusted
from edge.gallery.store import GalleryStore
from edge.gallery.sync import GallerySync
from edge.recognition.calibration import LOOK_LEVELS, TEMPLATE_LEVELS, Band, Calibration, CalibrationTable
from edge.recognition.match import GalleryHolder, Matcher

# Each simulated device holds about 6 file descriptors (socket, paho's wake-up pair, SQLite outbox with its
# WAL and shared memory); paho-mqtt waits with select(), which fails on descriptors above 1023.
MAX_DEVICES_PER_PROCESS = 150


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


class SimDevice:
    """One simulated device: the real link and gallery sync, a status, no camera."""

    def __init__(
        self,
        device: str,
        host: str,
        port: int,
        folder: str,
        pubkey: str,
        sha: str,
        heartbeat_s: float,
        matcher: Matcher,
        stop: threading.Event,
    ) -> None:
        s = load_settings(
            environ={},
            overrides={
                "device": {"id": device, "state_dir": f"{folder}/{device}"},
                "mqtt": {
                    "host": host,
                    "port": port,
                    "heartbeat_s": heartbeat_s,
                    "reconnect_min_s": 1,
                    "reconnect_max_s": 5,
                },
                "gallery": {"name": "fleet", "trusted_keys": [pubkey]},
            },
        )
        self.device = device
        self.topics = Topics("edge", device)
        self.link = MqttLink(s.mqtt, self.topics, Outbox(Path(f"{folder}/{device}/outbox.sqlite")), stop)
        policy = Policy(
            load_trusted(s.gallery.trusted_keys),
            sha,
            "fleet",
            s.gallery.max_bundle_bytes,
            device_key=ensure_key(s.device.state_dir)[0],
        )
        self.holder = GalleryHolder(matcher)
        store = GalleryStore(Path(f"{folder}/{device}/gallery"), policy)
        self.sync = GallerySync(self.holder, store, policy, s.gallery, self._publish_state)
        self.sync.attach(self.link, self.topics)
        self.since = utc_now()
        self.link.when_connected(self.beat)

    def _publish_state(self, data: bytes) -> None:
        self.link.publish_retained(self.topics.gallery_state, data)

    def beat(self) -> None:
        snap = self.holder.current
        self.link.publish_status(
            Status(
                device_id=self.device,
                state="online",
                version="sim",
                camera="none",
                since=self.since,
                gallery_name=snap.gallery.name or None,
                gallery_version=snap.version,
                gallery_identities=len(snap),
                outbox_depth=self.link.outbox.depth(),
            )
        )

    def start(self) -> None:
        self.sync.start()
        self.link.start()

    def stop(self) -> None:
        self.sync.stop(1.0)
        self.link.close(None, timeout=1.0)


def _worker(
    ids: list[str], host: str, port: int, folder: str, pubkey: str, sha: str, heartbeat_s: float, conn: Any
) -> None:
    """One process of simulated devices; reports 'started' then its peak memory when told to stop."""
    table = CalibrationTable.from_rows([[1e-1, 0.2], [1e-6, 0.7]])
    kinds = {(k, m): table for k in TEMPLATE_LEVELS for m in LOOK_LEVELS}  # no camera: any table will do
    matcher = Matcher(Calibration(sha, "sim", (Band(0, table, "all", kinds),)), load_settings(environ={}).match)
    stop = threading.Event()
    devices = [SimDevice(d, host, port, folder, pubkey, sha, heartbeat_s, matcher, stop) for d in ids]
    for d in devices:
        d.start()
    conn.send("started")

    def heartbeats() -> None:
        while not stop.wait(heartbeat_s):
            for d in devices:
                d.beat()

    threading.Thread(target=heartbeats, daemon=True).start()
    conn.recv()  # told to stop
    stop.set()
    for d in devices:
        d.stop()
    conn.send(vm_hwm_mb(os.getpid()))


class Monitor:
    """Counts what devices publish, per kind of topic, and who reports which gallery version."""

    def __init__(self, host: str, port: int) -> None:
        self.bytes: dict[str, int] = {}
        self.online: set[str] = set()
        self.version: dict[str, int | None] = {}
        self.cond = threading.Condition()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fleet-monitor")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("edge/#", 1)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        kind = "galleries" if parts[1] == "galleries" else "/".join(parts[2:])
        with self.cond:
            self.bytes[kind] = self.bytes.get(kind, 0) + len(msg.payload) + len(msg.topic)
            if kind == "status" and b'"state":"online"' in msg.payload:
                self.online.add(parts[1])
            elif kind == "gallery/state" and msg.payload:
                self.version[parts[1]] = json.loads(msg.payload).get("version")
            self.cond.notify_all()

    def wait(self, pred: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))
            return True

    def take(self) -> dict[str, int]:
        with self.cond:
            out, self.bytes = self.bytes, {}
            return out


def _sample_event() -> int:
    """Bytes of one match event as published (payload and topic), labels included."""
    from edge.delivery.events import Evidence, MatchEvent

    event = MatchEvent(
        device_id="sim-0000",
        identity_id="visitor-0042",
        label="A Visitor",
        score=0.7342,
        threshold=0.6012,
        est_false_match_rate=3.1e-7,
        evidence=Evidence(agreed=3, seen=5),
        track_id=17,
        bbox=(0.41, 0.22, 0.47, 0.33),
        quality=0.83,
        model="d11940745f13b13b",
        gallery_version=7,
    )
    return len(event.to_json()) + len("edge/sim-0000/events/match")


def simulate(
    devices: int = 500,
    processes: int | None = None,
    heartbeat_s: float = 10.0,
    identities: int = 100,
    sites: int = 0,
) -> dict[str, object]:
    """``sites`` = 0: every device on one broker; else the devices spread over ``sites`` site brokers,
    each bridged to a central one (``edge.delivery.bridge``), where the bundle is published and
    the devices are watched."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.delivery.bridge import bridge_config
    from edge.demo.broker import LocalBroker
    from edge.gallery.bundle import Identity, generate_key, load_private_key
    from edge.gallery.sealed import seal

    if not 0 <= sites <= 16:
        raise InputError("fleet simulate: 0-16 sites")
    per_site = [len(range(s, devices, max(sites, 1))) for s in range(max(sites, 1))]
    per_site_processes = [max(1, math.ceil(n / MAX_DEVICES_PER_PROCESS)) for n in per_site]
    processes = processes or max(
        2 if not sites else sum(per_site_processes), math.ceil(devices / MAX_DEVICES_PER_PROCESS)
    )
    if not 1 <= devices <= 5000 or not 1 <= processes <= 64:
        raise InputError("fleet simulate: 1-5000 devices over 1-64 processes")
    if processes < max(sites, 1):
        raise InputError(
            f"fleet simulate: {sites} sites need at least {sites} processes (one site's devices per process)"
        )
    if math.ceil(devices / processes) > MAX_DEVICES_PER_PROCESS:
        raise InputError(
            f"fleet simulate: {math.ceil(devices / processes)} devices per process, over {MAX_DEVICES_PER_PROCESS}: "
            "paho-mqtt's select() loop cannot watch file descriptors above 1023 and each simulated device holds "
            f"about 6; use --processes {math.ceil(devices / MAX_DEVICES_PER_PROCESS)} or more"
        )
    folder = Path(tempfile.mkdtemp(prefix="edge-fleet-"))
    sha = "ab" * 32
    brokers: list[LocalBroker] = []
    try:
        generate_key(folder / "owner.pem")
        key: Ed25519PrivateKey = load_private_key(folder / "owner.pem")
        rng = np.random.default_rng(0)
        people = []
        for i in range(identities):
            v = rng.normal(size=(3, 192)).astype(np.float32)
            people.append(Identity(f"p{i:04d}", None, v / np.linalg.norm(v, axis=1, keepdims=True), {}))
        ids = [f"sim-{i:04d}" for i in range(devices)]
        # Each device's key made before it starts (as its first start would); one bundle sealed to them all.
        recipients = [ensure_key(folder / d)[0].public for d in ids]
        bundle = seal(people, "fleet", 7, sha, key, recipients, dtype="int8")
        central = LocalBroker().start()
        brokers.append(central)
        site_brokers = [
            LocalBroker(extra=bridge_config(f"site{s}", central.host, central.port)).start() for s in range(sites)
        ] or [central]
        brokers += [b for b in site_brokers if b is not central]
        # Mosquitto's per-listener connection limit is high; the process file limit may not be.
        monitor = Monitor(central.host, central.port)
        ctx = mp.get_context("spawn")
        pipes, procs = [], []
        t0 = time.monotonic()
        # Each process runs devices of one site: the site's devices split over its share of the processes.
        shares = (
            [max(1, round(processes * n / devices), math.ceil(n / MAX_DEVICES_PER_PROCESS)) for n in per_site]
            if sites
            else [processes]
        )
        for s, broker in enumerate(site_brokers):
            site_ids = ids[s :: len(site_brokers)]
            for k in range(shares[s]):
                parent, child = ctx.Pipe()
                p = ctx.Process(
                    target=_worker,
                    args=(
                        site_ids[k :: shares[s]],
                        broker.host,
                        broker.port,
                        str(folder),
                        f"{folder}/owner.pem.pub",
                        sha,
                        heartbeat_s,
                        child,
                    ),
                )
                p.start()
                pipes.append(parent)
                procs.append(p)
        for parent in pipes:
            if not parent.poll(300) or parent.recv() != "started":
                raise EdgeError("fleet simulate: a simulator process did not start")
        if not monitor.wait(lambda: len(monitor.online) == devices, 300):
            raise EdgeError(f"fleet simulate: only {len(monitor.online)} of {devices} devices came online")
        connect_s = time.monotonic() - t0
        monitor.take()
        rest_start = time.monotonic()
        monitor.wait(lambda: False, 2 * heartbeat_s)  # two heartbeat periods at rest
        rest = monitor.take()
        rest_s = time.monotonic() - rest_start
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fleet-admin")
        pub.connect(central.host, central.port)
        pub.loop_start()
        t1 = time.monotonic()
        pub.publish("edge/galleries/fleet", bundle, qos=1, retain=True).wait_for_publish(30)
        done = monitor.wait(lambda: sum(v == 7 for v in monitor.version.values()) == devices, 600)
        apply_s = time.monotonic() - t1
        updated = sum(v == 7 for v in monitor.version.values())
        pub.loop_stop()
        update = monitor.take()
        broker_mb = {
            ("central" if b is central else f"site{i - 1}"): vm_hwm_mb(b.proc.pid) if b.proc else float("nan")
            for i, b in enumerate(brokers)
        }
        sim_mb = []
        for parent in pipes:
            parent.send("stop")
            sim_mb.append(parent.recv() if parent.poll(120) else float("nan"))
        for p in procs:
            p.join(30)
        monitor.client.loop_stop()
        status_bytes = rest.get("status", 0)
        sample = _sample_event()
        return {
            "devices": devices,
            "processes": len(procs),
            "sites": sites,
            "devices_per_site": per_site if sites else [devices],
            "bundle_bytes": len(bundle),
            "bundle_identities": identities,
            "all_online_s": round(connect_s, 1),
            "all_on_new_version": done,
            "devices_on_new_version": updated,
            "seconds_until_every_device_reports_it": round(apply_s, 2),
            "broker_peak_rss_mb": broker_mb["central"] if not sites else sum(broker_mb.values()),
            "broker_peak_rss_mb_each": broker_mb,
            "simulator_peak_rss_mb_per_process": sim_mb,
            "simulator_peak_rss_mb_per_device": round(sum(sim_mb) / devices, 2),
            "per_device_bytes_per_s_at_rest": round(status_bytes / rest_s / devices, 1),
            "heartbeat_s": heartbeat_s,
            "per_device_bytes_per_gallery_update": round(len(bundle) + update.get("gallery/state", 0) / devices),
            "bytes_per_event": sample,
        }
    finally:
        for b in reversed(brokers):
            b.__exit__(None, None, None)
        shutil.rmtree(folder, ignore_errors=True)
