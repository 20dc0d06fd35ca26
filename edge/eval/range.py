"""``edge eval range``: how far away the appliance recognises people, at any frame size.

Scenes are composited from LFW View 1 people (``scenes.py``): each person stands
at a given distance from a camera with a ``hfov`` lens (60° by default), drifting
sideways at walking-by speed, in view for ``frames`` frames, then nobody for a
while (tracks end). Enrolled people are shown with a different photo than the one
enrolled; strangers (never enrolled) are shown too, and the gallery also holds
distractors who never appear. The frames go through the service's own frame loop
(``FrameProcessor``: scanner, tracker, quality gate, embedder, matcher, K-of-M
confirmation) with timestamps of a 30 fps camera.

Per distance: recall (enrolled visits that produced their event), false events
(an event naming anyone but the person in view), frames per second of processing
(composition not counted), and the time from a face's first frame to its event.
Everything is seeded: the same arguments give the same scenes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.capture.imageio import read_image
from edge.capture.scenes import face_px_at, hall_background, paste
from edge.device.health import Stats
from edge.errors import InputError
from edge.recognition.match import Gallery, GalleryHolder
from edge.recognition.pipeline import Recognizer
from edge.recognition.process import FrameProcessor
from edge.recognition.track import Confirmation, Tracker
from edge.types import FloatArray, Frame, ImageArray

FPS_IN = 30.0
WALK_M_PER_S = 0.2  # sideways drift of a person in view


@dataclass(frozen=True)
class Cast:
    """Who is enrolled (with which photo), who is shown (with which photo), who never appears."""

    gallery: Gallery
    shown: tuple[tuple[str, ImageArray, bool], ...]  # (identity, probe photo, enrolled)
    considered: int = 0  # candidates for enrolment with a usable enrolment photo
    excluded: int = 0  # of those, left out because their probe photo is not recognised even up close


@dataclass(frozen=True, slots=True)
class Visit:
    person: str
    enrolled: bool
    start: int
    stop: int  # first frame after the person left


def _people(root: Path) -> dict[str, list[Path]]:
    if not root.is_dir():
        raise InputError(f"--root {root}: no such folder (LFW View 1: NAME/NAME_NNNN.jpg, or with images/)")
    images = root / "images" if (root / "images").is_dir() else root
    people = {p.name: sorted(p.glob("*.jpg")) for p in sorted(images.iterdir()) if p.is_dir()}
    people = {k: v for k, v in people.items() if v}
    if not people:
        raise InputError(f"no LFW-style images (NAME/NAME_NNNN.jpg) under {root}")
    return people


def _embed_photo(rec: Recognizer, photo: Path) -> FloatArray | None:
    res = rec.still(read_image(photo))
    if res.aligned is None or not res.aligned.quality.ok:
        return None
    return rec.embed([res.aligned])


def cast(
    rec: Recognizer,
    root: Path,
    enrolled: int,
    strangers: int,
    distractors: int,
    seed: int,
    recognised_close_up: bool = True,
) -> Cast:
    """Pick and enrol people deterministically (an enrolment photo with no usable face is skipped).

    With ``recognised_close_up`` an enrolled person is cast only if their probe photo, seen
    whole, is accepted against their enrolment photo at this gallery's threshold: recall by
    distance then measures range, not how hard some LFW photo pairs are (which ``edge eval
    lfw`` measures). How many candidates that excluded is reported.
    """
    people = _people(root)
    rng = np.random.default_rng(seed)
    multi = [n for n, imgs in people.items() if len(imgs) >= 2]
    if len(multi) < enrolled:
        raise InputError(f"{root}: {len(multi)} people with two photos, {enrolled} wanted")
    order = list(rng.permutation(multi))
    # The threshold of the gallery being built (its size sets the open-set correction).
    threshold = rec.matcher.snapshot(_sized_gallery(enrolled + distractors)).threshold
    entries: list[tuple[str, str | None, FloatArray]] = []
    shown: list[tuple[str, ImageArray, bool]] = []
    considered = excluded = 0
    for name in order:
        if len(shown) == enrolled:
            break
        enrol = _embed_photo(rec, people[name][0])
        if enrol is None:
            continue
        considered += 1
        if recognised_close_up:
            probe = _embed_photo(rec, people[name][1])
            if probe is None or float(probe[0] @ enrol[0]) < threshold:
                excluded += 1
                continue
        entries.append((name, name.replace("_", " "), enrol))
        shown.append((name, read_image(people[name][1]), True))
    if len(shown) < enrolled:
        raise InputError(f"{root}: only {len(shown)} people could be cast, {enrolled} wanted")
    used = {n for n, _, _ in shown}
    others = [
        n for n in rng.permutation(list(people)) if n not in used and n not in set(order[: considered + excluded])
    ]
    stranger_names = others[:strangers]
    for name in others[strangers:]:
        if len(entries) == enrolled + distractors:
            break
        emb = _embed_photo(rec, people[name][0])
        if emb is not None:
            entries.append((name, name.replace("_", " "), emb))
    shown += [(name, read_image(people[name][0]), False) for name in stranger_names]
    mixed = rng.permutation(len(shown))
    return Cast(Gallery.build(entries, version=1, name="range"), tuple(shown[i] for i in mixed), considered, excluded)


def _sized_gallery(n: int) -> Gallery:
    eye = np.eye(max(n, 1), 192, dtype=np.float32)
    return Gallery.build([(f"g{i}", None, eye[i : i + 1]) for i in range(n)])


class _Noise:
    """A few frames of sensor noise, cycled (drawing fresh noise for every 1080p frame is slow)."""

    def __init__(self, height: int, width: int, rng: np.random.Generator, sigma: float = 2.0, count: int = 8) -> None:
        self.fields = [rng.normal(0, sigma, (height, width, 1)).astype(np.int16) for _ in range(count)]
        self.i = 0

    def apply(self, frame: ImageArray) -> ImageArray:
        self.i = (self.i + 1) % len(self.fields)
        out: ImageArray = np.clip(frame.astype(np.int16) + self.fields[self.i], 0, 255).astype(np.uint8)
        return out


def scenes(
    shown: Sequence[tuple[str, ImageArray, bool]],
    width: int,
    height: int,
    distance: float,
    hfov: float,
    frames: int,
    seed: int,
    gap: int = 24,
) -> tuple[list[Visit], Iterator[ImageArray]]:
    """The visits at one distance and a generator of their frames."""
    rng = np.random.default_rng(seed)
    face = face_px_at(distance, width, hfov)
    bg = hall_background(width, height, rng)
    noise = _Noise(height, width, rng)
    visits, plans = [], []
    t = gap
    for name, photo, enrolled in shown:
        margin = face * 1.6
        x = float(rng.uniform(margin, max(margin + 1, width - margin)))
        y = float(rng.uniform(max(face, 0.3 * height), max(face + 1, min(height - face * 1.5, 0.6 * height))))
        vx = float(rng.choice([-1, 1]) * WALK_M_PER_S / FPS_IN * face / 0.16)
        visits.append(Visit(name, enrolled, t, t + frames))
        plans.append((photo, x, y, vx))
        t += frames + gap
    total = t

    def generate() -> Iterator[ImageArray]:
        k = 0
        for i in range(total):
            while k < len(visits) and i >= visits[k].stop:
                k += 1
            frame = bg.copy()
            if k < len(visits) and visits[k].start <= i:
                photo, x, y, vx = plans[k]
                step = i - visits[k].start
                cx = min(max(x + vx * step, face), width - face)
                paste(frame, photo, cx, y, face)
            yield noise.apply(frame)

    return visits, generate()


def run_distance(
    rec: Recognizer, the_cast: Cast, width: int, height: int, distance: float, hfov: float, frames: int, seed: int
) -> dict[str, object]:
    visits, stream = scenes(the_cast.shown, width, height, distance, hfov, frames, seed)
    holder = GalleryHolder(rec.matcher, the_cast.gallery)
    events: list[tuple[int, str, float]] = []
    now = {"t": 0.0}

    def on_confirm(conf: Confirmation, frame: Frame) -> None:
        busy = time.perf_counter() - now["t"]
        events.append((frame.seq, str(conf.match.identity_id), busy))

    proc = FrameProcessor(rec, holder, Tracker(rec.settings.tracking), Stats(window=10), on_confirm)
    spent = 0.0
    n = 0
    for i, image in enumerate(stream):
        now["t"] = time.perf_counter()
        proc(Frame(image, i, i / FPS_IN))
        spent += time.perf_counter() - now["t"]
        n += 1
    found: set[int] = set()
    false_events = 0
    latencies = []
    for i, ident, busy in events:
        k = next((j for j, v in enumerate(visits) if v.start <= i < v.stop + 16), None)
        if k is None or not visits[k].enrolled or visits[k].person != ident:
            false_events += 1
            continue
        if k not in found:
            found.add(k)
            latencies.append(((i - visits[k].start) / FPS_IN + busy) * 1000)
    enrolled = [k for k, v in enumerate(visits) if v.enrolled]
    out: dict[str, object] = {
        "face_px": round(face_px_at(distance, width, hfov), 1),
        "recall": round(len(found) / max(len(enrolled), 1), 3),
        "false_events": false_events,
        "fps": round(n / spent, 1) if spent else 0.0,
        "enrolled_visits": len(enrolled),
        "stranger_visits": len(visits) - len(enrolled),
        "frames": n,
    }
    if latencies:
        out["event_latency_ms_p50"] = round(float(np.percentile(latencies, 50)), 1)
        out["event_latency_ms_p90"] = round(float(np.percentile(latencies, 90)), 1)
        out["event_latency_ms_max"] = round(float(max(latencies)), 1)
    return out


def evaluate(
    rec: Recognizer,
    root: Path,
    width: int,
    height: int,
    distances: Sequence[float] = (1, 2, 3, 4, 5, 6),
    hfov: float = 60.0,
    people: int = 40,
    strangers: int = 20,
    distractors: int = 20,
    frames: int = 40,
    seed: int = 0,
    recognised_close_up: bool = True,
) -> dict[str, object]:
    if not 8 <= width <= 8192 or not 8 <= height <= 8192:
        raise InputError(f"frame size {width}x{height}: width and height must be 8–8192 px")
    if not 10 <= hfov <= 170:
        raise InputError(f"--hfov {hfov:g}: expected a horizontal field of view of 10–170 degrees")
    the_cast = cast(rec, root, people, strangers, distractors, seed, recognised_close_up)
    by_distance = {
        f"{d:g}": run_distance(rec, the_cast, width, height, d, hfov, frames, seed + 1 + k)
        for k, d in enumerate(distances)
    }
    return {
        "width": width,
        "height": height,
        "hfov": hfov,
        "seed": seed,
        "gallery_identities": len(the_cast.gallery),
        "cast": {
            "rule": "recognised close up" if recognised_close_up else "any",
            "candidates": the_cast.considered,
            "excluded_not_recognised_close_up": the_cast.excluded,
        },
        "by_distance": by_distance,
    }
