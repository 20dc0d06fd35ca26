"""Enrolment from a video clip of the one consenting person: a few diverse, sharp looks.

The clip goes through the device's own detection (the region scanner, every frame), tracking
and quality gate, exactly as a camera's frames would; every face that passes the gate is a
candidate look. A clip recorded with the device's own camera gives templates in the device's
own imaging conditions (its lens, its light, its compression).

Refused: a clip in which two people are seen (two faces of similar size wholly in the picture in
the same frame, or looks that fall into two identities that do not match each other): whose
templates would they be? Of the person's looks nearly as good as the best (sharp, frontal,
large: ``GOOD_LOOK``), up to ``max_templates`` are kept: the best first, then each as unlike
those already kept as possible (farthest in embedding space), at least ``MIN_FRAMES_APART``
frames apart. Only embeddings are kept,
never the frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.capture.sources import OpenCVSource, SourceError
from edge.errors import InputError
from edge.recognition.pipeline import Recognizer
from edge.types import AlignedFace, Face, FloatArray
from edge.vision.quality import NOT_A_FACE

CLIP_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
MAX_FRAMES = 1800  # the first minute at 30 frames/s is used: enough looks, bounded work
MIN_FRAMES_APART = 5  # two templates from neighbouring frames are one look twice
MIN_LOOKS = 3  # a track with fewer accepted looks than this is a passer-by, not the person
RIVAL_FRACTION = 0.5  # a second face this large (width, of the main face's) seen at once: two people
RIVAL_FRAMES = 3  # frames with two such faces before the clip is refused (a detector fluke is one frame)
SAME_PERSON = 0.45  # tracks whose looks' means score at least this are one person (LFW View 1: FMR ~1e-3)
GOOD_LOOK = 0.8  # templates are picked among the looks whose quality score is at least this share of the best


EDGE_MARGIN = 0.02  # a face within this share of the picture's side from its edge is cut by it


def rivals(faces: Sequence[Face], main: Face, width: int, height: int) -> list[Face]:
    """The faces besides ``main`` that make a picture ambiguous (whose templates would they be?): at
    least ``RIVAL_FRACTION`` of its width and wholly inside the picture. A face the edge cuts (someone
    beside the subject, half out of the frame) is not the subject, whatever its size."""
    mx, my = EDGE_MARGIN * width, EDGE_MARGIN * height

    def whole(f: Face) -> bool:
        b = f.box
        return b.x0 > mx and b.y0 > my and b.x1 < width - mx and b.y1 < height - my

    return [f for f in faces if f is not main and f.box.width >= RIVAL_FRACTION * main.box.width and whole(f)]


@dataclass(frozen=True)
class ClipResult:
    """What a clip gave: the templates' embeddings and frame numbers, or why it was refused."""

    embeddings: FloatArray | None  # (k, d) or None when refused
    frames: tuple[int, ...]
    looks: int  # faces that passed the quality gate
    read: int  # frames read
    reason: str = ""  # why it was refused (empty when accepted)


@dataclass(frozen=True)
class _Look:
    track: int
    frame: int
    aligned: AlignedFace


def enrol_clip(recognizer: Recognizer, path: Path, max_templates: int = 5) -> ClipResult:
    """The templates of the one person a clip shows (or why there are none)."""
    source = OpenCVSource(str(path))
    try:
        source.open()
    except SourceError as exc:
        raise InputError(f"clip {path}: {exc}") from None
    fps = source.fps if source.fps > 0 else 30.0
    scanner, tracker = recognizer.scanner(), recognizer.tracker()
    looks: list[_Look] = []
    rival_frames = 0
    frame = 0
    try:
        while frame < MAX_FRAMES:
            try:
                image = source.read()
            except SourceError as exc:
                raise InputError(f"clip {path}: {exc}") from None
            if image is None:
                break
            now = frame / fps
            pairs = tracker.update(scanner.detect(image, tracker.followed(now)), now)
            aligned = recognizer.align(image, [f for _, f in pairs]) if pairs else []
            # A second person counts whether or not their face would pass the gate (a turned head is a
            # person); what the face mesh says is no face does not.
            faces = [a.face for a in aligned if not a.quality.reason.startswith(NOT_A_FACE)]
            if len(faces) >= 2:
                main = max(faces, key=lambda f: f.box.width)
                rival_frames += bool(rivals(faces, main, image.shape[1], image.shape[0]))
            looks += [_Look(t.id, frame, a) for (t, _), a in zip(pairs, aligned, strict=True) if a.quality.ok]
            frame += 1
    finally:
        source.close()
    if rival_frames >= RIVAL_FRAMES:
        return ClipResult(
            None,
            (),
            len(looks),
            frame,
            f"two people in view in {rival_frames} frames: a clip must show only the person enrolled",
        )
    return _pick(recognizer, looks, frame, max_templates)


def _pick(recognizer: Recognizer, looks: list[_Look], read: int, max_templates: int) -> ClipResult:
    by_track: dict[int, list[int]] = {}
    for i, look in enumerate(looks):
        by_track.setdefault(look.track, []).append(i)
    tracks = [idx for idx in by_track.values() if len(idx) >= MIN_LOOKS]
    if not tracks:
        return ClipResult(
            None, (), len(looks), read, f"no face passed the quality gate in {MIN_LOOKS} frames of one track"
        )
    kept = [i for idx in tracks for i in idx]
    emb = recognizer.embed([looks[i].aligned for i in kept])
    row = {i: r for r, i in enumerate(kept)}
    means = []
    for idx in tracks:
        m = emb[[row[i] for i in idx]].mean(axis=0)
        means.append(m / np.linalg.norm(m))
    # Tracks of one person (someone who left the view and came back) join; two people refuse the clip.
    person = [0]
    for j in range(1, len(tracks)):
        person.append(next((person[i] for i in range(j) if float(means[i] @ means[j]) >= SAME_PERSON), max(person) + 1))
    if max(person) > 0:
        return ClipResult(
            None,
            (),
            len(looks),
            read,
            f"{max(person) + 1} different people seen: a clip must show only the person enrolled",
        )
    score = np.array([looks[i].aligned.quality.score for i in kept])
    order = [int(c) for c in np.argsort(-score, kind="stable")]
    candidates = [c for c in order if score[c] >= GOOD_LOOK * score[order[0]]]  # nearly as good as the best
    chosen = [candidates[0]]
    while len(chosen) < max_templates:
        best, far = None, -1.0
        for c in candidates:
            if c in chosen or any(abs(looks[kept[c]].frame - looks[kept[s]].frame) < MIN_FRAMES_APART for s in chosen):
                continue
            distance = 1.0 - max(float(emb[c] @ emb[s]) for s in chosen)
            if distance > far:
                best, far = c, distance
        if best is None:
            break
        chosen.append(best)
    chosen.sort(key=lambda c: looks[kept[c]].frame)
    return ClipResult(emb[chosen], tuple(looks[kept[c]].frame for c in chosen), len(looks), read)
