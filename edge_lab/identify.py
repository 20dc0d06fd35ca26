"""``edge eval identify``: the share of enrolled people a device identifies from one photo.

Person-level recall, over everyone cast: ``people`` people with at least ``photos`` + 1 images
are enrolled from ``photos`` of them (the device's own enrolment: detection, the quality gate,
the mean of their embeddings), the gallery is filled with other people (with up to ``photos``
photos each) to ``gallery_size`` identities, and one more photo of each enrolled person is
judged as ``edge identify`` would (the thresholds of a device running this gallery). A person
counts as identified only when that photo is accepted as them; an enrolment with no usable
photo, a probe photo the quality gate refuses or that gives no face, and a rejection all count
as missed, never as left out. Strangers (people not enrolled) are judged too: any identity they
are given is a wrong identity, as is an enrolled person accepted as someone else.

``condition`` transforms the probe photos (a camera's picture: grey at night, dark, blurred,
compressed), never the enrolment photos. Seeded: the same arguments cast the same people.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.capture.imageio import read_image
from edge.errors import ImageError, InputError
from edge.gallery.build import Entry, gallery_of
from edge.gallery.enroll import photo_face
from edge.recognition.pipeline import Recognizer
from edge.types import FloatArray, Match
from edge_lab.conditions import apply_condition
from edge_lab.lfw import people_photos


@dataclass(frozen=True)
class Probe:
    embedding: FloatArray | None  # None: no face, or refused by the quality gate
    face_px: float
    condition: str
    reason: str


class _Embeddings:
    """Each photo embedded once: as an enrolment photo (the rules of ``edge enroll``: one person, the
    quality gate), or as a probe in a condition (its main face, as ``edge identify`` judges a portrait)."""

    def __init__(self, rec: Recognizer) -> None:
        self.rec = rec
        self._cache: dict[tuple[Path, str], Probe] = {}

    def enrolment(self, path: Path) -> FloatArray | None:
        key = (path, "enrol")
        if key not in self._cache:
            aligned, reason = photo_face(self.rec, path)
            self._cache[key] = Probe(None if aligned is None else self.rec.embed([aligned])[0], 0.0, "colour", reason)
        return self._cache[key].embedding

    def probe(self, path: Path, condition: str) -> Probe:
        key = (path, condition)
        if key not in self._cache:
            try:
                image = apply_condition(read_image(path), condition)
            except ImageError as exc:
                self._cache[key] = Probe(None, 0.0, "colour", str(exc))
                return self._cache[key]
            aligned = self.rec.still(image).aligned
            if aligned is None:
                self._cache[key] = Probe(None, 0.0, "colour", "no face found")
            elif not aligned.quality.ok:
                self._cache[key] = Probe(None, 0.0, "colour", f"quality: {aligned.quality.reason}")
            else:
                q = aligned.quality
                self._cache[key] = Probe(self.rec.embed([aligned])[0], q.face_px, q.condition, "")
        return self._cache[key]


def run_once(
    rec: Recognizer,
    people: Mapping[str, Sequence[Path]],
    photos: int,
    gallery_size: int,
    shown: int,
    strangers: int,
    condition: str,
    seed: int,
    cache: _Embeddings,
    groups: Mapping[str, str] | None = None,
    min_photos: int = 0,
) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    names = sorted(people)
    least = max(photos + 1, min_photos)
    able = [n for n in names if len(people[n]) >= least]
    if len(able) < shown:
        raise InputError(f"{len(able)} people have {least} photos or more, {shown} wanted (--people)")
    order = [str(n) for n in rng.permutation(able)]
    cast = order[:shown]
    others = [str(n) for n in rng.permutation([n for n in names if n not in set(cast)])]
    if len(others) < strangers + max(0, gallery_size - shown):
        raise InputError(
            f"{len(others)} other people: too few for {strangers} strangers and a gallery of {gallery_size}"
        )
    stranger_names, filler = others[:strangers], others[strangers:]
    entries: list[tuple[str, str | None, FloatArray]] = []
    enrolled: set[str] = set()
    probe_photo: dict[str, Path] = {}
    for name in cast + filler:
        if name not in cast and len(entries) >= gallery_size:
            break
        files = [people[name][int(i)] for i in rng.permutation(len(people[name]))]
        vecs = [e for e in (cache.enrolment(f) for f in files[:photos]) if e is not None]
        if name in cast:
            probe_photo[name] = files[-1]  # the same photo whatever the number enrolled (never one of them)
        if vecs:  # a cast person none of whose photos passed is still probed: a miss, counted
            entries.append((name, None, np.stack(vecs)))
            enrolled.add(name)
    snap = rec.matcher.snapshot(gallery_of(Entry(ident, label, vecs) for ident, label, vecs in entries))
    outcomes: dict[str, str] = {}
    probes = [(name, cache.probe(probe_photo[name], condition), True) for name in cast]
    probes += [(name, cache.probe(people[name][0], condition), False) for name in stranger_names]
    judged = [(n, p, e) for n, p, e in probes if p.embedding is not None]
    matches: list[Match] = (
        snap.match(
            np.stack([p.embedding for _, p, _ in judged if p.embedding is not None]),
            [p.face_px for _, p, _ in judged],
            conditions=[p.condition for _, p, _ in judged],
        )
        if judged
        else []
    )
    by_name = {n: m for (n, _, _), m in zip(judged, matches, strict=True)}
    wrong_strangers = 0
    for name, probe, is_cast in probes:
        m = by_name.get(name)
        accepted = m is not None and m.accepted
        if not is_cast:
            wrong_strangers += accepted
            continue
        if name not in enrolled:
            outcomes[name] = "missed: not enrolled (no usable photo)"
        elif m is None:
            outcomes[name] = f"missed: probe {probe.reason}"
        elif not accepted:
            outcomes[name] = "missed: not accepted"
        elif m.identity_id != name:
            outcomes[name] = "wrong identity"
        else:
            outcomes[name] = "identified"
    identified = sum(o == "identified" for o in outcomes.values())
    out: dict[str, object] = {
        "seed": seed,
        "gallery_identities": len(snap),
        "threshold_one_photo": round(snap.threshold, 4),
        "people": shown,
        "enrolled": len(enrolled & set(cast)),
        "identified": identified,
        "recall": round(identified / shown, 4),
        "wrong_identities": sum(o == "wrong identity" for o in outcomes.values()) + wrong_strangers,
        "wrong_identities_of_strangers": wrong_strangers,
        "strangers": len(stranger_names),
        "missed_by_reason": _count(o for o in outcomes.values() if o.startswith("missed")),
    }
    if groups is not None:
        by_group: dict[str, list[str]] = {}
        for name, o in outcomes.items():
            g = groups.get(people[name][0].name, "unlabelled")
            by_group.setdefault(g, []).append(o)
        out["by_group"] = {
            g: {
                "people": len(v),
                "identified": sum(o == "identified" for o in v),
                "recall": round(sum(o == "identified" for o in v) / len(v), 4),
                "wrong_identities": sum(o == "wrong identity" for o in v),
            }
            for g, v in sorted(by_group.items())
        }
    return out


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        key = item.split(": ", 1)[1].split(" (")[0] if ": " in item else item
        out[key] = out.get(key, 0) + 1
    return out


def evaluate(
    rec: Recognizer,
    root: Path,
    photos: int = 1,
    gallery_size: int = 100,
    people: int = 60,
    strangers: int = 60,
    condition: str = "none",
    seed: int = 0,
    repeats: int = 3,
    groups: Mapping[str, str] | None = None,
    min_photos: int = 0,
) -> dict[str, object]:
    """``repeats`` casts (seeds ``seed`` … ``seed + repeats - 1``), each on its own; their mean recall.
    ``min_photos``: cast only people with at least that many photos (the same people for every
    ``photos``, to compare one number of enrolment photos with another)."""
    if photos < 1 or people < 1 or gallery_size < people or repeats < 1 or strangers < 0:
        raise InputError("--photos, --people and --repeats must be at least 1, and --gallery-size at least --people")
    apply_condition(np.zeros((8, 8, 3), np.uint8), condition)  # an unknown condition fails before any work
    folders = people_photos(root)
    cache = _Embeddings(rec)
    runs = [
        run_once(rec, folders, photos, gallery_size, people, strangers, condition, seed + r, cache, groups, min_photos)
        for r in range(repeats)
    ]
    recalls = [float(r["recall"]) for r in runs]  # type: ignore[arg-type]
    out: dict[str, object] = {
        "root": str(root),
        "photos": photos,
        "min_photos": max(photos + 1, min_photos),
        "gallery_size": gallery_size,
        "condition": condition,
        "max_false_match_rate": rec.settings.match.max_false_match_rate,
        "recall_mean": round(float(np.mean(recalls)), 4),
        "recall_min": round(min(recalls), 4),
        "wrong_identities": sum(int(r["wrong_identities"]) for r in runs),  # type: ignore[call-overload]
        "runs": runs,
    }
    if groups is not None:
        merged: dict[str, list[float]] = {}
        for r in runs:
            for g, v in r["by_group"].items():  # type: ignore[attr-defined]
                merged.setdefault(g, []).append(v["recall"])
        out["recall_by_group"] = {g: round(float(np.mean(v)), 4) for g, v in merged.items()}
    return out
