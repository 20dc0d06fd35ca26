"""Tracks across frames, evidence per track, K-of-M confirmation and cooldown.

A face is associated with a track by box overlap (IoU, greedy on the IoU matrix).
The embedder runs only for tracks that need evidence: a new or unconfirmed track
(every frame until its window of M embeddings is full, and while a recent match
scored near its threshold for its first ``undecided_eager_s``; then every
``undecided_recheck_s`` while one did, else every ``stranger_recheck_s``), and a
confirmed track every ``recheck_s``. Between those looks a face that did not move
costs no detector run either (``edge.vision.scan``).

An identity is confirmed for a track when at least K of the track's last M
matches accepted that same identity. One event per (track, identity); a
per-identity cooldown stops floods from a face that loses and regains its track.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.device.settings import TrackingSettings
from edge.types import Box, Face, FloatArray, Follow, Match

FOLLOW_MISSED = 3  # a track missed more frames in a row than this is re-detected in its crop less often
RESIZED = 1.4  # a track's box this many times larger or smaller than the last is another detection of it
NON_FACE_FOLLOW_FRAMES = 10  # a track called "not a face" is re-detected in its crop in its first frames only


@dataclass(frozen=True, slots=True)
class Vote:
    """One look at a track's face: its match, quality and box, and (for the fused look) its embedding."""

    match: Match
    quality: float
    box: Box
    embedding: FloatArray | None = None
    face_px: float = float("inf")


@dataclass(frozen=True, slots=True)
class FusedLook:
    """The mean of a track's looks in its window: one probe that carries the evidence of all of them.
    Judged with the tables of fused looks, at the band of its smallest face, in its looks' condition."""

    embedding: FloatArray  # (d,) unit vector
    face_px: float
    condition: str
    looks: int


@dataclass
class Track:
    id: int
    box: Box
    last_seen: float
    first_seen: float
    missed: int = 0
    last_embed: float = float("-inf")
    retry_at: float = float("-inf")
    votes: deque[Vote] = field(default_factory=deque)
    reported: set[str] = field(default_factory=set)
    non_face: bool = False  # the face mesh's last look said this is not a face: its crop is looked at less often
    age: int = 0  # frames since it began
    face: Face | None = None  # the face it was last found as
    unchanged_frames: int = 0  # frames in a row it was kept at ``face`` because nothing there changed
    still: bool = False  # a face of a still photo: one accepted look confirms it (as edge identify judges)

    @property
    def confirmed(self) -> bool:
        return bool(self.reported)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """An identity confirmed for a track: what a match event is made of."""

    track_id: int
    match: Match  # the best agreeing match
    quality: float
    box: Box
    agreed: int
    seen: int
    first_seen: float  # when the track began: confirmation latency = now - first_seen
    fused: int = 0  # looks whose mean matched (0: confirm_k looks matched one by one)


def _resized(a: Box, b: Box) -> bool:
    """Boxes of very different sizes (``RESIZED``): a face's box changes far less from one frame to the next."""
    sa, sb = max(a.width, a.height), max(b.width, b.height)
    return max(sa, sb) >= RESIZED * max(min(sa, sb), 1e-9)


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    if not a or not b:
        return np.zeros((len(a), len(b)))
    A = np.array([(x.x0, x.y0, x.x1, x.y1) for x in a])[:, None, :]
    B = np.array([(x.x0, x.y0, x.x1, x.y1) for x in b])[None, :, :]
    iw = np.clip(np.minimum(A[..., 2], B[..., 2]) - np.maximum(A[..., 0], B[..., 0]), 0, None)
    ih = np.clip(np.minimum(A[..., 3], B[..., 3]) - np.maximum(A[..., 1], B[..., 1]), 0, None)
    inter = iw * ih
    area_a = (A[..., 2] - A[..., 0]) * (A[..., 3] - A[..., 1])
    area_b = (B[..., 2] - B[..., 0]) * (B[..., 3] - B[..., 1])
    out: np.ndarray = inter / np.maximum(area_a + area_b - inter, 1e-9)
    return out


class Tracker:
    """Follows faces from frame to frame and decides confirmations. ``split_below``: a look whose embedding
    is less like its track's earlier looks than this (a score measured for the embedder: below nearly every
    same-person pair of photos) is someone else who stepped into the same spot; their track begins anew."""

    def __init__(self, params: TrackingSettings, split_below: float | None = None) -> None:
        self.settings = params
        self.split_below = split_below
        self.splits = 0
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)
        self._last_event: dict[str, float] = {}

    def new_scene(self) -> None:
        """The next frame shows another scene (a photo of its own): every track ends. The cooldown of an
        identity already reported still holds."""
        self.tracks = []

    def update(self, faces: Sequence[Face], now: float, still: bool = False) -> list[tuple[Track, Face]]:
        """Associate this frame's faces with tracks; returns (track, face) pairs. ``still``: the frame is a
        photo of its own (its faces' tracks are confirmed by one accepted look)."""
        iou = iou_matrix([t.box for t in self.tracks], [f.box for f in faces])
        pairs: list[tuple[Track, Face]] = []
        used_t: set[int] = set()
        used_f: set[int] = set()
        if iou.size:
            for flat in np.argsort(-iou, axis=None):
                ti, fi = divmod(int(flat), iou.shape[1])
                if iou[ti, fi] < self.settings.iou_threshold:
                    break
                if ti in used_t or fi in used_f:
                    continue
                used_t.add(ti)
                used_f.add(fi)
                track = self.tracks[ti]
                if track.face is not None and _resized(track.face.box, faces[fi].box):
                    # Another box for it (a face found inside a loose box around it): what was said of
                    # the old box (not a face, try later) is not said of this one.
                    track.non_face, track.retry_at = False, float("-inf")
                track.box, track.last_seen, track.missed = faces[fi].box, now, 0
                track.unchanged_frames = track.unchanged_frames + 1 if faces[fi] is track.face else 0
                track.face = faces[fi]
                pairs.append((track, faces[fi]))
        for ti, track in enumerate(self.tracks):
            track.age += 1
            if ti not in used_t:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.settings.max_missed_frames]
        for fi, face in enumerate(faces):
            if fi not in used_f:
                votes: deque[Vote] = deque(maxlen=1 if still else self.settings.confirm_m)
                track = Track(next(self._ids), face.box, now, now, votes=votes, face=face, still=still)
                self.tracks.append(track)
                pairs.append((track, face))
        return pairs

    def same_person(self, track: Track, embedding: FloatArray | None, now: float) -> Track:
        """``track``, or when this look is someone else's (see ``split_below``) a new track for it that
        replaces the old one (which ends: what it reported stays reported, the cooldown holds)."""
        earlier = [v.embedding for v in track.votes if v.embedding is not None]
        if self.split_below is None or embedding is None or not earlier:
            return track
        mean = np.mean(earlier, axis=0)
        if float(embedding @ mean) / max(float(np.linalg.norm(mean)), 1e-12) >= self.split_below:
            return track
        new = Track(
            next(self._ids),
            track.box,
            now,
            now,
            votes=deque(maxlen=track.votes.maxlen),
            face=track.face,
            still=track.still,
        )
        self.tracks = [new if t is track else t for t in self.tracks]
        self.splits += 1
        return new

    def needs_evidence(self, track: Track, now: float) -> bool:
        if now < track.retry_at:
            return False
        if track.confirmed:
            return now - track.last_embed >= self.settings.recheck_s
        if len(track.votes) < (track.votes.maxlen or self.settings.confirm_m):
            return True
        undecided = any(v.match.score >= v.match.threshold - self.settings.undecided_margin for v in track.votes)
        if undecided and now - track.first_seen < self.settings.undecided_eager_s:
            return True  # a face near its threshold, just arrived: every look counts towards a prompt event
        return now - track.last_embed >= (
            self.settings.undecided_recheck_s if undecided else self.settings.stranger_recheck_s
        )

    def defer(self, track: Track, now: float, not_a_face: bool = False) -> None:
        """The face failed the quality gate: try again a little later, not every frame, except
        in a new track's first ``undecided_eager_s`` (a head turned just past the limit, a blur:
        the next frame may pass, and those first looks decide how soon an event comes).
        A detection the face mesh says is not a face is followed in its own crop less often until a
        later look says it is one (``followed``)."""
        eager = not not_a_face and now - track.first_seen < self.settings.undecided_eager_s
        track.retry_at = now if eager else now + self.settings.stranger_recheck_s / 5
        track.non_face = not_a_face

    def followed(self, now: float) -> list[Follow]:
        """The live tracks worth re-detecting in a crop of their own: faces, every frame while
        seen within the last ``FOLLOW_MISSED`` frames, then every ``FOLLOW_MISSED``-th frame
        until the track ends (someone who left costs a third as much while their track lives on).
        One the face mesh called "not a face" is re-detected every ``FOLLOW_MISSED``-th frame of its
        first ``NON_FACE_FOLLOW_FRAMES``: a loose box a coarse window drew around a far face when it
        came into view holds the face, which its crop resolves; clutter is then left alone. A track seen last frame that needs no evidence now
        offers its face as ``unchanged_face``: the scanner keeps it there without a detector run if nothing
        in it changed since; a lost one is looked for only where its crop changed since it was lost.
        Only a track the quality gate has passed (``face``) explains the motion around it: a box it has
        not (a wall boxed whole, a head turned) may hide the face that moved there."""
        return [
            Follow(
                t.box,
                t.face if t.missed == 0 and t.face is not None and not self.needs_evidence(t, now) else None,
                t.unchanged_frames,
                t.missed,
                bool(t.votes) and not t.non_face,  # a face the quality gate passed explains the motion around it
            )
            for t in self.tracks
            if (t.missed <= FOLLOW_MISSED or t.missed % FOLLOW_MISSED == 0)
            and (not t.non_face or (t.age < NON_FACE_FOLLOW_FRAMES and t.age % FOLLOW_MISSED == 0))
        ]

    def add_evidence(
        self,
        track: Track,
        match: Match,
        quality: float,
        box: Box,
        now: float,
        embedding: FloatArray | None = None,
        face_px: float = float("inf"),
    ) -> Confirmation | None:
        """Record one look at a track; a Confirmation when an identity newly reaches K of M accepting looks."""
        track.last_embed = now
        track.non_face = False  # it passed the quality gate: a face
        track.votes.append(Vote(match, quality, box, embedding, face_px))
        if not match.accepted or match.identity_id is None or match.identity_id in track.reported:
            return None
        ident = match.identity_id
        agreeing = [v for v in track.votes if v.match.accepted and v.match.identity_id == ident]
        if len(agreeing) < (1 if track.still else self.settings.confirm_k):
            return None
        best = max(agreeing, key=lambda v: v.match.score)
        return self._confirm(track, best.match, best.quality, box, len(agreeing), now)

    def fused(self, track: Track) -> FusedLook | None:
        """The mean of the track's looks in its window, when it is worth matching: at least confirm_k
        looks (two at the least) that name one identity not yet reported as their best match."""
        looks = [v for v in track.votes if v.embedding is not None]
        vectors = [v.embedding for v in track.votes if v.embedding is not None]
        if len(looks) < max(self.settings.confirm_k, 2):
            return None
        named = Counter(v.match.identity_id for v in looks if v.match.identity_id is not None)
        if not any(n >= self.settings.confirm_k and ident not in track.reported for ident, n in named.items()):
            return None
        mean = np.mean(vectors, axis=0)
        grey = sum(v.match.condition == "grey" for v in looks)
        return FusedLook(
            (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32),
            min(v.face_px for v in looks),
            "grey" if 2 * grey >= len(looks) else "colour",
            len(looks),
        )

    def add_fused(self, track: Track, match: Match, now: float) -> Confirmation | None:
        """The fused look's match: a Confirmation when it accepts an identity that at least confirm_k of
        the track's looks name as their best (K of M stays the rule against one-frame flukes)."""
        if not match.accepted or match.identity_id is None or match.identity_id in track.reported:
            return None
        naming = [v for v in track.votes if v.match.identity_id == match.identity_id]
        if len(naming) < self.settings.confirm_k:
            return None
        best = max(naming, key=lambda v: v.quality)
        return self._confirm(track, match, best.quality, track.box, len(naming), now, fused=match.looks)

    def _confirm(
        self, track: Track, match: Match, quality: float, box: Box, agreed: int, now: float, fused: int = 0
    ) -> Confirmation | None:
        """An identity confirmed for this track: reported once per track, at most once per cooldown."""
        ident = str(match.identity_id)
        track.reported.add(ident)
        last = self._last_event.get(ident)
        if last is not None and now - last < self.settings.cooldown_s:
            return None
        self._last_event[ident] = now
        return Confirmation(track.id, match, quality, box, agreed, len(track.votes), track.first_seen, fused)
