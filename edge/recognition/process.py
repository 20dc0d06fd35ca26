"""The frame loop's work for one frame: scan (crops around tracks, changed windows,
the background sweep) → track → (align → quality → embed → match for the tracks
that need evidence) → confirmations: an identity that K of a track's last M looks
accept, or that the mean of its looks (the fused look) accepts while K looks name it.

Separate from ``App`` so that the service and ``edge bench`` run the same code;
what happens to a confirmation (an event in the outbox, or a benchmark record)
is the caller's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge.device.health import Stats
from edge.device.settings import DetectionSettings, QualitySettings, TrackingSettings
from edge.recognition.match import GalleryHolder, GallerySnapshot
from edge.recognition.pipeline import Recognizer
from edge.recognition.track import Confirmation, Track, Tracker
from edge.types import AlignedFace, FloatArray, Frame
from edge.vision.quality import NOT_A_FACE
from edge.vision.scan import Scanner

OnConfirm = Callable[[Confirmation, Frame], None]
OnSeen = Callable[[set[str]], None]  # presence keeps its own (wall) clock: frame time may be a file's


@dataclass(frozen=True)
class FacesToEmbed:
    """One frame's faces that passed the quality gate and now need embedding: the first half of a
    frame's work (``FrameProcessor.begin``), so the faces of several cameras go through one batch."""

    frame: Frame
    good: tuple[tuple[Track, AlignedFace], ...]
    started: float  # perf_counter when the frame's work began
    ready: float  # … and when its faces were aligned and judged


def camera_pipeline(
    recognizer: Recognizer,
    gallery: GalleryHolder,
    on_confirm: OnConfirm,
    on_seen: OnSeen | None = None,
    *,
    stats: Stats | None = None,
    tracking: TrackingSettings | None = None,
    detection: DetectionSettings | None = None,
    limits: QualitySettings | None = None,
) -> FrameProcessor:
    """The one way a camera's face pipeline is put together (the service's cameras and every benchmark):
    the recognizer's models, a tracker of this embedder (``tracking``: default the device's), a region
    scanner of its own (``detection`` and the gate's smallest face), the quality gate ``limits`` (default the
    device's, its head-turn limit the one the tables measured) and statistics (``stats``: default its own)."""
    gate = recognizer.limits if limits is None else limits
    return FrameProcessor(
        recognizer,
        gallery,
        recognizer.tracker(tracking),
        stats if stats is not None else Stats(window=10),
        on_confirm,
        on_seen,
        scanner=recognizer.scanner(detection, gate.min_face_px),
        limits=gate,
    )


class FrameProcessor:
    """One camera's work per frame: its scanner, its tracker and quality gate, the device's recognizer
    and gallery. ``frame`` does all of it; ``begin`` and ``finish`` are its two halves, with the
    embedding between them, for a loop that batches the faces of several cameras (``process_frames``)."""

    def __init__(
        self,
        recognizer: Recognizer,
        gallery: GalleryHolder,
        tracker: Tracker,
        stats: Stats,
        on_confirm: OnConfirm,
        on_seen: OnSeen | None = None,
        scanner: Scanner | None = None,
        limits: QualitySettings | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.gallery = gallery
        self.tracker = tracker
        self.stats = stats
        self.on_confirm = on_confirm
        self.on_seen = on_seen
        self.scanner = scanner or recognizer.scanner()
        self.limits = limits
        self.frames = 0

    def __call__(self, frame: Frame) -> None:
        process_frames([(self, frame)])

    def begin(self, frame: Frame) -> FacesToEmbed:
        """Scan, track, align and judge: the faces that need a look this frame and passed the gate."""
        clock = time.perf_counter
        tracker, now = self.tracker, frame.ts
        t0 = clock()
        if frame.still:  # a photo of its own: nothing carries over, every window is looked at
            tracker.new_scene()
            faces = self.scanner.detect_still(frame.image)
        else:
            faces = self.scanner.detect(frame.image, tracker.followed(now))
        t1 = clock()
        pairs = tracker.update(faces, now, frame.still)
        if self.on_seen is not None:  # identities of confirmed tracks in view this frame (presence)
            seen = {ident for t in tracker.tracks if t.missed == 0 for ident in t.reported}
            if seen:
                self.on_seen(seen)
        need = [(t, f) for t, f in pairs if tracker.needs_evidence(t, now)]
        self.frames += 1
        self.stats.count(len(faces))
        self.stats.add("detect", t1 - t0)
        good = []
        if need:
            aligned = self.recognizer.align(frame.image, [f for _, f in need], self.limits)
            self.stats.add("align", (clock() - t1) / len(need))
            for (track, _), a in zip(need, aligned, strict=True):
                if a.quality.ok:
                    good.append((track, a))
                else:
                    tracker.defer(track, now, not_a_face=a.quality.reason.startswith(NOT_A_FACE))
        return FacesToEmbed(frame, tuple(good), t0, clock())

    def finish(self, pending: FacesToEmbed, emb: FloatArray, snapshot: GallerySnapshot) -> None:
        """Match the pending faces' embeddings against ``snapshot`` and confirm: the second half of a frame's work."""
        clock = time.perf_counter
        tracker, now, good = self.tracker, pending.frame.ts, pending.good
        if good:
            t3 = clock()
            matches = snapshot.match(
                emb, [a.quality.face_px for _, a in good], conditions=[a.quality.condition for _, a in good]
            )
            self.stats.add("match", clock() - t3)
            for (seen, a), m, vector in zip(good, matches, emb, strict=True):
                track = tracker.same_person(seen, vector, now)  # someone else in the same spot: a new track
                conf = tracker.add_evidence(track, m, a.quality.score, a.face.box, now, vector, a.quality.face_px)
                fused = tracker.fused(track) if conf is None else None
                if fused is not None:  # the mean of its looks, judged with the tables of fused looks
                    (fm,) = snapshot.match(fused.embedding[None], [fused.face_px], fused.looks, [fused.condition])
                    conf = tracker.add_fused(track, fm, now)
                if conf is not None:
                    self.on_confirm(conf, pending.frame)
        self.stats.add("frame", clock() - pending.started)


def process_frames(work: Sequence[tuple[FrameProcessor, Frame]]) -> None:
    """One frame of each of several cameras: every camera's faces embedded in one batch, judged by one
    gallery snapshot (gallery, thresholds and version agree for all of them)."""
    if not work:
        return
    pending = [proc.begin(frame) for proc, frame in work]
    crops = [a for p in pending for _, a in p.good]
    recognizer = work[0][0].recognizer
    t2 = time.perf_counter()
    emb = recognizer.embed(crops)
    if crops:
        per_face = (time.perf_counter() - t2) / len(crops)
        for (proc, _), lk in zip(work, pending, strict=True):
            for _ in lk.good:
                proc.stats.add("embed", per_face)
    snapshot = work[0][0].gallery.current
    start = 0
    for (proc, _), lk in zip(work, pending, strict=True):
        proc.finish(
            lk, emb[start : start + len(lk.good)] if lk.good else np.zeros((0, emb.shape[1]), np.float32), snapshot
        )
        start += len(lk.good)
