"""Error rates per labelled group, and calibration tables that hold for the worst group.

Labels come from a CSV ``image,group`` (the image's file name, e.g. ``AJ_Cook_0001.jpg``);
they are used to measure, never on a device. An impostor pair belongs to a group
when both images carry that label; pairs across groups are ``cross_group``;
unlabelled images count in ``all`` only.

``worst_group_table``: for every rate f of the table, the threshold is the highest
of the all-pairs threshold and every group's. A group has too few pairs to measure
very small rates (a row needs at least 10 impostors); below that floor its rate is
taken as R × the all-pairs rate, R being the largest ratio of the group's rate to
the all-pairs rate over its last measurable rows: an explicit, conservative
assumption, recorded with the table.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.errors import InputError
from edge_lab.lfw import TABLE_FMRS, FloatArray, impostor_blocks

MIN_IMPOSTORS = 10  # a table row needs at least this many impostor pairs above its threshold


def read_groups(path: Path) -> dict[str, str]:
    """``image file name → group`` from a CSV with columns ``image,group``."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise InputError(f"groups file {path} cannot be read: {exc.strerror or exc}") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "group"]:
        raise InputError(f"groups file {path}: the first line must be 'image,group'")
    out: dict[str, str] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"groups file {path}: line {i} {','.join(row)!r} is not 'image,group'")
        out[row[0].strip()] = row[1].strip()
    if not out:
        raise InputError(f"groups file {path} has no labelled image")
    return out


def labels_for(files: Sequence[str], groups: Mapping[str, str]) -> npt.NDArray[np.object_]:
    """The group of each image (None when unlabelled)."""
    return np.array([groups.get(f) for f in files], dtype=object)


def impostors_by_group(
    emb: FloatArray, person: npt.NDArray[np.int_], label: npt.NDArray[np.object_], block: int = 1024
) -> dict[str, FloatArray]:
    """Scores of every pair of images of different people: ``all``, each group's own, ``cross_group``."""
    names = sorted({str(g) for g in label if g is not None})
    code = np.array([names.index(str(g)) if g is not None else -1 for g in label])
    parts: dict[str, list[FloatArray]] = {"all": [], "cross_group": [], **{g: [] for g in names}}
    for rows, cols, sims, mask in impostor_blocks(emb, person, block):
        parts["all"].append(sims[mask])
        a, b = code[rows, None], code[None, cols]
        labelled = (a >= 0) & (b >= 0)
        parts["cross_group"].append(sims[mask & labelled & (a != b)])
        for k, g in enumerate(names):
            parts[g].append(sims[mask & (a == k) & (b == k)])
    return {k: np.concatenate(v).astype(np.float32) if v else np.zeros(0, np.float32) for k, v in parts.items()}


def genuine_by_group(
    emb: FloatArray, person: npt.NDArray[np.int_], label: npt.NDArray[np.object_]
) -> dict[str, FloatArray]:
    """Scores of every pair of images of the same person: ``all`` and per group (both images labelled)."""
    out: dict[str, list[float]] = {"all": []}
    for p in np.unique(person):
        idx = np.flatnonzero(person == p)
        if len(idx) < 2:
            continue
        sims = emb[idx] @ emb[idx].T
        iu = np.triu_indices(len(idx), 1)
        scores = sims[iu]
        out["all"] += scores.tolist()
        labs = label[idx]
        same = np.array([labs[i] is not None and labs[i] == labs[j] for i, j in zip(*iu, strict=True)], bool)
        for g in {str(x) for x in labs if x is not None}:
            mine = same & np.array([labs[i] == g for i in iu[0]], bool)
            out.setdefault(g, []).extend(scores[mine].tolist())
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


@dataclass(frozen=True)
class GroupRates:
    impostor_pairs: int
    observed_fmr: float
    genuine_pairs: int
    fnmr: float | None


def rates_at(
    threshold: float, impostors: Mapping[str, FloatArray], genuine: Mapping[str, FloatArray]
) -> dict[str, GroupRates]:
    out = {}
    for g, imp in impostors.items():
        gen = genuine.get(g)
        out[g] = GroupRates(
            impostor_pairs=len(imp),
            observed_fmr=float((imp >= threshold).mean()) if len(imp) else float("nan"),
            genuine_pairs=len(gen) if gen is not None else 0,
            fnmr=float((gen < threshold).mean()) if gen is not None and len(gen) else None,
        )
    return out


@dataclass(frozen=True)
class WorstGroupTable:
    rows: list[list[float]]  # [fmr, threshold], the device's table
    floors: dict[str, float]  # smallest rate measured directly, per group
    ratios: dict[str, float]  # R per group: its rate over the all-pairs rate near its floor
    governing: list[str]  # which group set each row's threshold
    measured_to: float = 0.0  # the smallest rate whose row rests on measured pairs only (below: the tail model)
    tail_slope: float = 0.0  # the tail model: threshold added per decade below the all-pairs floor


@dataclass(frozen=True)
class Tail:
    """One set of impostor scores as a table needs it: how many there are, and the highest of them
    sorted high to low (every rate a table row asks for lies in that top share), without keeping
    millions of scores or sorting them again for every row."""

    n: int
    top: FloatArray  # descending

    @classmethod
    def of(cls, scores: FloatArray, share: float = 0.25) -> Tail:
        n = len(scores)
        k = min(n, int(share * n) + MIN_IMPOSTORS)
        top = np.partition(scores, n - k)[n - k :] if 0 < k < n else np.asarray(scores)
        return cls(n, np.sort(top)[::-1].astype(np.float32))

    def threshold_at(self, fmr: float) -> float:
        """As ``edge_lab.lfw.threshold_at_fmr``: the smallest t with at most ``fmr`` of the scores at or above it."""
        k = int(np.floor(fmr * self.n))
        if k >= self.n:
            return float(self.top[-1])
        if k >= len(self.top):
            raise ValueError(f"rate {fmr:g} lies below the kept share of {self.n} scores")
        return float(np.nextafter(np.float32(self.top[k]), np.float32(2.0)))

    def rate_at(self, threshold: float) -> float:
        """The share of scores at or above ``threshold``."""
        if len(self.top) < self.n and threshold < float(self.top[-1]):
            raise ValueError(f"threshold {threshold:g} lies below the kept share of {self.n} scores")
        return float(np.searchsorted(-self.top, -threshold, side="right")) / max(self.n, 1)


def _tail(scores: FloatArray | Tail) -> Tail:
    return scores if isinstance(scores, Tail) else Tail.of(np.asarray(scores, np.float32), share=1.0)


def _measured(impostors: Tail, fmrs: Iterable[float]) -> dict[float, float]:
    """Thresholds at the rates this distribution supports (at least MIN_IMPOSTORS above each)."""
    return {f: impostors.threshold_at(f) for f in fmrs if f * impostors.n >= MIN_IMPOSTORS}


TAIL_ROWS = 5  # the tail model's slope is fitted on the all-pairs table's last rows (about a decade)


def _tail_model(base: Mapping[float, float]) -> tuple[float, float, float]:
    """(floor rate, its threshold, slope): below the smallest rate the pairs measure, the threshold
    goes on rising as it did over the last measured decade (a straight line in threshold against
    log rate: an exponential tail), never flatter than level."""
    rates = sorted(base)[:TAIL_ROWS]
    slope = 0.0
    if len(rates) >= 2:
        fit = np.polyfit(np.log10(rates), [base[f] for f in rates], 1)
        slope = max(0.0, -float(fit[0]))
    floor = min(base)
    return floor, base[floor], slope


def worst_group_table(
    impostors: Mapping[str, FloatArray | Tail],
    fmrs: Sequence[float] = TABLE_FMRS,
    margin: float = 1.0,
    down_to: float | None = None,
) -> WorstGroupTable:
    """A table whose every row holds for the all-pairs distribution and for every group's.

    With ``margin`` m, the row that promises rate f carries the threshold measured for f/m: a
    factor for how much a group's rate varies from one sample of people to another. With
    ``down_to``, rows go on below what the pairs can measure, to that rate, along the tail model
    (``_tail_model``; a group below its own floor by its ratio to all pairs, as above it)."""
    tails = {g: _tail(s) for g, s in impostors.items()}
    if margin != 1.0:
        inner = worst_group_table(tails, [f / margin for f in fmrs], 1.0, None if down_to is None else down_to / margin)
        rows = [[round(f * margin, 12), t] for f, t in inner.rows]
        return WorstGroupTable(
            rows, inner.floors, inner.ratios, inner.governing, inner.measured_to * margin, inner.tail_slope
        )
    all_scores = tails["all"]
    base = _measured(all_scores, fmrs)
    if len(base) < 2:
        raise ValueError("too few impostor pairs for a calibration table")
    floor, floor_t, slope = _tail_model(base)

    def all_pairs_at(f: float) -> float:
        if f * all_scores.n >= MIN_IMPOSTORS:
            return all_scores.threshold_at(f)
        return float(floor_t + slope * (np.log10(floor) - np.log10(f)))

    groups = {g: s for g, s in tails.items() if g not in ("all", "cross_group") and s.n}
    measured = {g: _measured(s, fmrs) for g, s in groups.items()}
    floors, ratios = {}, {}
    for g, table in measured.items():
        if not table:
            continue
        floors[g] = min(table)
        last = sorted(table)[:3]  # the smallest rates this group supports
        ratios[g] = max(max(groups[g].rate_at(table[f]) / max(all_scores.rate_at(table[f]), 1e-12), 1.0) for f in last)
    rows, governing = [], []
    measured_to = 0.0
    wanted = [f for f in fmrs if f in base or (down_to is not None and f >= down_to)]
    for f in wanted:
        best, who = all_pairs_at(f), "all" if f in base else "all (tail model)"
        rests_on_pairs = f in base
        for g in groups:
            if f in measured[g]:
                t = measured[g][f]
            elif g in ratios:
                target = f / ratios[g]  # the all-pairs rate at which this group's is f, by its ratio
                t = all_pairs_at(target)
                rests_on_pairs = rests_on_pairs and target * all_scores.n >= MIN_IMPOSTORS
            else:
                continue
            if t > best:
                best, who = t, g if f in measured[g] or target * all_scores.n >= MIN_IMPOSTORS else f"{g} (tail model)"
        rows.append([f, math.ceil(float(best) * 1e6) / 1e6])  # rounded up: never looser than measured
        governing.append(who)
        if rests_on_pairs:
            measured_to = f
    for i in range(1, len(rows)):  # monotone: a stricter rate never has a lower threshold
        rows[i][1] = max(rows[i][1], rows[i - 1][1] + 1e-6)
    return WorstGroupTable(rows, floors, ratios, governing, measured_to, slope)


def anchored_rows(
    own: Sequence[Sequence[float]],
    base: Sequence[Sequence[float]],
    near: int = 3,
    own_model: Sequence[Sequence[float]] = (),
) -> tuple[list[list[float]], float]:
    """A table measured on fewer pairs (a template of several photos, fused looks) continued below its
    floor along a better-measured one (one photo, one look): each missing row is the base's threshold
    plus the largest gap (at least 0) between the two over ``own``'s last ``near`` rows, or, where
    higher, the row of ``own_model`` (the kind's own table continued by its tail model): a kind whose
    tail falls off more slowly than the base's keeps its own slope. Returns the rows and that gap."""
    base_at = {round(f, 12): th for f, th in base}
    own_at = {round(f, 12): th for f, th in own}
    model_at = {round(f, 12): th for f, th in own_model}
    shared = [f for f in sorted(own_at, reverse=True) if f in base_at][-near:]
    gap = max([0.0] + [own_at[f] - base_at[f] for f in shared])
    rows = [
        [f, own_at[f]] if f in own_at else [f, math.ceil(max(base_at[f] + gap, model_at.get(f, 0.0)) * 1e6) / 1e6]
        for f in sorted(base_at, reverse=True)
    ]
    for i in range(1, len(rows)):
        rows[i][1] = max(rows[i][1], rows[i - 1][1] + 1e-6)
    return rows, gap


STATED = (1e-3, 1e-4, 1e-5, 1e-6)


def group_report(
    emb: FloatArray,
    person: npt.NDArray[np.int_],
    files: Sequence[str],
    groups: Mapping[str, str],
    default_threshold: float,
    threshold_for: Callable[[float], float],
) -> dict[str, object]:
    """``edge eval lfw --groups``: rates per group at the default threshold and at the device's
    thresholds for 1e-3 … 1e-6 (impostors: every cross-identity pair; genuine: every same-person pair)."""
    label = labels_for(files, groups)
    imp = impostors_by_group(emb, person, label)
    gen = genuine_by_group(emb, person, label)
    at_default = rates_at(default_threshold, imp, gen)
    by_rate: dict[str, dict[str, object]] = {}
    for f in STATED:
        t = threshold_for(f)
        row: dict[str, object] = {"threshold": round(t, 4)}
        row.update({g: r.observed_fmr for g, r in rates_at(t, imp, gen).items() if g != "cross_group"})
        by_rate[f"{f:g}"] = row
    return {
        "labelled_images": int(sum(x is not None for x in label)),
        "groups": {
            g: {
                "impostor_pairs": r.impostor_pairs,
                "observed_fmr": r.observed_fmr,
                "genuine_pairs": r.genuine_pairs,
                "fnmr": r.fnmr,
            }
            for g, r in at_default.items()
            if g not in ("all", "cross_group")
        },
        "cross_group": {
            "impostor_pairs": at_default["cross_group"].impostor_pairs,
            "observed_fmr": at_default["cross_group"].observed_fmr,
        },
        "all": {
            "impostor_pairs": at_default["all"].impostor_pairs,
            "observed_fmr": at_default["all"].observed_fmr,
            "genuine_pairs": at_default["all"].genuine_pairs,
            "fnmr": at_default["all"].fnmr,
        },
        "fmr_at_stated": by_rate,
        "det": det_points(imp, gen),
        "operating_point": {
            "threshold": round(default_threshold, 4),
            "groups": {
                g: {"fmr": r.observed_fmr, "fnmr": r.fnmr}
                for g, r in at_default.items()
                if g != "cross_group" and r.fnmr is not None
            },
        },
    }


def det_points(
    impostors: Mapping[str, FloatArray], genuine: Mapping[str, FloatArray], points: int = 40
) -> dict[str, list[list[float]]]:
    """The DET curve of each group: (false-match rate, false non-match rate) at thresholds spread
    evenly in log(FMR) over the all-pairs impostors, from 1e-1 down to what they can measure."""
    all_imp = _tail(impostors["all"])
    lowest = max(MIN_IMPOSTORS / max(all_imp.n, 1), 1e-7)
    rates = np.logspace(-1, np.log10(lowest), points)
    thresholds = [all_imp.threshold_at(float(f)) for f in rates]
    out: dict[str, list[list[float]]] = {}
    for g, imp in impostors.items():
        gen = genuine.get(g)
        if g == "cross_group" or gen is None or not len(gen) or not len(imp):
            continue
        tail = _tail(imp)
        curve = [[tail.rate_at(th), float((gen < th).mean())] for th in thresholds]
        out[g] = [[round(a, 9), round(b, 6)] for a, b in curve if a > 0]
    return out
