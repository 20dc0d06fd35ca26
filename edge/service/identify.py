"""``edge identify``: every face in some photos against a gallery, judged as a device would.

The operator's check of a gallery before publishing it: the device's own detection
(every face, any size: the region scanner over the whole photo), alignment, quality
gate, embedder and matcher, with the thresholds a device running this gallery
would use (its size sets the open-set correction; each face's size picks its
band). A face that fails the quality gate is reported with the reason, not judged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.capture.imageio import IMAGE_SUFFIXES, read_image
from edge.device.keys import DeviceKey
from edge.errors import ImageError, InputError
from edge.gallery.admit import Policy, load_bundle_file, to_gallery
from edge.gallery.build import gallery_of
from edge.gallery.enroll import enroll_directory
from edge.recognition.match import Gallery, GallerySnapshot
from edge.recognition.pipeline import Recognizer


@dataclass(frozen=True)
class FaceVerdict:
    """One line of output: one face of one photo (or a photo that gave none)."""

    file: str
    face: int | None  # index in the photo, largest first; None when the photo gave no face
    bbox: tuple[int, int, int, int] | None
    identity_id: str | None
    label: str | None
    score: float | None
    threshold: float | None
    est_false_match_rate: float | None
    quality_ok: bool
    reason: str

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "face": self.face,
            "bbox": list(self.bbox) if self.bbox else None,
            "identity_id": self.identity_id,
            "label": self.label,
            "score": None if self.score is None else round(self.score, 4),
            "threshold": None if self.threshold is None else round(self.threshold, 4),
            "est_false_match_rate": self.est_false_match_rate,
            "quality_ok": self.quality_ok,
            "reason": self.reason,
        }


def load_gallery(
    recognizer: Recognizer, path: Path, trusted: Sequence[Ed25519PublicKey], device_key: DeviceKey | None = None
) -> Gallery:
    """A photos folder (enrolled now, as a device does at start-up) or a signed bundle (verified; a sealed one
    opened with ``device_key``, the key of a device it was made for). The operator's own check: a bundle in
    the clear is read too."""
    if path.is_dir():
        reports = enroll_directory(recognizer, path)
        return gallery_of(reports, name=path.name)
    if not path.is_file():
        raise InputError(f"--gallery {path}: no such folder or bundle")
    if not trusted:
        raise InputError(f"--gallery {path} is a signed bundle: give the key that signed it with --trusted-key")
    policy = Policy(
        tuple(trusted),
        recognizer.embedder_sha256,
        None,
        1 << 30,
        recognizer.embedder_names,
        recognizer.embedder.dim,
        device_key,
        True,
    )
    bundle, _ = load_bundle_file(path, policy)
    return to_gallery(bundle)


def photos(paths: Sequence[Path]) -> Iterator[Path]:
    """The photos named, folders walked in name order; a path that does not exist is an InputError."""
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            yield p
        else:
            raise InputError(f"{p}: no such file or folder")


def identify(
    recognizer: Recognizer, snapshot: GallerySnapshot, path: Path, include_label: bool = True
) -> list[FaceVerdict]:
    """Every face of one photo; an unreadable photo is one verdict whose reason says why."""
    try:
        image = read_image(path)
    except ImageError as exc:
        return [FaceVerdict(str(path), None, None, None, None, None, None, None, False, str(exc))]
    faces = sorted(recognizer.detect(image), key=lambda f: -f.box.width * f.box.height)
    if not faces:
        return [FaceVerdict(str(path), None, None, None, None, None, None, None, False, "no face found")]
    aligned = recognizer.align(image, faces)
    good = [a for a in aligned if a.quality.ok]
    matches = iter(snapshot.match(recognizer.embed(good), [a.quality.face_px for a in good]) if good else [])
    out = []
    for i, a in enumerate(aligned):
        b = a.face.box
        box = (round(b.x0), round(b.y0), round(b.x1), round(b.y1))
        if not a.quality.ok:
            band = snapshot.threshold_for(a.quality.face_px)
            out.append(FaceVerdict(str(path), i, box, None, None, None, band.threshold, None, False, a.quality.reason))
            continue
        m = next(matches)
        ident = m.identity_id if m.accepted else None
        label = m.label if (m.accepted and include_label) else None
        out.append(
            FaceVerdict(
                str(path),
                i,
                box,
                ident,
                label,
                m.score,
                m.threshold,
                m.est_false_match_rate if m.accepted else None,
                True,
                "",
            )
        )
    return out
