"""Score → false-match-rate calibration, per face-size band.

A ``CalibrationTable`` says how often a stranger's face reaches a cosine score
against one enrolled identity; it is measured offline (``models/calibrate.py``)
on every cross-identity pair of LFW View 1 and shipped in ``models/manifest.json``.

Small faces score differently from large ones (less detail, more upsampling), so
the manifest holds one table per face-size band: a face whose box side is at least
``min_px`` (and below the next band's) is judged with that band's table. Where the
impostor distribution differs between labelled groups, each row is the worst
group's rate, so the stated rate holds inside every group measured (see README,
"Thresholds"). The device never learns anyone's group: only the threshold moves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.device.runtime import MANIFEST_NAME, Manifest
from edge.errors import ModelError


@dataclass(frozen=True, slots=True)
class CalibrationTable:
    """Impostor score → false-match-rate table.

    ``fmr`` is strictly decreasing and ``threshold`` increasing: comparing a
    stranger's face with one enrolled identity gives a cosine similarity of at
    least ``threshold[i]`` with probability at most ``fmr[i]``.
    """

    fmr: npt.NDArray[np.float64]
    threshold: npt.NDArray[np.float64]
    impostor_pairs: int = 0

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]], impostor_pairs: int = 0) -> CalibrationTable:
        arr = np.asarray(rows, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 2:
            raise ValueError("a calibration table needs at least two [fmr, threshold] rows")
        if not (np.all(np.diff(arr[:, 0]) < 0) and np.all(np.diff(arr[:, 1]) > 0)):
            raise ValueError("calibration rows must have decreasing rates and increasing thresholds")
        return cls(arr[:, 0].copy(), arr[:, 1].copy(), impostor_pairs)

    def threshold_for(self, max_fmr: float) -> float:
        """The lowest threshold whose measured FMR is at most ``max_fmr``.

        Between table rows the threshold is interpolated in log(FMR); below the
        smallest measured rate the strictest measured threshold is returned, so
        the rate is never extrapolated past what was measured.
        """
        if max_fmr >= self.fmr[0]:
            return float(self.threshold[0])
        if max_fmr <= self.fmr[-1]:
            return float(self.threshold[-1])
        logf = np.log10(self.fmr)
        # np.interp needs increasing x: reverse both axes.
        return float(np.interp(np.log10(max_fmr), logf[::-1], self.threshold[::-1]))

    def fmr_at(self, score: float) -> float:
        """The measured rate at which an impostor comparison reaches ``score``."""
        if score <= self.threshold[0]:
            return float(self.fmr[0])
        if score >= self.threshold[-1]:
            return float(self.fmr[-1])
        return float(10 ** np.interp(score, self.threshold, np.log10(self.fmr)))


@dataclass(frozen=True, slots=True)
class Band:
    """Faces whose box side is at least ``min_px`` (up to the next band) use ``table``."""

    min_px: float
    table: CalibrationTable
    label: str


@dataclass(frozen=True)
class Calibration:
    """The tables of one embedder file and pipeline variant, by face-size band."""

    embedder_sha256: str
    pipeline: str
    bands: tuple[Band, ...]  # by min_px, largest first
    method: str = ""

    def __post_init__(self) -> None:
        if not self.bands:
            raise ValueError("a calibration needs at least one band")
        if [b.min_px for b in self.bands] != sorted((b.min_px for b in self.bands), reverse=True):
            raise ValueError("calibration bands must be ordered largest first")

    def band_for(self, face_px: float) -> Band:
        """The band of a face of ``face_px`` (box side); below every band, the smallest one."""
        for band in self.bands:
            if face_px >= band.min_px:
                return band
        return self.bands[-1]

    @property
    def largest(self) -> Band:
        return self.bands[0]


def band_label(min_px: float, max_px: float | None) -> str:
    return f"{min_px:g}+ px" if max_px is None else f"{min_px:g}-{max_px:g} px"


def parse_calibrations(entries: Sequence[Mapping[str, Any]]) -> tuple[Calibration, ...]:
    """Manifest ``calibration`` entries → one Calibration per (embedder, pipeline).

    An entry without ``band`` covers every face size (manifests before per-band tables).
    """
    grouped: dict[tuple[str, str], list[tuple[float, CalibrationTable, str]]] = {}
    methods: dict[tuple[str, str], str] = {}
    for entry in entries:
        key = (str(entry["embedder_sha256"]), str(entry["pipeline"]))
        band = entry.get("band") or {}
        min_px = float(band.get("min_px", 0.0))
        max_px = band.get("max_px")
        table = CalibrationTable.from_rows(entry["table"], int(entry.get("impostor_pairs", 0)))
        grouped.setdefault(key, []).append((min_px, table, band_label(min_px, max_px)))
        methods[key] = str(entry.get("method", ""))
    out = []
    for (sha, pipeline), rows in grouped.items():
        rows.sort(key=lambda r: -r[0])
        if len({r[0] for r in rows}) != len(rows):
            raise ValueError(f"two calibration tables for the same band ({pipeline}, {sha[:12]})")
        out.append(Calibration(sha, pipeline, tuple(Band(m, t, lbl) for m, t, lbl in rows), methods[(sha, pipeline)]))
    return tuple(out)


def calibration_for(manifest: Manifest, embedder_sha256: str, pipeline: str) -> Calibration:
    """The score → FMR tables the manifest holds for exactly this embedder file and pipeline variant."""
    path = manifest.root / MANIFEST_NAME
    try:
        calibrations = parse_calibrations(manifest.raw.get("calibration", []))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"model manifest {path} has a malformed calibration: {exc!r}") from None
    for cal in calibrations:
        if cal.embedder_sha256 == embedder_sha256 and cal.pipeline == pipeline:
            return cal
    raise ModelError(
        f"{path} has no calibration table for embedder sha256 {embedder_sha256[:12]}… "
        f"with pipeline '{pipeline}'; rebuild the models with models/build.py"
    )
