"""``edge eval range``: how far away the appliance recognises people, at any frame size.

Scenes are composited from LFW View 1 people (``edge.demo.scenes``): each person
stands at a given distance from a camera with a ``hfov`` lens (60° by default), in view
for ``frames`` frames, then nobody for a while (tracks end). Two scene styles:

- ``hall``: a hall of walls, doors and frames, the portrait pasted through a soft
  ellipse, drifting sideways at walking-by speed, fresh sensor noise every frame;
- ``wall``: a smooth textured wall (grey 60-190 per 60 px cell, tint ±12, fixed noise),
  the head of the portrait pasted through a feathered ellipse, drifting up to 1.5 px a
  frame across and 0.5 down, 20 empty frames between visits: where BlazeFace draws
  large false boxes around the faces.

``codec`` passes the frames through a video encoder and back (``mp4v``: a compressed
stream, as from a camera; ``ffv1``: lossless), as ``edge run`` would read a clip.

Enrolled people are enrolled from ``photos`` of their photos (the device's own enrolment)
and shown with another one. **Everyone cast counts**: a person whose enrolment photos
all fail the quality gate is still shown, and is a miss. The ``close-up`` cast rule (an
option, named in the output) casts only people whose shown photo, seen whole, is accepted
against their enrolment: recall then measures range alone. Strangers (never enrolled) are
shown too, and the gallery also holds distractors who never appear. The frames go through
the service's own frame loop (``FrameProcessor``: scanner, tracker, quality gate, embedder,
matcher, confirmation) with timestamps of a 30 fps camera.

Per distance: recall (enrolled visits that produced their event), false events (an event
naming anyone but the person in view), frames per second of processing (composition not
counted), and the time from a face's first frame to its event. Everything is seeded: the
same arguments give the same scenes.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.capture.imageio import read_image
from edge.demo.scenes import face_px_at, hall_background, paste, paste_head, smooth_background
from edge.errors import InputError
from edge.gallery.build import Entry, gallery_of
from edge.recognition.match import Gallery, GalleryHolder
from edge.recognition.pipeline import Recognizer
from edge.recognition.process import camera_pipeline, process_frames
from edge.recognition.track import Confirmation
from edge.types import FloatArray, Frame, ImageArray
from edge_lab.lfw import people_photos

FPS_IN = 30.0
WALK_M_PER_S = 0.2  # sideways drift of a person in view


CAST_RULES = ("any", "close-up")


@dataclass(frozen=True)
class Cast:
    """Who is enrolled (with which photos), who is shown (with which photo), who never appears."""

    gallery: Gallery
    shown: tuple[tuple[str, ImageArray, bool], ...]  # (identity, probe photo, enrolled)
    considered: int = 0  # candidates looked at for enrolment
    excluded: int = 0  # of those, left out by the close-up rule (0 with the rule 'any')
    not_enrolled: int = 0  # cast people none of whose enrolment photos passed the quality gate (shown all the same)
    photos: int = 1
    rule: str = "any"


@dataclass(frozen=True, slots=True)
class Visit:
    person: str
    enrolled: bool
    start: int
    stop: int  # first frame after the person left


def _embed_photo(rec: Recognizer, photo: Path) -> FloatArray | None:
    res = rec.still(read_image(photo))
    if res.aligned is None or not res.aligned.quality.ok:
        return None
    return rec.embed([res.aligned])


def _template(rec: Recognizer, photos: Sequence[Path]) -> FloatArray | None:
    """The embeddings of the photos that pass the device's enrolment (None: none does)."""
    vecs = [e for e in (_embed_photo(rec, p) for p in photos) if e is not None]
    return np.concatenate(vecs) if vecs else None


def cast(
    rec: Recognizer,
    root: Path,
    enrolled: int,
    strangers: int,
    distractors: int,
    seed: int,
    photos: int = 1,
    rule: str = "any",
) -> Cast:
    """Pick and enrol people deterministically: ``enrolled`` people with at least ``photos`` + 1
    photos, each enrolled from ``photos`` of them and shown with the next one.

    With the rule ``close-up`` a person is cast only if their shown photo, seen whole, is accepted
    against their enrolment at this gallery's threshold: recall by distance then measures range,
    not how hard some LFW photo pairs are. How many candidates that excluded is reported. With
    ``any`` (the default) everyone picked is cast, even one whose enrolment photos all fail.
    """
    if rule not in CAST_RULES:
        raise InputError(f"--cast {rule}: expected one of {', '.join(CAST_RULES)}")
    if photos < 1:
        raise InputError(f"--photos {photos}: at least one enrolment photo")
    people = people_photos(root)
    rng = np.random.default_rng(seed)
    able = [n for n, imgs in people.items() if len(imgs) >= photos + 1]
    if len(able) < enrolled:
        raise InputError(f"{root}: {len(able)} people with {photos + 1} photos or more, {enrolled} wanted")
    order = [str(n) for n in rng.permutation(able)]
    matcher = rec.matcher
    entries: list[tuple[str, str | None, FloatArray]] = []
    shown: list[tuple[str, ImageArray, bool]] = []
    considered = excluded = not_enrolled = 0
    for name in order:
        if len(shown) == enrolled:
            break
        considered += 1
        template = _template(rec, people[name][:photos])
        probe_path = people[name][photos]
        if rule == "close-up":
            probe = _embed_photo(rec, probe_path)
            if template is None or probe is None:
                excluded += 1
                continue
            mean = template.mean(axis=0)
            table = matcher.calibration.largest.table_for(len(template), 1)
            if float(probe[0] @ (mean / np.linalg.norm(mean))) < table.threshold_for(
                matcher.per_identity_fmr(enrolled + distractors)
            ):
                excluded += 1
                continue
        if template is None:
            not_enrolled += 1  # shown all the same: the device cannot know them, and that counts
        else:
            entries.append((name, name.replace("_", " "), template))
        shown.append((name, read_image(probe_path), True))
    if len(shown) < enrolled:
        raise InputError(f"{root}: only {len(shown)} people could be cast, {enrolled} wanted")
    used = set(order[:considered])
    others = [str(n) for n in rng.permutation(list(people)) if n not in used]
    stranger_names = others[:strangers]
    for name in others[strangers:]:
        if len(entries) >= enrolled - not_enrolled + distractors:
            break
        emb = _template(rec, people[name][:photos])
        if emb is not None:
            entries.append((name, name.replace("_", " "), emb))
    shown += [(name, read_image(people[name][0]), False) for name in stranger_names]
    mixed = rng.permutation(len(shown))
    gallery = gallery_of((Entry(ident, label, emb) for ident, label, emb in entries), version=1, name="range")
    return Cast(gallery, tuple(shown[i] for i in mixed), considered, excluded, not_enrolled, photos, rule)


class _Noise:
    """A few frames of sensor noise, cycled (drawing fresh noise for every 1080p frame is slow)."""

    def __init__(self, height: int, width: int, rng: np.random.Generator, sigma: float = 2.0, count: int = 8) -> None:
        self.fields = [rng.normal(0, sigma, (height, width, 1)).astype(np.int16) for _ in range(count)]
        self.i = 0

    def apply(self, frame: ImageArray) -> ImageArray:
        self.i = (self.i + 1) % len(self.fields)
        out: ImageArray = np.clip(frame.astype(np.int16) + self.fields[self.i], 0, 255).astype(np.uint8)
        return out


SCENES = ("hall", "wall")
CODECS = {"none": None, "mp4v": ("mp4v", ".mp4"), "ffv1": ("FFV1", ".mkv")}


def scenes(
    shown: Sequence[tuple[str, ImageArray, bool]],
    width: int,
    height: int,
    distance: float,
    hfov: float,
    frames: int,
    seed: int,
    style: str = "hall",
) -> tuple[list[Visit], Iterator[ImageArray]]:
    """The visits at one distance and a generator of their frames."""
    if style not in SCENES:
        raise InputError(f"--scene {style}: expected one of {', '.join(SCENES)}")
    rng = np.random.default_rng(seed)
    face = face_px_at(distance, width, hfov)
    wall = style == "wall"
    bg = smooth_background(width, height, rng) if wall else hall_background(width, height, rng)
    noise = None if wall else _Noise(height, width, rng)
    gap = 20 if wall else 24
    visits, plans = [], []
    t = gap
    for name, photo, enrolled in shown:
        margin = face * 1.6
        x = float(rng.uniform(margin, max(margin + 1, width - margin)))
        y = float(rng.uniform(max(face, 0.3 * height), max(face + 1, min(height - face * 1.5, 0.6 * height))))
        if wall:  # up to 1.5 px a frame across and 0.5 down, whatever the distance
            vx, vy = float(rng.uniform(-1.5, 1.5)), float(rng.uniform(0.0, 0.5))
        else:  # walking by: 0.2 m/s sideways, in pixels at this distance
            vx, vy = float(rng.choice([-1, 1]) * WALK_M_PER_S / FPS_IN * face / 0.16), 0.0
        visits.append(Visit(name, enrolled, t, t + frames))
        plans.append((photo, x, y, vx, vy))
        t += frames + gap
    total = t

    def generate() -> Iterator[ImageArray]:
        k = 0
        for i in range(total):
            while k < len(visits) and i >= visits[k].stop:
                k += 1
            frame = bg.copy()
            if k < len(visits) and visits[k].start <= i:
                photo, x, y, vx, vy = plans[k]
                step = i - visits[k].start
                cx = min(max(x + vx * step, face), width - face)
                cy = min(max(y + vy * step, face), height - face)
                (paste_head if wall else paste)(frame, photo, cx, cy, face)
            yield frame if noise is None else noise.apply(frame)

    return visits, generate()


def through_codec(stream: Iterator[ImageArray], width: int, height: int, codec: str) -> Iterator[ImageArray]:
    """The frames as a camera's stream would deliver them: written by OpenCV's ``codec`` writer at its
    default quality and read back (``none``: as they are)."""
    if codec not in CODECS:
        raise InputError(f"--codec {codec}: expected one of {', '.join(CODECS)}")
    spec = CODECS[codec]
    if spec is None:
        yield from stream
        return
    fourcc, suffix = spec
    with tempfile.TemporaryDirectory(prefix="edge-range-") as folder:
        path = Path(folder) / f"scene{suffix}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), FPS_IN, (width, height))
        if not writer.isOpened():
            raise InputError(f"--codec {codec}: OpenCV has no {fourcc} writer here")
        for frame in stream:
            writer.write(frame)
        writer.release()
        cap = cv2.VideoCapture(str(path))
        try:
            while True:
                ok, decoded = cap.read()
                if not ok:
                    break
                yield np.asarray(decoded, np.uint8)
        finally:
            cap.release()


def run_distance(
    rec: Recognizer,
    the_cast: Cast,
    width: int,
    height: int,
    distance: float,
    hfov: float,
    frames: int,
    seed: int,
    style: str = "hall",
    codec: str = "none",
    cameras: int = 1,
) -> dict[str, object]:
    """One distance: the scenes through the service's frame processing. With ``cameras`` > 1, as many
    cameras at once on one device (one loop, one batch of faces a round): camera k shows the cast in
    another order (starting k/N of the way through it) in a scene of its own; recall per camera and
    over all of them."""
    holder = GalleryHolder(rec.matcher, the_cast.gallery)
    shown = list(the_cast.shown)
    runs = []
    for c in range(cameras):
        turn = c * len(shown) // cameras
        visits, generated = scenes(
            shown[turn:] + shown[:turn], width, height, distance, hfov, frames, seed + 1000 * c, style
        )
        events: list[tuple[int, str, float]] = []
        runs.append((visits, iter(through_codec(generated, width, height, codec)), events))
    started = {"t": 0.0}

    def recorder(events: list[tuple[int, str, float]]) -> Callable[[Confirmation, Frame], None]:
        def on_confirm(conf: Confirmation, frame: Frame) -> None:
            events.append((frame.seq, str(conf.match.identity_id), time.perf_counter() - started["t"]))

        return on_confirm

    procs = [camera_pipeline(rec, holder, recorder(ev)) for _, _, ev in runs]
    spent, n = 0.0, 0
    for i in itertools.count():
        images = [next(stream, None) for _, stream, _ in runs]
        if any(im is None for im in images):  # every camera's scene has as many frames: they end together
            break
        started["t"] = time.perf_counter()
        process_frames(
            [(proc, Frame(im, i, i / FPS_IN)) for proc, im in zip(procs, images, strict=True) if im is not None]
        )
        spent += time.perf_counter() - started["t"]
        n += 1
    per_camera = [_score(visits, events) for visits, _, events in runs]
    enrolled = sum(c.enrolled_visits for c in per_camera)
    latencies = [lat for c in per_camera for lat in c.latencies]
    out: dict[str, object] = {
        "face_px": round(face_px_at(distance, width, hfov), 1),
        "recall": round(sum(len(c.found) for c in per_camera) / max(enrolled, 1), 3),
        "false_events": sum(c.false_events for c in per_camera),
        "fps": round(n / spent, 1) if spent else 0.0,  # frames per second of each camera
        "enrolled_visits": enrolled,
        "stranger_visits": sum(c.stranger_visits for c in per_camera),
        "frames": n,
    }
    if latencies:
        out["event_latency_ms_p50"] = round(float(np.percentile(latencies, 50)), 1)
        out["event_latency_ms_p90"] = round(float(np.percentile(latencies, 90)), 1)
        out["event_latency_ms_max"] = round(float(max(latencies)), 1)
    if cameras > 1:
        out["by_camera"] = [
            {
                "camera": k,
                "recall": round(len(c.found) / max(c.enrolled_visits, 1), 3),
                "false_events": c.false_events,
                "event_latency_ms_p90": round(float(np.percentile(c.latencies, 90)), 1) if c.latencies else None,
            }
            for k, c in enumerate(per_camera)
        ]
    return out


@dataclass(frozen=True)
class CameraScore:
    found: set[int]  # enrolled visits that got their event
    false_events: int
    latencies: list[float]  # ms, face's first frame → its event
    enrolled_visits: int
    stranger_visits: int


def _score(visits: Sequence[Visit], events: Sequence[tuple[int, str, float]]) -> CameraScore:
    """One camera's visits against its events: which enrolled visits got their event, false events, latencies."""
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
    enrolled = sum(v.enrolled for v in visits)
    return CameraScore(found, false_events, latencies, enrolled, len(visits) - enrolled)


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
    rule: str = "any",
    photos: int = 1,
    style: str = "hall",
    codec: str = "none",
    cameras: int = 1,
) -> dict[str, object]:
    if not 1 <= cameras <= 16:
        raise InputError(f"--cameras {cameras}: 1 to 16")
    if not 8 <= width <= 8192 or not 8 <= height <= 8192:
        raise InputError(f"frame size {width}x{height}: width and height must be 8–8192 px")
    if not 10 <= hfov <= 170:
        raise InputError(f"--hfov {hfov:g}: expected a horizontal field of view of 10–170 degrees")
    if style not in SCENES or codec not in CODECS:
        raise InputError(f"--scene {style} / --codec {codec}: expected {'|'.join(SCENES)} / {'|'.join(CODECS)}")
    the_cast = cast(rec, root, people, strangers, distractors, seed, photos, rule)
    by_distance = {
        f"{d:g}": run_distance(rec, the_cast, width, height, d, hfov, frames, seed + 1 + k, style, codec, cameras)
        for k, d in enumerate(distances)
    }
    return {
        "width": width,
        "height": height,
        "hfov": hfov,
        "seed": seed,
        "scene": style,
        "codec": codec,
        "cameras": cameras,
        "gallery_identities": len(the_cast.gallery),
        "cast": {
            "rule": the_cast.rule,
            "photos": the_cast.photos,
            "people": people,
            "candidates": the_cast.considered,
            "excluded_by_rule": the_cast.excluded,
            "not_enrolled": the_cast.not_enrolled,
        },
        "by_distance": by_distance,
    }
