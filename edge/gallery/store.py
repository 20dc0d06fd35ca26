"""Device side of signed galleries: the checks a bundle must pass, in order, and
turning a verified bundle into the matcher's Gallery.

Checks: size limit → signature by a trusted key → version strictly above the one
in force (a ``rollback`` bundle may go lower, being signed to say so) → embedder
sha256 equal to the device's → parse and validate. Each failure is a BundleError
naming the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import InputError
from edge.gallery.bundle import Bundle, BundleError, load_public_key, parse, read_header, verify_signature
from edge.match import Gallery


def verify_bundle(
    data: bytes,
    trusted: Sequence[Ed25519PublicKey],
    embedder_sha256: str,
    current_version: int | None = None,
    max_bytes: int = 64 << 20,
    gallery_name: str | None = None,
    redacted: frozenset[str] = frozenset(),
) -> Bundle:
    if len(data) > max_bytes:
        raise BundleError("size", f"{len(data)} bytes exceeds the limit of {max_bytes}")
    if not trusted:
        raise BundleError("signature", "no trusted public key configured")
    signed = verify_signature(data, list(trusted))
    header = read_header(signed.head)
    version, kind = int(header.get("version", -1)), header.get("kind")
    if current_version is not None and version <= current_version and kind != "rollback":
        raise BundleError(
            "version", f"version {version} is not above the applied version {current_version} (replay or rollback)"
        )
    if header.get("embedder_sha256") != embedder_sha256:
        raise BundleError(
            "model",
            f"made for embedder {str(header.get('embedder_sha256'))[:16]}, this device runs {embedder_sha256[:16]}",
        )
    if gallery_name is not None and header.get("gallery") != gallery_name:
        raise BundleError("parse", f"bundle is for gallery {header.get('gallery')!r}, device follows {gallery_name!r}")
    return parse(signed, redacted)


def expired(meta: dict[str, str], now: datetime) -> bool:
    value = meta.get("expires_at")
    if not value:
        return False
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return True  # an unreadable expiry must not keep someone matchable
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when <= now


def to_gallery(bundle: Bundle, now: datetime | None = None) -> Gallery:
    """The matcher's gallery: identities with embeddings that have not expired."""
    now = now or datetime.now(timezone.utc)
    entries = [
        (i.id, i.label, i.embeddings) for i in bundle.identities if len(i.embeddings) and not expired(i.meta, now)
    ]
    return Gallery.build(entries, version=bundle.version, name=bundle.gallery)


def load_trusted(paths: Sequence[Path]) -> list[Ed25519PublicKey]:
    return [load_public_key(p) for p in paths]


def load_bundle_file(path: Path, trusted: Sequence[Ed25519PublicKey], embedder_sha256: str, name: str | None) -> Bundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"gallery bundle {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return verify_bundle(data, trusted, embedder_sha256, gallery_name=name)
    except BundleError as exc:
        raise InputError(f"{path}: {exc}") from None
