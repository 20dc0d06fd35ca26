"""Score → false-match-rate calibration, per face-size band, evidence and imaging condition.

A ``CalibrationTable`` says how often a stranger's face reaches a cosine score
against one enrolled identity; it is measured offline (``models/calibrate.py``)
on every cross-identity pair of LFW View 1 and shipped beside the manifest, one file per embedder
(``models/calibration/<embedder>.json``, bound to that embedder file's sha256).

Small faces score differently from large ones (less detail, more upsampling), so
the manifest holds one table per face-size band: a face whose box side is at least
``min_px`` (and below the next band's) is judged with that band's table. Where the
impostor distribution differs between labelled groups, each row is the worst
group's rate, so the stated rate holds inside every group measured (see
docs/thresholds.md). The device never learns anyone's group: only the threshold moves.

How much evidence a comparison carries changes the impostor scores too: an identity
enrolled from several photos is matched through the mean of their embeddings (a
*template* of k photos), and a confirmed track through the mean of its looks (a fused
probe). Each band therefore holds a table per evidence kind, (templates, looks), at
the levels ``TEMPLATE_LEVELS`` × ``LOOK_LEVELS``; an identity of k photos is judged
with the table of the smallest level of at least k (more photos spread the template's
impostor scores a little wider: a larger level is the stricter one). Imaging
conditions the device recognises in its frames (``grey``: a night camera's infrared
picture) have their own tables, measured with probes in that condition against
colour templates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.device.runtime import Manifest
from edge.device.settings import QualitySettings
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
    measured_to: float = 0.0  # the smallest rate its pairs measure; rows below it follow the tail model

    @classmethod
    def from_rows(
        cls, rows: Sequence[Sequence[float]], impostor_pairs: int = 0, measured_to: float | None = None
    ) -> CalibrationTable:
        arr = np.asarray(rows, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < 2:
            raise ValueError("a calibration table needs at least two [fmr, threshold] rows")
        if not (np.all(np.diff(arr[:, 0]) < 0) and np.all(np.diff(arr[:, 1]) > 0)):
            raise ValueError("calibration rows must have decreasing rates and increasing thresholds")
        floor = float(arr[-1, 0]) if measured_to is None else float(measured_to)
        return cls(arr[:, 0].copy(), arr[:, 1].copy(), impostor_pairs, floor)

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


TEMPLATE_LEVELS = (1, 2, 3, 5)  # photos per identity the tables are measured for
LOOK_LEVELS = (1, 3)  # one look, or a track's fused looks
CONDITIONS = ("colour", "grey")  # imaging conditions with tables of their own; colour is the default


def template_level(templates: int) -> int:
    """The table level for an identity of ``templates`` photos: the smallest level of at least that."""
    return next((lv for lv in TEMPLATE_LEVELS if lv >= templates), TEMPLATE_LEVELS[-1])


def look_level(looks: int) -> int:
    """One look is its own level; any fusion of looks uses the fused tables (measured with three)."""
    return 1 if looks <= 1 else LOOK_LEVELS[-1]


@dataclass(frozen=True, slots=True)
class Band:
    """Faces whose box side is at least ``min_px`` (up to the next band) use ``table`` (one photo,
    one look), or the table of their evidence kind in ``kinds``."""

    min_px: float
    table: CalibrationTable
    label: str
    kinds: Mapping[tuple[int, int], CalibrationTable] = field(default_factory=dict)  # (templates, looks) levels

    def table_for(self, templates: int = 1, looks: int = 1) -> CalibrationTable:
        key = (template_level(templates), look_level(looks))
        if key == (1, 1):
            return self.table
        try:
            return self.kinds[key]
        except KeyError:
            raise ModelError(
                f"no calibration table for band {self.label} with {key[0]} photo(s) per identity and "
                f"{key[1]} look(s) fused; rebuild the tables with models/calibrate.py"
            ) from None


@dataclass(frozen=True)
class Calibration:
    """The tables of one embedder file, pipeline variant and imaging condition, by face-size band."""

    embedder_sha256: str
    pipeline: str
    bands: tuple[Band, ...]  # by min_px, largest first
    method: str = ""
    condition: str = "colour"

    def __post_init__(self) -> None:
        if not self.bands:
            raise ValueError("a calibration needs at least one band")
        if [b.min_px for b in self.bands] != sorted((b.min_px for b in self.bands), reverse=True):
            raise ValueError("calibration bands must be ordered largest first")

    def band_for(self, face_px: float) -> Band:
        """The band of a face of ``face_px`` (box side); below every band, the smallest one."""
        return self.bands[band_index([b.min_px for b in self.bands], face_px)]

    @property
    def largest(self) -> Band:
        return self.bands[0]


def band_index(min_pxs: Sequence[float], face_px: float) -> int:
    """The one rule of bands: of bands ordered largest first (their smallest faces ``min_pxs``), the first
    whose smallest face ``face_px`` reaches; below every band, the smallest one."""
    for i, min_px in enumerate(min_pxs):
        if face_px >= min_px:
            return i
    return len(min_pxs) - 1


def band_label(min_px: float, max_px: float | None) -> str:
    return f"{min_px:g}+ px" if max_px is None else f"{min_px:g}-{max_px:g} px"


def parse_calibrations(entries: Sequence[Mapping[str, Any]]) -> tuple[Calibration, ...]:
    """Manifest ``calibration`` entries → one Calibration per (embedder, pipeline, condition).

    An entry without ``band`` covers every face size (manifests before per-band tables); one
    without ``templates``/``looks`` is the one-photo, one-look table; without ``condition``, colour.
    """
    Key = tuple[str, str, str]
    grouped: dict[Key, dict[float, dict[tuple[int, int], CalibrationTable]]] = {}
    labels: dict[tuple[Key, float], str] = {}
    methods: dict[Key, str] = {}
    for entry in entries:
        key = (str(entry["embedder_sha256"]), str(entry["pipeline"]), str(entry.get("condition", "colour")))
        band = entry.get("band") or {}
        min_px = float(band.get("min_px", 0.0))
        kind = (int(entry.get("templates", 1)), int(entry.get("looks", 1)))
        if kind[0] not in TEMPLATE_LEVELS or kind[1] not in LOOK_LEVELS:
            raise ValueError(
                f"calibration kind {kind}: templates must be one of {TEMPLATE_LEVELS}, looks of {LOOK_LEVELS}"
            )
        tables = grouped.setdefault(key, {}).setdefault(min_px, {})
        if kind in tables:
            raise ValueError(
                f"two calibration tables for the same band and kind ({key[1]}, {key[0][:12]}, {min_px:g} px, {kind})"
            )
        measured_to = entry.get("measured_to")
        tables[kind] = CalibrationTable.from_rows(
            entry["table"], int(entry.get("impostor_pairs", 0)), None if measured_to is None else float(measured_to)
        )
        labels[(key, min_px)] = band_label(min_px, band.get("max_px"))
        if kind == (1, 1):
            methods[key] = str(entry.get("method", ""))
    out = []
    for key, by_band in grouped.items():
        bands = []
        for min_px in sorted(by_band, reverse=True):
            tables = by_band[min_px]
            if (1, 1) not in tables:
                raise ValueError(f"band {min_px:g} px of {key[1]} ({key[2]}) has no one-photo, one-look table")
            kinds = {k: v for k, v in tables.items() if k != (1, 1)}
            bands.append(Band(min_px, tables[(1, 1)], labels[(key, min_px)], kinds))
        out.append(Calibration(key[0], key[1], tuple(bands), methods.get(key, ""), key[2]))
    return tuple(out)


CALIBRATION_DIR = "calibration"  # beside the manifest: one file of tables per embedder, <embedder>.json


@dataclass(frozen=True)
class CalibrationFile:
    """One embedder's calibration file: its header (which embedder file it was measured for, how, its
    validation, the track-split floor) and its tables, parsed."""

    path: Path
    header: Mapping[str, Any]
    calibrations: tuple[Calibration, ...]


def calibration_file(manifest: Manifest, embedder_sha256: str) -> CalibrationFile:
    """The calibration file of the manifest's embedder with this sha256, checked to have been measured for
    exactly that file (tables of another embedder are never used); a ModelError naming the cause."""
    name = next((k for k, m in manifest.models.items() if m.sha256 == embedder_sha256), "")
    path = manifest.root / CALIBRATION_DIR / f"{name}.json"
    if not name or not path.is_file():
        raise ModelError(
            f"no calibration tables for embedder {name or '?'} (sha256 {embedder_sha256[:12]}…) in "
            f"{manifest.root / CALIBRATION_DIR}; measure them with models/calibrate.py"
        )
    found = _load(path, path.stat().st_mtime_ns)
    measured_for = found.header.get("embedder_sha256")
    if measured_for != embedder_sha256:
        raise ModelError(
            f"{path} holds tables measured for embedder sha256 {str(measured_for)[:12]}…, but the manifest's "
            f"'{name}' is {embedder_sha256[:12]}…: tables of another embedder are never used; "
            "recalibrate with models/calibrate.py"
        )
    return found


def calibration_for(manifest: Manifest, embedder_sha256: str, pipeline: str, condition: str = "colour") -> Calibration:
    """The score → FMR tables for exactly this embedder file, pipeline variant and imaging condition."""
    found = calibration_file(manifest, embedder_sha256)
    for cal in found.calibrations:
        if cal.pipeline == pipeline and cal.condition == condition:
            return cal
    raise ModelError(
        f"{found.path} has no calibration table for pipeline '{pipeline}' ({condition}); "
        "measure it with models/calibrate.py"
    )


def conditions_for(manifest: Manifest, embedder_sha256: str, pipeline: str) -> tuple[str, ...]:
    """The imaging conditions the tables cover for this embedder and pipeline."""
    found = {c.condition for c in calibration_file(manifest, embedder_sha256).calibrations if c.pipeline == pipeline}
    return tuple(c for c in CONDITIONS if c in found)


# The head turn the quality gate admitted when a file does not say (MobileFaceNet's tables, measured before
# the gate was recorded: the default gate then, 0.8).
LEGACY_MAX_YAW = 0.8


def measured_max_yaw(manifest: Manifest, embedder_sha256: str) -> float:
    """The widest head turn (``QualitySettings.max_yaw``) of the faces this embedder's tables were measured on:
    a gate admitting wider turns would judge faces whose false-match rate nobody measured."""
    gate = calibration_file(manifest, embedder_sha256).header.get("quality_gate", {})
    value = gate.get("max_yaw") if isinstance(gate, dict) else None
    return float(value) if isinstance(value, (int, float)) else LEGACY_MAX_YAW


def checked_gate(
    manifest: Manifest, embedder_sha256: str, pipeline: str, limits: QualitySettings, section: str = "quality"
) -> QualitySettings:
    """A quality gate the tables of this embedder and pipeline can judge, its unset head-turn limit filled in
    with the measured one; a ModelError naming the key of ``section`` (``quality``, ``cameras.N.quality``)
    when it admits faces smaller or more turned than the tables measured (their false-match rate is unknown)."""
    name = next((k for k, m in manifest.models.items() if m.sha256 == embedder_sha256), "?")
    smallest = calibration_for(manifest, embedder_sha256, pipeline).bands[-1].min_px
    if limits.min_face_px < smallest:
        raise ModelError(
            f"{section}.min_face_px = {limits.min_face_px:g}: below the smallest face-size band the calibration "
            f"of {pipeline} measured ({smallest:g} px), so faces that small have no known false-match rate; "
            "raise it, or calibrate smaller faces (models/calibrate.py)"
        )
    widest = measured_max_yaw(manifest, embedder_sha256)
    if limits.max_yaw is None:
        return limits.model_copy(update={"max_yaw": widest})
    if limits.max_yaw > widest:
        raise ModelError(
            f"{section}.max_yaw = {limits.max_yaw:g}: wider than the head turns the calibration of {name} "
            f"measured (up to {widest:g}), so faces turned that far have no known false-match rate; lower it or "
            "leave it unset, or calibrate wider turns (models/calibrate.py --max-yaw)"
        )
    return limits


def split_threshold(manifest: Manifest, embedder_sha256: str, pipeline: str) -> float | None:
    """The score below which a look no longer counts as the same person as its track (``appearance`` in the
    embedder's calibration file, measured by models/calibrate.py for each pipeline); None when not measured."""
    found = calibration_file(manifest, embedder_sha256).header.get("appearance", {}).get(pipeline, {})
    value = found.get("split_below") if isinstance(found, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


@cache
def _load(path: Path, mtime_ns: int) -> CalibrationFile:
    """Read and parse one calibration file (once per file version: ``mtime_ns`` is the cache key's part)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"calibration file {path} cannot be read: {exc}") from None
    try:
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        sha = str(raw["embedder_sha256"])
        for entry in raw["tables"]:
            if str(entry["embedder_sha256"]) != sha:
                raise ValueError(
                    f"a table for embedder {str(entry['embedder_sha256'])[:12]}… in a file for {sha[:12]}…"
                )
        entries = [{**e, "method": e.get("method", raw.get("method", ""))} for e in raw["tables"]]
        calibrations = parse_calibrations(entries)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelError(f"calibration file {path} is malformed: {exc!r}") from None
    return CalibrationFile(path, {k: v for k, v in raw.items() if k != "tables"}, calibrations)
