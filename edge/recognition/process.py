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
from collections.abc import Callable

from edge.device.health import Stats
from edge.recognition.match import GalleryHolder
from edge.recognition.pipeline import Recognizer
from edge.recognition.track import Confirmation, Tracker
from edge.types import Frame
from edge.vision.quality import NOT_A_FACE

OnConfirm = Callable[[Confirmation, Frame], None]
OnSeen = Callable[[set[str]], None]  # presence keeps its own (wall) clock: frame time may be a file's


class FrameProcessor:
    def __init__(
        self,
        rec: Recognizer,
        gallery: GalleryHolder,
        tracker: Tracker,
        stats: Stats,
        on_confirm: OnConfirm,
        on_seen: OnSeen | None = None,
    ) -> None:
        self.rec = rec
        self.gallery = gallery
        self.tracker = tracker
        self.stats = stats
        self.on_confirm = on_confirm
        self.on_seen = on_seen
        self.scanner = rec.scanner()
        self.frames = 0

    def __call__(self, frame: Frame) -> None:
        clock = time.perf_counter
        rec, tracker, now = self.rec, self.tracker, frame.ts
        t0 = clock()
        faces = self.scanner.detect(frame.image, tracker.followed(now))
        t1 = clock()
        pairs = tracker.update(faces, now)
        if self.on_seen is not None:  # identities of confirmed tracks in view this frame (presence)
            seen = {ident for t in tracker.tracks if t.missed == 0 for ident in t.reported}
            if seen:
                self.on_seen(seen)
        need = [(t, f) for t, f in pairs if tracker.needs_evidence(t, now)]
        self.frames += 1
        self.stats.count(len(faces))
        self.stats.add("detect", t1 - t0)
        if need:
            aligned = rec.align(frame.image, [f for _, f in need])
            t2 = clock()
            self.stats.add("align", (t2 - t1) / len(need))
            good = []
            for (track, _), a in zip(need, aligned, strict=True):
                if a.quality.ok:
                    good.append((track, a))
                else:
                    tracker.defer(track, now, not_a_face=a.quality.reason.startswith(NOT_A_FACE))
            if good:
                emb = rec.embed([a for _, a in good])
                t3 = clock()
                # One snapshot for the whole frame: gallery, thresholds and version agree.
                snap = self.gallery.current
                matches = snap.match(
                    emb, [a.quality.face_px for _, a in good], conditions=[a.quality.condition for _, a in good]
                )
                self.stats.add("embed", (t3 - t2) / len(good))
                self.stats.add("match", clock() - t3)
                for (track, a), m, vector in zip(good, matches, emb, strict=True):
                    conf = tracker.add_evidence(track, m, a.quality.score, a.face.box, now, vector, a.quality.face_px)
                    fused = tracker.fused(track) if conf is None else None
                    if fused is not None:  # the mean of its looks, judged with the tables of fused looks
                        (fm,) = snap.match(fused.embedding[None], [fused.face_px], fused.looks, [fused.condition])
                        conf = tracker.add_fused(track, fm, now)
                    if conf is not None:
                        self.on_confirm(conf, frame)
        self.stats.add("frame", clock() - t0)
