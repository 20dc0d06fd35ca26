"""Gallery search with decision thresholds derived from a stated false-match rate.

The gallery in force is one immutable ``GallerySnapshot``: the identities, the embeddings of
their photos (kept, grouped by identity) and one *template* per identity, the mean of its
photos' embeddings, searched with one matrix product; the thresholds of every face-size
band for this gallery's size and each identity's evidence; the version.
``GalleryHolder`` replaces it with one reference assignment; the frame loop reads
``holder.current`` once per frame, so a frame is always judged by one gallery with that
gallery's thresholds, and every Match names the version that produced it.

Several photos of a person are used through their mean (measured on LFW View 1 at equal
false-match rates, it accepts more genuine faces than the best of the photos or the mean
of their scores, and it keeps one comparison per identity: more photos are not more
chances for a stranger). Its impostor scores spread a little wider than one photo's, so an
identity of k photos is judged with the table measured for templates of k photos
(``edge.recognition.calibration``); a track's fused looks likewise.

Open-set arithmetic: comparing a stranger with one identity falsely matches
with probability FMR (read from the calibration table of the face's size band and the
comparison's evidence). Against a gallery of N identities the chance that a stranger
matches *someone* is at most the sum over identities, N × FMR. With
``open_set_correction`` the per-identity rate used for every threshold is
``max_false_match_rate / N``, so the stated rate holds per stranger, whatever the
gallery size. The most similar identity is accepted when its score reaches its own
threshold (that of its photos) and leads the second-best identity by ``min_margin``; an
identity that reaches its threshold while another scores higher is not taken (the face
looks more like someone else).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge.device.settings import MatchSettings
from edge.recognition.calibration import LOOK_LEVELS, Band, Calibration, CalibrationTable, band_index, look_level
from edge.types import FloatArray, Match


def _unit_rows(x: FloatArray) -> FloatArray:
    out: FloatArray = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Gallery:
    """Identities, their photos' embeddings and their templates. Build with ``Gallery.build``."""

    identity_ids: tuple[str, ...]
    labels: tuple[str | None, ...]
    embeddings: FloatArray  # (n_embeddings, d), unit rows, grouped by identity
    starts: npt.NDArray[np.intp]  # first row of each identity in ``embeddings``
    owner: npt.NDArray[np.intp]  # identity index of each row
    templates: FloatArray  # (n_identities, d): each identity's mean embedding, unit rows
    counts: npt.NDArray[np.intp]  # photos (embeddings) of each identity
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
        dim = mats[0].shape[1] if mats else 192
        emb = _unit_rows(np.concatenate(mats)) if mats else np.zeros((0, dim), np.float32)
        starts = (np.cumsum(counts) - counts).astype(np.intp)
        owner = np.repeat(np.arange(len(mats), dtype=np.intp), counts)
        templates = _unit_rows(np.add.reduceat(emb, starts, axis=0)) if mats else np.zeros((0, dim), np.float32)
        for a in (emb, templates, counts):
            a.setflags(write=False)
        return cls(ids, tuple(e[1] for e in entries), emb, starts, owner, templates, counts, version, name)

    @classmethod
    def empty(cls) -> Gallery:
        return cls.build([])

    def __len__(self) -> int:
        return len(self.identity_ids)

    def photos(self, i: int) -> FloatArray:
        """The embeddings of identity ``i``'s photos."""
        return self.embeddings[self.starts[i] : self.starts[i] + self.counts[i]]

    def without(self, identity_ids: set[str]) -> Gallery:
        """The same gallery less some identities (expiry, removal); same version and name. The rows and
        templates kept are the same arrays' rows: nothing is computed again."""
        keep = np.array([i for i, ident in enumerate(self.identity_ids) if ident not in identity_ids], np.intp)
        counts = self.counts[keep]
        rows = np.concatenate(
            [np.zeros(0, np.intp), *(np.arange(s, s + c) for s, c in zip(self.starts[keep], counts, strict=True))]
        )
        emb, templates = self.embeddings[rows.astype(np.intp)], self.templates[keep]
        starts = (np.cumsum(counts) - counts).astype(np.intp)
        owner = np.repeat(np.arange(len(keep), dtype=np.intp), counts)
        for a in (emb, templates, counts):
            a.setflags(write=False)
        ids = tuple(self.identity_ids[i] for i in keep)
        return Gallery(
            ids, tuple(self.labels[i] for i in keep), emb, starts, owner, templates, counts, self.version, self.name
        )

    def scores(self, queries: FloatArray) -> FloatArray:
        """(q, n_identities) cosine similarity of each query with each identity's template."""
        out: FloatArray = queries @ self.templates.T  # the one matrix product
        return out


@dataclass(frozen=True)
class BandThreshold:
    """A face-size band with the thresholds it has for one snapshot's gallery: per identity (by
    its photos), for one look and for a track's fused looks; ``threshold`` is that of a
    one-photo identity and one look (what a portrait is judged with, at the strictest)."""

    band: Band
    threshold: float
    single: FloatArray  # (n_identities,)
    fused: FloatArray  # (n_identities,)
    tables: tuple[tuple[CalibrationTable, ...], tuple[CalibrationTable, ...]]  # per identity: single, fused

    def for_looks(self, looks: int) -> tuple[FloatArray, tuple[CalibrationTable, ...]]:
        return (self.single, self.tables[0]) if look_level(looks) == 1 else (self.fused, self.tables[1])


@dataclass(frozen=True)
class GallerySnapshot:
    """The gallery in force and everything needed to judge a face against it."""

    gallery: Gallery
    settings: MatchSettings
    bands: tuple[BandThreshold, ...]  # the calibration's bands, largest faces first
    per_identity_fmr: float
    condition: str = "colour"
    by_condition: dict[str, tuple[BandThreshold, ...]] = field(default_factory=dict)  # every calibrated condition

    @property
    def version(self) -> int:
        return self.gallery.version

    def __len__(self) -> int:
        return len(self.gallery)

    def threshold_for(self, face_px: float, condition: str = "colour") -> BandThreshold:
        """The band and threshold a face of ``face_px`` in ``condition`` is judged with (a condition without
        tables of its own: colour's)."""
        bands = self.by_condition.get(condition, self.bands)
        return bands[band_index([bt.band.min_px for bt in bands], face_px)]

    @property
    def threshold(self) -> float:
        """The threshold of the largest faces, one photo, one look (what a portrait is judged with)."""
        return self.bands[0].threshold

    @property
    def measured_to(self) -> float:
        """The smallest per-comparison rate the calibration measured on pairs (below it: its tail model)."""
        return self.bands[0].band.table.measured_to

    @property
    def beyond_calibration(self) -> bool:
        """The per-identity rate this gallery's size asks for is below what the calibration measured on
        pairs: its thresholds there follow the tables' tail model, an assumption (docs/thresholds.md)."""
        return self.per_identity_fmr < self.measured_to

    def match(
        self,
        queries: FloatArray,
        face_px: Sequence[float] | None = None,
        looks: int = 1,
        conditions: Sequence[str] | None = None,
    ) -> list[Match]:
        """The best identity for each query; ``face_px`` (box side of each face) picks its band,
        ``looks`` (1, or how many looks of a track a fused query averages) and each identity's photos
        its table, ``conditions`` (each face's imaging condition, colour by default) the tables of that
        condition where the calibration has them (else colour's)."""
        gallery = self.gallery
        n, q = len(gallery), len(queries)
        sizes = list(face_px) if face_px is not None else [float("inf")] * q
        conds = list(conditions) if conditions is not None else ["colour"] * q
        if len(sizes) != q or len(conds) != q:
            raise ValueError(f"{q} queries but {len(sizes)} face sizes and {len(conds)} conditions")
        used = [c if c in self.by_condition else "colour" for c in conds]
        bands = [self.threshold_for(px, c) for px, c in zip(sizes, used, strict=True)]
        if n == 0 or q == 0:
            return [
                Match(None, None, 0.0, 0.0, bt.threshold, 1.0, False, gallery.version, bt.band.label, looks, 1, c)
                for bt, c in zip(bands, used, strict=True)
            ]
        per_id = gallery.scores(queries)
        if n >= 2:
            top2 = np.partition(per_id, n - 2, axis=1)[:, n - 2 :]
            best, second = top2.max(axis=1), top2.min(axis=1)
        else:
            best, second = per_id[:, 0], np.full(q, -1.0, np.float32)
        pick = per_id.argmax(axis=1)
        scale = n if self.settings.open_set_correction else 1
        out = []
        for i, s, m, bt, c in zip(pick.tolist(), best.tolist(), (best - second).tolist(), bands, used, strict=True):
            thr, tables = bt.for_looks(looks)
            out.append(
                Match(
                    identity_id=gallery.identity_ids[i],
                    label=gallery.labels[i],
                    score=float(s),
                    margin=float(m),
                    threshold=float(thr[i]),
                    est_false_match_rate=min(1.0, tables[i].fmr_at(s) * scale),
                    accepted=bool(s >= thr[i] and m >= self.settings.min_margin),
                    gallery_version=gallery.version,
                    band=bt.band.label,
                    looks=looks,
                    templates=int(gallery.counts[i]),
                    condition=c,
                )
            )
        return out


class Matcher:
    """Calibrated matching policy: turns a Gallery into a snapshot with its thresholds. ``calibration``
    is the colour one; ``others`` those of further imaging conditions (grey)."""

    def __init__(self, calibration: Calibration, settings: MatchSettings, others: Sequence[Calibration] = ()) -> None:
        self.calibration = calibration
        self.settings = settings
        self.by_condition = {"colour": calibration, **{c.condition: c for c in others}}

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(self.by_condition)

    def per_identity_fmr(self, n_identities: int) -> float:
        if self.settings.open_set_correction and n_identities > 1:
            return self.settings.max_false_match_rate / n_identities
        return self.settings.max_false_match_rate

    def snapshot(self, gallery: Gallery) -> GallerySnapshot:
        """Thresholds for every band, condition and identity (by its photos); a ModelError when the
        calibration has no table for some identity's evidence."""
        fmr = self.per_identity_fmr(len(gallery))
        counts = gallery.counts.tolist()
        by_condition = {
            condition: tuple(self._thresholds(b, counts, fmr) for b in cal.bands)
            for condition, cal in self.by_condition.items()
        }
        return GallerySnapshot(gallery, self.settings, by_condition["colour"], fmr, "colour", by_condition)

    @staticmethod
    def _thresholds(band: Band, counts: Sequence[int], fmr: float) -> BandThreshold:
        """One band's thresholds for identities of these photo counts, one look and fused looks."""
        found: dict[tuple[int, int], tuple[CalibrationTable, float]] = {}

        def lookup(k: int, looks: int) -> tuple[CalibrationTable, float]:
            if (k, looks) not in found:
                if looks > 1 and not band.kinds:  # fusion not calibrated (an older manifest): never accepts
                    found[(k, looks)] = (band.table, float("inf"))
                else:
                    table = band.table_for(k, looks)
                    found[(k, looks)] = (table, table.threshold_for(fmr))
            return found[(k, looks)]

        single = [lookup(k, 1) for k in counts]
        fused = [lookup(k, LOOK_LEVELS[-1]) for k in counts]
        return BandThreshold(
            band,
            band.table.threshold_for(fmr),
            np.array([th for _, th in single], np.float32),
            np.array([th for _, th in fused], np.float32),
            (tuple(tb for tb, _ in single), tuple(tb for tb, _ in fused)),
        )


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
            snapshot = self.matcher.snapshot(gallery)
            self._current = snapshot
        for listener in self._listeners:
            listener(snapshot)
        return snapshot
