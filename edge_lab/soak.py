"""``edge eval soak``: does the service's memory stay flat over hours of work?

The real service (``edge run`` as a process) against a local Mosquitto, playing a
looping clip in which an enrolled person walks in every second (so about one
event a second, cooldown off), following a signed gallery that is replaced every
``gallery_every_s`` (a new version, alternately with and without one person).
Every ``sample_s`` the service's resident memory (VmRSS) is read from /proc. The
report gives the curve, the events received, the gallery versions applied, and the
spread of the memory after the warm-up.
"""

from __future__ import annotations

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

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.capture.imageio import read_image
from edge.demo.assets import ENROLLED, PROBES
from edge.demo.broker import LocalBroker
from edge.demo.scenes import face_px_at, gradient_background, paste
from edge.device.keys import ensure_key
from edge.device.settings import Settings
from edge.errors import EdgeError
from edge.gallery.bundle import Identity, generate_key, load_private_key
from edge.gallery.enroll import enroll_directory
from edge.gallery.sealed import seal
from edge.recognition.pipeline import Recognizer

FPS = 30


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise EdgeError(f"process {pid} has no VmRSS")


def soak_clip(faces: Path, out: Path) -> Path:
    """15 frames of one enrolled person, then 16 of nobody (the track ends), each person in turn."""
    clip = out / "soak.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), FPS, (640, 480))
    bg = gradient_background(640, 480, np.random.default_rng(4))
    for k, name in enumerate(ENROLLED):
        portrait = read_image(faces / name / PROBES[name])
        for i in range(15):
            frame = bg.copy()
            paste(frame, portrait, 200 + 240 * (k % 2) + 2 * i, 240, face_px_at(1.2), feather=False)
            writer.write(frame)
        for _ in range(16):
            writer.write(bg)
    writer.release()
    return clip


def soak(faces: Path, minutes: float, gallery_every_s: float = 300.0, sample_s: float = 10.0) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    try:
        gallery = work / "gallery"
        for name in ENROLLED:
            (gallery / name).mkdir(parents=True)
            for p in sorted((faces / name).glob("*.jpg")):
                if p.name != PROBES[name]:
                    shutil.copy(p, gallery / name / p.name)
        smaller = work / "gallery-less"
        shutil.copytree(gallery, smaller)
        shutil.rmtree(smaller / ENROLLED[-1])
        key = work / "k.pem"
        generate_key(key)
        rec = Recognizer(Settings())
        # The device's key made before it starts (as its first start would): every update is sealed to it.
        device = ensure_key(work / "state")[0]
        galleries = [
            [
                Identity(r.identity_id, r.label, r.embeddings, r.meta)
                for r in enroll_directory(rec, folder)
                if r.embeddings is not None
            ]
            for folder in (gallery, smaller)
        ]

        def bundle(version: int) -> bytes:
            """The two galleries in turn, as a publisher's updates: sealed to the device, signed."""
            return seal(
                galleries[(version - 1) % 2],
                "soak",
                version,
                rec.embedder_sha256,
                load_private_key(key),
                [device.public],
                dtype="int8",
                embedder=rec.embedder_name,
            )

        clip = soak_clip(faces, work)
        events = 0
        versions: list[int] = []
        lock = threading.Lock()
        with LocalBroker() as broker:

            def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
                nonlocal events
                with lock:
                    if msg.topic.endswith("/events/match"):
                        events += 1
                    elif msg.payload:
                        v = json.loads(msg.payload).get("version")
                        if isinstance(v, int) and (not versions or versions[-1] != v):
                            versions.append(v)

            sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="soak-sub")
            sub.on_connect = lambda c, u, f, rc, p: c.subscribe(
                [("edge/soak/events/match", 1), ("edge/soak/gallery/state", 1)]
            )
            sub.on_message = on_message
            sub.connect(broker.host, broker.port)
            sub.loop_start()

            def publish(version: int) -> None:
                data = bundle(version)
                sub.publish("edge/galleries/soak", data, qos=1, retain=True).wait_for_publish(30)

            publish(1)
            env = {**os.environ, "EDGE_TRACKING__COOLDOWN_S": "0", "EDGE_MQTT__HEARTBEAT_S": "10"}
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edge.cli",
                    "run",
                    "--device-id",
                    "soak",
                    "--state-dir",
                    str(work / "state"),
                    "--source",
                    str(clip),
                    "--loop",
                    "--rate",
                    "native",
                    "--gallery-name",
                    "soak",
                    "--trusted-key",
                    f"{key}.pub",
                    "--broker",
                    f"{broker.host}:{broker.port}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            start = time.monotonic()
            samples: list[tuple[float, float]] = []
            version, next_gallery, next_sample = 1, start + gallery_every_s, start
            try:
                while (now := time.monotonic()) - start < minutes * 60:
                    if proc.poll() is not None:
                        raise EdgeError(f"soak: the service exited with {proc.returncode}")
                    if now >= next_sample:
                        samples.append((round(now - start, 1), rss_mb(proc.pid)))
                        next_sample += sample_s
                    if now >= next_gallery:
                        version += 1
                        publish(version)
                        next_gallery += gallery_every_s
                    time.sleep(min(1.0, max(0.0, min(next_sample, next_gallery) - time.monotonic())))
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(60)
            sub.loop_stop()
        warm = [mb for t, mb in samples if t >= min(120.0, minutes * 60 / 4)]
        elapsed = samples[-1][0] if samples else 0.0
        return {
            "minutes": minutes,
            "events": events,
            "events_per_s": round(events / max(elapsed, 1e-9), 2),
            "gallery_versions_published": version,
            "gallery_versions_applied": versions,
            "rss_mb_after_warmup_min": min(warm) if warm else None,
            "rss_mb_after_warmup_max": max(warm) if warm else None,
            "rss_mb_spread_after_warmup": round(max(warm) - min(warm), 1) if warm else None,
            "exit_code": code,
            "rss_mb_samples": samples,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
