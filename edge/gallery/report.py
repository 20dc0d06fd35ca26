"""How well each enrolled person will be recognised, told before the gallery is published.

For every identity: how many templates (photos, clip looks) it has, and how they match each
other at the configured rate: each one against the mean of the others (leave one out), with
the threshold a device running this gallery would use for such a comparison (its size, the
identity's photos, a full-size face). Warnings name what to do:

- one template: a person enrolled from one photo is missed far more often than one enrolled
  from three (``edge eval identify --photos 1`` and ``--photos 3`` measure it);
- a template that does not match the others: it may show someone else, or a face too
  different (age, pose, light) from the rest; check or replace it;
- templates that match none of each other: the identity is unlikely to be recognised at all.

The same report is printed by ``edge enroll`` and ``edge gallery inspect`` (``--json`` too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.recognition.match import Gallery, GallerySnapshot

ADVICE_ONE = "add 2-4 more photos (different days, light, a little head turn) or enrol from a clip"


@dataclass(frozen=True)
class IdentityCheck:
    identity_id: str
    templates: int
    self_matched: int  # templates that match the mean of the others (of ``templates``, when 2 or more)
    weakest: float | None  # the lowest leave-one-out score
    threshold: float | None  # the threshold those comparisons are judged with
    warnings: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "identity_id": self.identity_id,
            "templates": self.templates,
            "self_matched": self.self_matched,
            "weakest": None if self.weakest is None else round(self.weakest, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "warnings": list(self.warnings),
        }


def check_gallery(snapshot: GallerySnapshot, names: Sequence[Sequence[str]] | None = None) -> list[IdentityCheck]:
    """One check per identity of ``snapshot``'s gallery; ``names`` (per identity, per template) label the
    templates in warnings (photo file names), else they are numbered."""
    gallery: Gallery = snapshot.gallery
    band = snapshot.bands[0].band  # enrolment photos against each other: full-size faces
    out = []
    for i, ident in enumerate(gallery.identity_ids):
        emb = gallery.photos(i)
        k = len(emb)
        labels = list(names[i]) if names is not None else [f"template {j + 1}" for j in range(k)]
        if k == 1:
            out.append(
                IdentityCheck(ident, 1, 0, None, None, (f"one template only: likely to be missed; {ADVICE_ONE}",))
            )
            continue
        threshold = band.table_for(k - 1, 1).threshold_for(snapshot.per_identity_fmr)
        scores = []
        for j in range(k):
            rest = np.delete(emb, j, axis=0).mean(axis=0)
            scores.append(float(emb[j] @ (rest / np.linalg.norm(rest))))
        matched = [s >= threshold for s in scores]
        warnings = []
        if not any(matched):
            warnings.append(
                f"its {k} templates match none of each other (best {max(scores):.2f} < {threshold:.2f}): "
                "unlikely to be recognised; check that they show one person, and re-enrol"
            )
        else:
            warnings += [
                f"{labels[j]} does not match the others ({s:.2f} < {threshold:.2f}): it may show someone else, or a "
                "face too different from the rest; check or replace it"
                for j, s in enumerate(scores)
                if s < threshold
            ]
        if k == 2 and all(matched):
            warnings.append(f"two templates: recognised less often than with three or more; {ADVICE_ONE}")
        out.append(IdentityCheck(ident, k, sum(matched), min(scores), threshold, tuple(warnings)))
    return out


def format_checks(checks: Sequence[IdentityCheck], snapshot: GallerySnapshot) -> list[str]:
    """The report as lines of text: a table, then the warnings."""
    lines = [f"{'identity':<24} {'templates':>9} {'match each other':>17}"]
    for c in checks:
        mutual = "-" if c.templates == 1 else f"{c.self_matched} of {c.templates}"
        lines.append(f"{c.identity_id:<24} {c.templates:>9} {mutual:>17}")
    warned = [c for c in checks if c.warnings]
    rate = snapshot.settings.max_false_match_rate
    lines.append(
        f"{len(snapshot)} identities; thresholds for {rate:g} per stranger at this gallery size; "
        f"{len(warned)} with a warning"
    )
    if snapshot.beyond_calibration:
        lines.append(
            f"note: {len(snapshot)} identities ask each comparison for {snapshot.per_identity_fmr:.1e}, below the "
            f"{snapshot.measured_to:.1e} the calibration measured on pairs: the thresholds there follow its tail model "
            "(docs/thresholds.md)"
        )
    for c in warned:
        lines += [f"warning: {c.identity_id}: {w}" for w in c.warnings]
    return lines
