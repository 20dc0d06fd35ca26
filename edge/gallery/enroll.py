"""Enrolment: ``DIR/<identity_id>/*.jpg|png`` → gallery entries, with a reason per photo.

The device's own pipeline is used (detect → align → quality gate → embed). A
photo with no face, two faces of similar size (who is to be enrolled?), or too low
a quality is rejected with its reason; small faces in the background are ignored. Only embeddings and metadata are kept, never the photos.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.capture.imageio import IMAGE_SUFFIXES, read_image
from edge.device.config import TOMLDecodeError, parse_toml
from edge.errors import ImageError, InputError
from edge.recognition.pipeline import Recognizer, main_face
from edge.types import FloatArray

IDENTITY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# A second face at least this fraction of the main face's width makes a photo ambiguous;
# smaller ones are bystanders in the background (found now that large photos are tiled).
RIVAL_FRACTION = 0.5


@dataclass
class IdentityReport:
    identity_id: str
    label: str | None
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    spread: float = 0.0  # mean cosine distance of the photos to their mean
    embeddings: FloatArray | None = None
    meta: dict[str, str] = field(default_factory=dict)


def read_identity_meta(folder: Path) -> dict[str, str]:
    path = folder / "identity.toml"
    if not path.is_file():
        return {}
    try:
        data = parse_toml(path.read_text())
    except (TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from None
    allowed = {"label", "expires_at", "purpose", "notes"}
    unknown = set(data) - allowed
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")
    return {k: str(v) for k, v in data.items()}


def enroll_identity(rec: Recognizer, folder: Path) -> IdentityReport:
    meta = read_identity_meta(folder)
    report = IdentityReport(folder.name, meta.get("label"), meta=meta)
    crops = []
    for photo in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            image = read_image(photo)
        except ImageError as exc:
            report.rejected[photo.name] = str(exc)
            continue
        faces = rec.detect(image)
        if not faces:
            report.rejected[photo.name] = "no face found"
            continue
        main = main_face(faces, image)
        rivals = [f for f in faces if f is not main and f.box.width >= RIVAL_FRACTION * main.box.width]
        if rivals:
            report.rejected[photo.name] = (
                f"{len(rivals) + 1} faces of similar size: enrolment photos must show one person"
            )
            continue
        aligned = rec.align(image, [main])[0]
        if not aligned.quality.ok:
            report.rejected[photo.name] = f"quality: {aligned.quality.reason}"
            continue
        crops.append(aligned)
        report.accepted.append(photo.name)
    if crops:
        emb = rec.embed(crops)
        mean = emb.mean(axis=0)
        mean /= np.linalg.norm(mean)
        report.spread = round(float(1.0 - (emb @ mean).mean()), 4)
        report.embeddings = emb
    return report


def enroll_directory(rec: Recognizer, root: Path, skip_failed: bool = True) -> list[IdentityReport]:
    """Every identity folder under ``root``; an identity with no usable photo fails
    the run unless ``skip_failed``."""
    if not root.is_dir():
        raise InputError(f"gallery folder {root} does not exist")
    reports = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not IDENTITY_ID.match(folder.name):
            raise InputError(f"gallery folder {folder}: '{folder.name}' is not a valid identity id")
        rep = enroll_identity(rec, folder)
        if rep.embeddings is None and not skip_failed:
            reasons = "; ".join(f"{k}: {v}" for k, v in rep.rejected.items()) or "no photos"
            raise InputError(f"identity {rep.identity_id} has no usable photo ({reasons})")
        reports.append(rep)
    if not any(r.embeddings is not None for r in reports):
        raise InputError(f"gallery folder {root}: no identity could be enrolled")
    return reports
