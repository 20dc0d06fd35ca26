"""``edge demo``: the whole appliance on one machine, finishing by itself.

A Mosquitto broker on a free loopback port; a sample gallery enrolled from the
face fixtures of the source checkout (four people); a 640×480 clip composed from
held-out photos of those people and of four people who are not enrolled; the
service playing the clip; a subscriber printing every match event it receives.
The clip and gallery are built in a temporary folder and deleted afterwards.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.capture.imageio import read_image
from edge.demo.scenes import face_px_at, gradient_background, paste
from edge.errors import InputError

ENROLLED = ("Colin_Powell", "Venus_Williams", "Laura_Bush", "Jean_Chretien")
# The photo of each enrolled person that plays in the clip (never enrolled itself).
PROBES = {
    "Colin_Powell": "Colin_Powell_0074.jpg",
    "Venus_Williams": "Venus_Williams_0004.jpg",
    "Laura_Bush": "Laura_Bush_0016.jpg",
    "Jean_Chretien": "Jean_Chretien_0003.jpg",
}
STRANGERS = ("Halle_Berry", "Angelina_Jolie", "Condoleezza_Rice", "Luiz_Inacio_Lula_da_Silva")
FRAME_W, FRAME_H = 640, 480


@dataclass(frozen=True)
class DemoAssets:
    gallery: Path
    clip: Path
    enrolled: tuple[str, ...]
    strangers: tuple[str, ...]
    frames: int


def build_assets(
    faces: Path,
    out: Path,
    seconds_per_person: float = 1.0,
    fps: int = 30,
    width: int = FRAME_W,
    height: int = FRAME_H,
    distance_m: float = 1.2,
) -> DemoAssets:
    """Gallery folder (all photos of enrolled people but their probe) and an MJPG clip
    (``width`` × ``height``) in which each person (enrolled, then a stranger, alternately)
    stands for a while ``distance_m`` from a 60° camera."""
    missing = [n for n in ENROLLED + STRANGERS if not (faces / n).is_dir()]
    if missing:
        raise InputError(f"demo faces missing under {faces}: {', '.join(missing)}")
    gallery = out / "gallery"
    held_out: dict[str, Path] = {}
    for name in ENROLLED:
        (gallery / name).mkdir(parents=True, exist_ok=True)
        for p in sorted((faces / name).glob("*.jpg")):
            if p.name != PROBES[name]:
                shutil.copy(p, gallery / name / p.name)
        (gallery / name / "identity.toml").write_text(f'label = "{name.replace("_", " ")}"\n')
        held_out[name] = faces / name / PROBES[name]
    for name in STRANGERS:
        held_out[name] = sorted((faces / name).glob("*.jpg"))[0]
    order = [n for pair in zip(ENROLLED, STRANGERS, strict=True) for n in pair]
    clip = out / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"cannot write the demo clip {clip} (OpenCV has no MJPG writer)")
    bg = gradient_background(width, height, np.random.default_rng(3))
    face = face_px_at(distance_m, width)
    sx, sy = width / FRAME_W, height / FRAME_H
    per = int(seconds_per_person * fps)
    frames = 0
    for k, name in enumerate(order):
        portrait = read_image(held_out[name])
        for i in range(per):
            frame = bg.copy()
            paste(frame, portrait, (200 + 240 * (k % 2) + 3 * np.sin(i / 5)) * sx, 240 * sy, face, feather=False)
            writer.write(frame)
            frames += 1
        for _ in range(fps // 3):  # nobody in view between people: tracks end
            writer.write(bg)
            frames += 1
    writer.release()
    return DemoAssets(gallery, clip, ENROLLED, STRANGERS, frames)


class Subscriber:
    """An independent MQTT client that collects (and optionally prints) match events."""

    def __init__(self, host: str, port: int, topic: str, echo: bool = False) -> None:
        self.events: list[dict[str, object]] = []
        self.echo = echo
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"sub-{id(self)}")
        self.topic = topic
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        client.subscribe(self.topic, 1)
        self.ready.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        event = json.loads(msg.payload)
        with self._lock:
            self.events.append(event)
        if self.echo:
            print(
                f"match  {event['identity_id']:<16} label={event.get('label', '-')!s:<18} score={event['score']:.3f} "
                f"threshold={event['threshold']:.3f} evidence={event['evidence']['agreed']}/{event['evidence']['seen']} "
                f"camera={event.get('camera', '-')} track={event['track_id']} id={event['event_id']}",
                flush=True,
            )

    def received(self) -> list[dict[str, object]]:
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="edge-demo-"))


def checkout_faces() -> Path | None:
    """The demo's default faces: the face photos of a source checkout's test fixtures (four people; photos of
    real people are kept to test fixtures, never shipped in the package), or None outside a checkout."""
    path = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "faces"
    return path if path.is_dir() else None
