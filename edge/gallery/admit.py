"""Admitting a gallery bundle: every check, in order, in one place.

    size → framing → signature → header → model → gallery → version → body

1. size: no larger than ``gallery.max_bundle_bytes``;
2. framing: the magic and two length fields, the only bytes read unverified;
3. signature: the head is signed by a trusted Ed25519 key;
4. header: each field of the signed header has its type and range;
5. model: made for the embedder this device runs (embeddings of another model
   would match nobody, or the wrong people);
6. gallery: for the gallery this device follows;
7. version: strictly above the one in force (no replay, no rollback unless the
   bundle is signed as ``rollback``);
8. body: the index and every identity's embeddings, bound to the head by digests.

Each failure is a ``BundleError`` naming the step; the version is reported only
when it was read from a verified header. What happens after admission (expiry,
writing to disk, the swap) is the caller's: ``store.py`` and ``sync.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import InputError
from edge.gallery.bundle import (
    Buffer,
    Bundle,
    BundleError,
    frame,
    load_public_key,
    parse_identities,
    read_header,
    read_index,
    verify_signature,
)
from edge.recognition.match import Gallery


@dataclass(frozen=True)
class Policy:
    """What this device accepts."""

    trusted: tuple[Ed25519PublicKey, ...]
    embedder_sha256: str
    gallery_name: str | None = None
    max_bytes: int = 64 << 20
    embedder_names: Mapping[str, str] = field(default_factory=dict)  # sha256 → manifest name, for refusals
    embedder_dim: int | None = None  # the device's template dimension (None: not checked)

    def embedder_named(self, sha256: str, given: str | None = None) -> str:
        name = given or self.embedder_names.get(sha256) or "an embedder this device does not know"
        return f"{name} (sha256 {sha256[:12]}…)"


def admit(
    data: Buffer, policy: Policy, current_version: int | None = None, redacted: frozenset[str] = frozenset()
) -> Bundle:
    """The bundle, if it passes every check in order; else BundleError naming the step."""
    if len(data) > policy.max_bytes:  # 1. size
        raise BundleError("size", f"{len(data)} bytes exceeds the limit of {policy.max_bytes}")
    frame(data)  # 2. framing
    if not policy.trusted:
        raise BundleError("signature", "no trusted public key configured")
    signed = verify_signature(data, list(policy.trusted))  # 3. signature
    header = read_header(signed)  # 4. header
    version = header.version
    if header.embedder_sha256 != policy.embedder_sha256:  # 5. model
        raise BundleError(
            "model",
            f"made for embedder {policy.embedder_named(header.embedder_sha256, header.embedder)}, this device runs "
            f"{policy.embedder_named(policy.embedder_sha256)}: enrol again from the photos with this device's "
            "embedder (docs/models.md)",
            version,
        )
    if policy.embedder_dim is not None and header.embeddings and header.dim != policy.embedder_dim:
        raise BundleError(
            "model",
            f"templates of {header.dim} dimensions, this device's embedder gives {policy.embedder_dim}",
            version,
        )
    if policy.gallery_name is not None and header.gallery != policy.gallery_name:  # 6. gallery
        raise BundleError(
            "gallery", f"bundle is for gallery {header.gallery!r}, this device follows {policy.gallery_name!r}", version
        )
    if current_version is not None and version <= current_version and header.kind != "rollback":  # 7. version
        raise BundleError(
            "version",
            f"version {version} is not above the applied version {current_version} (replay or rollback)",
            version,
        )
    try:  # 8. body
        identities = parse_identities(signed, header, read_index(signed), redacted)
    except BundleError as exc:
        raise BundleError(exc.step, exc.reason, version) from None
    return Bundle(
        header.gallery, version, header.kind, header.created_at, header.embedder_sha256, identities, signed.signer
    )


def verify_bundle(
    data: Buffer,
    trusted: Sequence[Ed25519PublicKey],
    embedder_sha256: str,
    current_version: int | None = None,
    max_bytes: int = 64 << 20,
    gallery_name: str | None = None,
    redacted: frozenset[str] = frozenset(),
) -> Bundle:
    """``admit`` with the policy given as arguments (CLI, benchmarks)."""
    return admit(data, Policy(tuple(trusted), embedder_sha256, gallery_name, max_bytes), current_version, redacted)


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


def to_gallery(bundle: Bundle, now: datetime | None = None, version: int | None = None) -> Gallery:
    """The matcher's gallery: identities with embeddings that have not expired."""
    now = now or datetime.now(timezone.utc)
    entries = [
        (i.id, i.label, i.embeddings) for i in bundle.identities if len(i.embeddings) and not expired(i.meta, now)
    ]
    return Gallery.build(entries, version=bundle.version if version is None else version, name=bundle.gallery)


def load_trusted(paths: Sequence[Path]) -> tuple[Ed25519PublicKey, ...]:
    return tuple(load_public_key(p) for p in paths)


def load_bundle_file(path: Path, policy: Policy) -> tuple[Bundle, bytes]:
    """A bundle file given on the command line or in the settings, admitted; errors name the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"gallery bundle {path} cannot be read: {exc.strerror or exc}") from None
    try:
        return admit(data, policy), data
    except BundleError as exc:
        raise InputError(f"{path}: {exc}") from None
