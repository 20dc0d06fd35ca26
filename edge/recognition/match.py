"""Gallery search with decision thresholds derived from a stated false-match rate.

The gallery in force is one immutable ``GallerySnapshot``: the identities and
their embeddings (an (n, d) float32 matrix of unit vectors, grouped by identity,
searched with one matrix product), the threshold of every face-size band for this
gallery's size, and the version. ``GalleryHolder`` replaces it with one reference
assignment; the frame loop reads ``holder.current`` once per frame, so a frame is
always judged by one gallery with that gallery's thresholds, and every Match names
the version that produced it.

Open-set arithmetic: comparing a stranger with one identity falsely matches
with probability FMR (read from the calibration table of the face's size band).
Against a gallery of N identities the chance that a stranger matches *someone*
is about N × FMR. With ``open_set_correction`` the per-identity rate used for the
threshold is ``max_false_match_rate / N``, so the stated rate holds per stranger,
whatever the gallery size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge.device.config import MatchSettings
from edge.recognition.calibration import Band, Calibration
from edge.types import FloatArray, Match


@dataclass(frozen=True)
class Gallery:
    """Identities and their embeddings. Build with ``Gallery.build``."""

    identity_ids: tuple[str, ...]
    labels: tuple[str | None, ...]
    embeddings: FloatArray  # (n_embeddings, d), unit rows, grouped by identity
    starts: npt.NDArray[np.intp]  # first row of each identity in ``embeddings``
    owner: npt.NDArray[np.intp]  # identity index of each row
    version: int = 0
    name: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        entries: Sequence[tuple[str, str | None, FloatArray]],
        version: int = 0,
        name: str = "",
    ) -> Gallery:
        """From (identity_id, label, (k, d) embeddings) entries; rows are re-normalised."""
        ids = tuple(e[0] for e in entries)
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate identity ids in gallery")
        mats = [np.atleast_2d(np.asarray(e[2], np.float32)) for e in entries]
        if any(m.shape[0] == 0 for m in mats):
            raise ValueError("an identity has no embedding")
        counts = np.array([m.shape[0] for m in mats], np.intp)
        if mats:
            emb = np.concatenate(mats)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        else:
            emb = np.zeros((0, 192), np.float32)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp) if mats else np.zeros(0, np.intp)
        owner = np.repeat(np.arange(len(mats), dtype=np.intp), counts)
        emb.setflags(write=False)
        return cls(ids, tuple(e[1] for e in entries), emb, starts, owner, version, name)

    @classmethod
    def empty(cls) -> Gallery:
        return cls.build([])

    def __len__(self) -> int:
        return len(self.identity_ids)

    def without(self, identity_ids: set[str]) -> Gallery:
        """The same gallery less some identities (expiry, removal); same version and name."""
        ends = np.append(self.starts[1:], len(self.embeddings))
        entries = [
            (ident, self.labels[i], self.embeddings[self.starts[i] : ends[i]])
            for i, ident in enumerate(self.identity_ids)
            if ident not in identity_ids
        ]
        return Gallery.build(entries, self.version, self.name)

    def scores(self, queries: FloatArray) -> FloatArray:
        """(q, n_identities) best cosine similarity of each query with each identity."""
        sims = queries @ self.embeddings.T  # (q, n_embeddings): the one matrix product
        return np.maximum.reduceat(sims, self.starts, axis=1)


@dataclass(frozen=True, slots=True)
class BandThreshold:
    """A face-size band with the threshold it has for one snapshot's gallery size."""

    band: Band
    threshold: float


@dataclass(frozen=True)
class GallerySnapshot:
    """The gallery in force and everything needed to judge a face against it."""

    gallery: Gallery
    settings: MatchSettings
    bands: tuple[BandThreshold, ...]  # the calibration's bands, largest faces first
    per_identity_fmr: float

    @property
    def version(self) -> int:
        return self.gallery.version

    def __len__(self) -> int:
        return len(self.gallery)

    def band_for(self, face_px: float) -> BandThreshold:
        for bt in self.bands:
            if face_px >= bt.band.min_px:
                return bt
        return self.bands[-1]

    @property
    def threshold(self) -> float:
        """The threshold of the largest faces (what a portrait is judged with)."""
        return self.bands[0].threshold

    def match(self, queries: FloatArray, face_px: Sequence[float] | None = None) -> list[Match]:
        """Top-1 identity for each query; ``face_px`` (box side of each face) picks its band."""
        gallery = self.gallery
        n, q = len(gallery), len(queries)
        sizes = list(face_px) if face_px is not None else [float("inf")] * q
        if len(sizes) != q:
            raise ValueError(f"{q} queries but {len(sizes)} face sizes")
        bands = [self.band_for(px) for px in sizes]
        if n == 0 or q == 0:
            return [
                Match(None, None, 0.0, 0.0, bt.threshold, 1.0, False, gallery.version, bt.band.label) for bt in bands
            ]
        per_id = gallery.scores(queries)
        if n >= 2:
            top2 = np.argpartition(-per_id, 1, axis=1)[:, :2]
            rows = np.arange(q)[:, None]
            pair = per_id[rows, top2]
            order = np.argsort(-pair, axis=1)
            best_idx = top2[rows[:, 0], order[:, 0]]
            best = pair[rows[:, 0], order[:, 0]]
            second = pair[rows[:, 0], order[:, 1]]
        else:
            best_idx = np.zeros(q, np.intp)
            best = per_id[:, 0]
            second = np.full(q, -1.0, np.float32)
        scale = n if self.settings.open_set_correction else 1
        out = []
        for i, s, m, bt in zip(best_idx.tolist(), best.tolist(), (best - second).tolist(), bands, strict=True):
            out.append(
                Match(
                    identity_id=gallery.identity_ids[i],
                    label=gallery.labels[i],
                    score=float(s),
                    margin=float(m),
                    threshold=bt.threshold,
                    est_false_match_rate=min(1.0, bt.band.table.fmr_at(s) * scale),
                    accepted=bool(s >= bt.threshold and m >= self.settings.min_margin),
                    gallery_version=gallery.version,
                    band=bt.band.label,
                )
            )
        return out


class Matcher:
    """Calibrated matching policy: turns a Gallery into a snapshot with its thresholds."""

    def __init__(self, calibration: Calibration, settings: MatchSettings) -> None:
        self.calibration = calibration
        self.settings = settings

    def per_identity_fmr(self, n_identities: int) -> float:
        if self.settings.open_set_correction and n_identities > 1:
            return self.settings.max_false_match_rate / n_identities
        return self.settings.max_false_match_rate

    def snapshot(self, gallery: Gallery) -> GallerySnapshot:
        fmr = self.per_identity_fmr(len(gallery))
        bands = tuple(BandThreshold(b, b.table.threshold_for(fmr)) for b in self.calibration.bands)
        return GallerySnapshot(gallery, self.settings, bands, fmr)


class GalleryHolder:
    """The one reference to the gallery in force.

    Readers take ``current`` (one attribute read, no lock). Writers (the gallery
    sync, expiry, start-up) go through ``swap``/``update``, serialised by a lock so
    that a read-modify-write (expiry) never undoes a concurrent swap.
    """

    def __init__(self, matcher: Matcher, gallery: Gallery | None = None) -> None:
        self.matcher = matcher
        self._lock = threading.Lock()
        self._current = matcher.snapshot(gallery or Gallery.empty())
        self._listeners: list[Callable[[GallerySnapshot], None]] = []

    @property
    def current(self) -> GallerySnapshot:
        return self._current

    def on_change(self, listener: Callable[[GallerySnapshot], None]) -> None:
        """Call ``listener`` with every new snapshot (Home Assistant entities, status)."""
        self._listeners.append(listener)

    def swap(self, gallery: Gallery) -> GallerySnapshot:
        return self.update(lambda _old: gallery)

    def update(self, change: Callable[[GallerySnapshot], Gallery | None]) -> GallerySnapshot:
        """Atomically derive the next gallery from the current snapshot (None: no change)."""
        with self._lock:
            gallery = change(self._current)
            if gallery is None:
                return self._current
            snap = self.matcher.snapshot(gallery)
            self._current = snap
        for listener in self._listeners:
            listener(snap)
        return snap
