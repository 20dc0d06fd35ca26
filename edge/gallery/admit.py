"""Admitting a gallery bundle: every check, in order, in one place.

    size → framing → signature → header → plaintext → model → gallery → version → recipient → decrypt → body

1. size: no larger than ``gallery.max_bundle_bytes``;
2. framing: the magic and two length fields, the only bytes read unverified;
3. signature: the head is signed by a trusted Ed25519 key;
4. header: each field of the signed header has its type and range;
   plaintext: a bundle in the clear (format 1) only where ``gallery.allow_plaintext`` says so;
5. model: made for the embedder this device runs (embeddings of another model
   would match nobody, or the wrong people);
6. gallery: for the gallery this device follows;
7. version: strictly above the one in force (no replay, no rollback unless the
   bundle is signed as ``rollback``);
   recipient: a sealed bundle (format 2, ``sealed.py``) lists this device's key, and its key block opens
   with it; decrypt: the content opens with the content key;
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

from edge.device.keys import DeviceKey
from edge.errors import InputError
from edge.gallery import sealed
from edge.gallery.build import Entry, gallery_of
from edge.gallery.bundle import (
    Buffer,
    Bundle,
    BundleError,
    Identity,
    Routing,
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
    device_key: DeviceKey | None = None  # opens sealed bundles (None: this side cannot open them)
    allow_plaintext: bool = False  # admit bundles in the clear (format 1): gallery.allow_plaintext

    def embedder_named(self, sha256: str, given: str | None = None) -> str:
        name = given or self.embedder_names.get(sha256) or "an embedder this device does not know"
        return f"{name} (sha256 {sha256[:12]}…)"


def admit(
    data: Buffer, policy: Policy, current_version: int | None = None, redacted: frozenset[str] = frozenset()
) -> Bundle:
    """The bundle, if it passes every check in order; else BundleError naming the step."""
    if len(data) > policy.max_bytes:  # 1. size
        raise BundleError("size", f"{len(data)} bytes exceeds the limit of {policy.max_bytes}")
    if sealed.is_sealed(data):
        return _admit_sealed(data, policy, current_version)
    frame(data)  # 2. framing
    if not policy.trusted:
        raise BundleError("signature", "no trusted public key configured")
    signed = verify_signature(data, list(policy.trusted))  # 3. signature
    header = read_header(signed)  # 4. header
    if not policy.allow_plaintext:
        raise BundleError(
            "plaintext",
            "a bundle in the clear (format 1): this device accepts only bundles encrypted to its key "
            "(enrol with --recipient; gallery.allow_plaintext = true admits clear ones)",
            header.version,
        )
    _check_routing(header, policy, current_version)  # 5-7. model, gallery, version
    try:  # 8. body
        identities = parse_identities(signed, header, read_index(signed), redacted)
    except BundleError as exc:
        raise BundleError(exc.step, exc.reason, header.version) from None
    _check_dim(identities, policy, header.version)
    return _bundle(header, identities, signed.signer, ())


def _admit_sealed(data: Buffer, policy: Policy, current_version: int | None) -> Bundle:
    sealed.frame(data)  # 2. framing
    if not policy.trusted:
        raise BundleError("signature", "no trusted public key configured")
    v = sealed.verify(data, list(policy.trusted))  # 3. signature, 4. header
    header = v.header
    _check_routing(header, policy, current_version)  # 5-7. model, gallery, version
    if policy.device_key is None:
        raise BundleError("recipient", "a sealed bundle, and this side has no device key to open it", header.version)
    identities = sealed.open_content(v, policy.device_key)  # recipient, decrypt, 8. body
    _check_dim(identities, policy, header.version)
    return _bundle(header, identities, v.signer, tuple(header.recipients))


def _bundle(header: Routing, identities: tuple[Identity, ...], signer: str, recipients: tuple[str, ...]) -> Bundle:
    """The admitted bundle, from its verified header (either format) and its opened identities."""
    return Bundle(
        header.gallery,
        header.version,
        header.kind,
        header.created_at,
        header.embedder_sha256,
        identities,
        signer,
        recipients,
        header.embedder,
    )


def _check_dim(identities: tuple[Identity, ...], policy: Policy, version: int) -> None:
    dim = next((i.embeddings.shape[1] for i in identities if len(i.embeddings)), None)
    if policy.embedder_dim is not None and dim is not None and dim != policy.embedder_dim:
        raise BundleError(
            "model", f"templates of {dim} dimensions, this device's embedder gives {policy.embedder_dim}", version
        )


def _check_routing(header: Routing, policy: Policy, current_version: int | None) -> None:
    version = header.version
    if header.embedder_sha256 != policy.embedder_sha256:  # 5. model
        raise BundleError(
            "model",
            f"made for embedder {policy.embedder_named(header.embedder_sha256, header.embedder)}, this device runs "
            f"{policy.embedder_named(policy.embedder_sha256)}: enrol again from the photos with this device's "
            "embedder (docs/models.md)",
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


def verify_bundle(
    data: Buffer,
    trusted: Sequence[Ed25519PublicKey],
    embedder_sha256: str,
    current_version: int | None = None,
    max_bytes: int = 64 << 20,
    gallery_name: str | None = None,
    redacted: frozenset[str] = frozenset(),
    device_key: DeviceKey | None = None,
) -> Bundle:
    """``admit`` with the policy given as arguments: the operator's tools (CLI, benchmarks), which read their
    own bundles in the clear too; a sealed one opens with ``device_key``."""
    policy = Policy(
        tuple(trusted), embedder_sha256, gallery_name, max_bytes, device_key=device_key, allow_plaintext=True
    )
    return admit(data, policy, current_version, redacted)


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
    entries = [Entry(i.id, i.label, i.embeddings) for i in bundle.identities if not expired(i.meta, now)]
    return gallery_of(entries, bundle.version if version is None else version, bundle.gallery)


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
