"""Gallery search with a decision threshold derived from a stated false-match rate.

The gallery is one immutable object: an (n, d) float32 matrix of unit vectors,
grouped by identity (several embeddings per identity), searched with one matrix
product. The matcher never mutates it; an update builds a new Gallery and swaps
the reference.

Open-set arithmetic: comparing a stranger with one identity falsely matches
with probability FMR (read from the calibration table). Against a gallery of N
identities the chance that a stranger matches *someone* is about N × FMR. With
``open_set_correction`` the per-identity rate used for the threshold is
``max_false_match_rate / N``, so the stated rate holds per stranger, whatever the
gallery size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from edge.runtime import CalibrationTable
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

    def scores(self, queries: FloatArray) -> FloatArray:
        """(q, n_identities) best cosine similarity of each query with each identity."""
        sims = queries @ self.embeddings.T  # (q, n_embeddings): the one matrix product
        return np.maximum.reduceat(sims, self.starts, axis=1)


class Matcher:
    """Top-1 search plus margin, thresholded at a calibrated false-match rate."""

    def __init__(
        self,
        table: CalibrationTable,
        max_false_match_rate: float = 1e-4,
        open_set_correction: bool = True,
        min_margin: float = 0.0,
    ) -> None:
        self.table = table
        self.max_false_match_rate = max_false_match_rate
        self.open_set_correction = open_set_correction
        self.min_margin = min_margin
        self._gallery = Gallery.empty()
        self._threshold = self._compute_threshold(0)

    def per_identity_fmr(self, n_identities: int) -> float:
        if self.open_set_correction and n_identities > 1:
            return self.max_false_match_rate / n_identities
        return self.max_false_match_rate

    def _compute_threshold(self, n_identities: int) -> float:
        return self.table.threshold_for(self.per_identity_fmr(n_identities))

    @property
    def gallery(self) -> Gallery:
        return self._gallery

    @property
    def threshold(self) -> float:
        return self._threshold

    def set_gallery(self, gallery: Gallery) -> None:
        """Swap the gallery in one reference assignment (safe against concurrent ``match``)."""
        threshold = self._compute_threshold(len(gallery))
        self._gallery, self._threshold = gallery, threshold

    def match(self, queries: FloatArray) -> list[Match]:
        gallery, threshold = self._gallery, self._threshold
        n = len(gallery)
        if n == 0 or len(queries) == 0:
            return [Match(None, None, 0.0, 0.0, threshold, 1.0, False) for _ in range(len(queries))]
        per_id = gallery.scores(queries)
        if n >= 2:
            top2 = np.argpartition(-per_id, 1, axis=1)[:, :2]
            rows = np.arange(len(queries))[:, None]
            pair = per_id[rows, top2]
            order = np.argsort(-pair, axis=1)
            best_idx = top2[rows[:, 0], order[:, 0]]
            best = pair[rows[:, 0], order[:, 0]]
            second = pair[rows[:, 0], order[:, 1]]
        else:
            best_idx = np.zeros(len(queries), np.intp)
            best = per_id[:, 0]
            second = np.full(len(queries), -1.0, np.float32)
        scale = n if self.open_set_correction else 1
        out = []
        for i, s, m in zip(best_idx.tolist(), best.tolist(), (best - second).tolist(), strict=True):
            accepted = s >= threshold and m >= self.min_margin
            out.append(
                Match(
                    identity_id=gallery.identity_ids[i],
                    label=gallery.labels[i],
                    score=float(s),
                    margin=float(m),
                    threshold=threshold,
                    est_false_match_rate=min(1.0, self.table.fmr_at(s) * scale),
                    accepted=bool(accepted),
                )
            )
        return out
