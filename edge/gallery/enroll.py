"""Enrolment: ``DIR/<identity_id>/*.jpg|png`` (and clips, ``*.mp4|mkv|avi``) → gallery entries,
with a reason per photo.

The device's own pipeline is used (detect → align → quality gate → embed). A
photo with no face, two faces of similar size (who is to be enrolled?), or too low
a quality is rejected with its reason; small faces in the background are ignored. A clip
gives a few diverse, sharp looks of the one person it shows (``edge.gallery.clip``). Only
embeddings and metadata are kept, never the photos or frames.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.capture.imageio import IMAGE_SUFFIXES, read_image
from edge.device.config import TOMLDecodeError, parse_toml
from edge.errors import ImageError, InputError
from edge.gallery.clip import CLIP_SUFFIXES, enrol_clip, rivals
from edge.recognition.pipeline import Recognizer, main_face
from edge.types import AlignedFace, FloatArray, ImageArray

IDENTITY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# A second face at least RIVAL_FRACTION of the main face's width, wholly in the picture, makes a photo
# ambiguous (edge.gallery.clip.rivals); smaller ones are bystanders in the background, and one the
# picture's edge cuts is someone beside the subject.


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


def enroll_identity(recognizer: Recognizer, folder: Path, clips: Sequence[Path] = ()) -> IdentityReport:
    """Every photo and clip of one identity's folder (and ``clips`` given besides)."""
    meta = read_identity_meta(folder) if folder.is_dir() else {}
    report = IdentityReport(folder.name, meta.get("label"), meta=meta)
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    crops = []
    for photo in (p for p in files if p.suffix.lower() in IMAGE_SUFFIXES):
        aligned, reason = photo_face(recognizer, photo)
        if aligned is None:
            report.rejected[photo.name] = reason
            continue
        crops.append(aligned)
        report.accepted.append(photo.name)
    parts = [recognizer.embed(crops)] if crops else []
    for clip in [p for p in files if p.suffix.lower() in CLIP_SUFFIXES] + list(clips):
        result = enrol_clip(recognizer, clip)
        if result.embeddings is None:
            report.rejected[clip.name] = result.reason
            continue
        parts.append(result.embeddings)
        report.accepted += [f"{clip.name}#{f}" for f in result.frames]
    if parts:
        emb = np.concatenate(parts)
        mean = emb.mean(axis=0)
        mean /= np.linalg.norm(mean)
        report.spread = round(float(1.0 - (emb @ mean).mean()), 4)
        report.embeddings = emb
    return report


def photo_face(recognizer: Recognizer, photo: Path, image: ImageArray | None = None) -> tuple[AlignedFace | None, str]:
    """The aligned face of one enrolment photo (``image``: its pixels, when already read or transformed),
    or None and why not."""
    try:
        image = read_image(photo) if image is None else image
    except ImageError as exc:
        return None, str(exc)
    faces = recognizer.detect(image)
    if not faces:
        return None, "no face found"
    main = main_face(faces, image)
    others = rivals(faces, main, image.shape[1], image.shape[0])
    if others:
        return None, f"{len(others) + 1} faces of similar size: enrolment photos must show one person"
    aligned = recognizer.align(image, [main])[0]
    if not aligned.quality.ok:
        return None, f"quality: {aligned.quality.reason}"
    return aligned, ""


def enroll_directory(recognizer: Recognizer, root: Path, skip_failed: bool = True) -> list[IdentityReport]:
    """Every identity folder under ``root``; an identity with no usable photo fails
    the run unless ``skip_failed``."""
    if not root.is_dir():
        raise InputError(f"gallery folder {root} does not exist")
    reports = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not IDENTITY_ID.match(folder.name):
            raise InputError(f"gallery folder {folder}: '{folder.name}' is not a valid identity id")
        rep = enroll_identity(recognizer, folder)
        if rep.embeddings is None and not skip_failed:
            reasons = "; ".join(f"{k}: {v}" for k, v in rep.rejected.items()) or "no photos"
            raise InputError(f"identity {rep.identity_id} has no usable photo ({reasons})")
        reports.append(rep)
    if not any(r.embeddings is not None for r in reports):
        raise InputError(f"gallery folder {root}: no identity could be enrolled")
    return reports
