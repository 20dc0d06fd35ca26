"""The applied gallery on disk, sealed under the device's own key: what is in force survives a restart.

    <state_dir>/gallery/current.sealed      b"EDGESTO1" | 12-byte nonce | AES-256-GCM under the device's
                                            storage key (``DeviceKey.storage_key``) of: u32 length, the
                                            record JSON (gallery, version in force, the bundle's version,
                                            kind, signer, recipients, when applied, how many removed) |
                                            the identities, laid out as a sealed bundle's content

Names, identity ids and templates exist in the clear only in memory: the file is opened with the device
key at start-up and rewritten whole, under a fresh nonce, at every change. A signed removal rewrites it
without the removed identities, so nothing of them (id, label, templates) is left in the device's files,
even for someone holding its key (the audit log, which names identities by id, is the documented
exception: docs/privacy.md). Every write is atomic (temporary file, fsync, rename, fsync of the folder):
a crash or a full disk leaves the previous state, never half a file.

A device that kept its gallery as format 1 (``current.bundle`` and ``removals/``, before galleries were
sealed) has it re-admitted with the checks of that time and moved into the sealed file at its first start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.delivery.events import utc_now
from edge.errors import InputError
from edge.gallery import sealed
from edge.gallery.admit import Policy, admit
from edge.gallery.bundle import Buffer, Bundle, BundleError, content, frame

log = logging.getLogger(__name__)
SEALED = "current.sealed"
NEXT = "current.sealed.next"  # sealed under a new device key while the key is rotated
LEGACY = "current.bundle"  # format 1 stores, before galleries were sealed
LEGACY_REMOVALS = "removals"
MAGIC = b"EDGESTO1"
STORE_FORMAT = "edge-store-1"
NONCE_LEN = 12


def applied_now() -> str:
    """When a gallery was applied, as the store records it (RFC 3339, seconds)."""
    return utc_now().isoformat(timespec="seconds")


def write_atomic(path: Path, data: Buffer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def head_digest(data: Buffer) -> bytes | None:
    """sha256 of a bundle's signed part and its signature (unverified): equal to the digest of the bundle in
    force means the very bundle in force (its retained copy arriving again). Format 1: everything up to the
    body (removals zeroed blocks of the body, never the head); format 2: all of it."""
    try:
        end = len(data) if sealed.is_sealed(data) and sealed.frame(data) else frame(data).body_start
        return hashlib.sha256(memoryview(data)[:end]).digest()
    except BundleError:
        return None


class StoredForAnotherEmbedder(InputError):
    """The stored gallery is intact but was made for another embedder (the device's models changed): not
    damage. The device starts without a gallery and waits for one made for its embedder."""

    def __init__(self, path: Path, exc: BundleError) -> None:
        super().__init__(f"stored gallery {path}: {exc.reason}")
        self.error = exc


@dataclass(frozen=True)
class Applied:
    """The gallery in force."""

    bundle: Bundle  # the full gallery, less removed identities
    version: int  # the full bundle's, or a later removal's
    removed: frozenset[str]  # removed since this process applied the full bundle (ids: memory only)
    applied_at: str
    head: bytes  # digest of the full bundle's signed part: its retained copy is already in force
    removed_count: int = 0  # identities removed from this full bundle, ever (the store keeps the number only)


class GalleryStore:
    def __init__(self, folder: Path, policy: Policy) -> None:
        self.folder = folder
        self.policy = policy

    @property
    def current_path(self) -> Path:
        return self.folder / SEALED

    def _aead(self) -> AESGCM:
        if self.policy.device_key is None:
            raise InputError("the gallery store needs the device key (it seals the gallery under it)")
        return AESGCM(self.policy.device_key.storage_key())

    # -- reading ----------------------------------------------------------------------------
    def load(self) -> Applied | None:
        """The last applied gallery, opened with the device key; None if none.

        A stored gallery that does not open or parse is an error naming the file: the device refuses to
        start rather than match against a gallery it cannot vouch for."""
        path = self.current_path
        if (self.folder / NEXT).is_file():  # a key rotation ended between its steps
            try:
                if self._opens(self.folder / NEXT):
                    self.promote_next()
                else:
                    (self.folder / NEXT).unlink()
            except OSError as exc:
                raise InputError(
                    f"stored gallery {self.folder / NEXT} (a key rotation cut short) cannot be "
                    f"settled: {exc.strerror or exc}"
                ) from None
        if not path.is_file():
            return self._migrate() if (self.folder / LEGACY).is_file() else None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"stored gallery {path} cannot be read: {exc.strerror or exc}") from None
        if data[: len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + NONCE_LEN + 16:
            raise InputError(
                f"stored gallery {path} is not a sealed gallery store; restore it or delete it to start without"
            )
        try:
            plain = self._open(data)
        except InvalidTag:
            raise InputError(
                f"stored gallery {path} does not open with this device's key (the key was replaced "
                "without 'edge device key --rotate', or the file is damaged); restore both or delete "
                "it to start without"
            ) from None
        try:
            record, identities = self._parse(memoryview(plain))
        except (BundleError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"stored gallery {path} is malformed ({exc}); delete it to start without") from None
        bundle = Bundle(
            str(record["gallery"]),
            int(record["bundle_version"]),
            record["kind"],
            str(record["created_at"]),
            str(record["embedder_sha256"]),
            identities,
            str(record["signer"]),
            tuple(str(r) for r in record.get("recipients", ())),
            record.get("embedder"),
        )
        self._check(path, bundle, int(record["version"]))
        return Applied(
            bundle,
            int(record["version"]),
            frozenset(),
            str(record["applied_at"]),
            bytes.fromhex(record["head"]),
            int(record.get("removed_count", 0)),
        )

    def _open(self, data: bytes) -> bytes:
        nonce = data[len(MAGIC) : len(MAGIC) + NONCE_LEN]
        return self._aead().decrypt(nonce, data[len(MAGIC) + NONCE_LEN :], MAGIC)

    def _opens(self, path: Path) -> bool:
        try:
            self._open(path.read_bytes())
        except (InvalidTag, OSError, ValueError):
            return False
        return True

    @staticmethod
    def _parse(plain: memoryview) -> tuple[dict[str, Any], tuple[Any, ...]]:
        (n,) = struct.unpack_from("<I", plain, 0)
        record = json.loads(bytes(plain[4 : 4 + n]))
        if not isinstance(record, dict):
            raise ValueError("the record is not a JSON object")
        if record.get("format") != STORE_FORMAT:
            raise ValueError(f"store format {record.get('format')!r}, this release reads {STORE_FORMAT!r}")
        return record, sealed.inner_identities(plain[4 + n :])

    def _check(self, path: Path, bundle: Bundle, version: int) -> None:
        """What admission checks of a bundle's routing, again: the device's models or gallery may have changed."""
        if bundle.embedder_sha256 != self.policy.embedder_sha256:
            p = self.policy
            raise StoredForAnotherEmbedder(
                path,
                BundleError(
                    "model",
                    f"made for embedder {p.embedder_named(bundle.embedder_sha256, bundle.embedder)}, this device runs "
                    f"{p.embedder_named(p.embedder_sha256)}: enrol again from the photos with this device's embedder "
                    "(docs/models.md)",
                    version,
                ),
            )
        if self.policy.gallery_name is not None and bundle.gallery != self.policy.gallery_name:
            raise InputError(
                f"stored gallery {path}: gallery bundle rejected at gallery: it is gallery {bundle.gallery!r}, this "
                f"device follows {self.policy.gallery_name!r}; restore it or delete it to start without"
            )

    # -- writing ----------------------------------------------------------------------------
    def write_next(self, applied: Applied) -> None:
        """The gallery sealed under this store's (new) key beside the current file (a key rotation)."""
        self._write(applied, self.folder / NEXT)

    def promote_next(self) -> None:
        os.replace(self.folder / NEXT, self.current_path)

    def _write(self, applied: Applied, path: Path | None = None) -> None:
        b = applied.bundle
        record = {
            "format": STORE_FORMAT,
            "gallery": b.gallery,
            "version": applied.version,
            "bundle_version": b.version,
            "kind": b.kind,
            "created_at": b.created_at,
            "embedder_sha256": b.embedder_sha256,
            "embedder": b.embedder,
            "signer": b.signer,
            "recipients": list(b.recipients),
            "head": applied.head.hex(),
            "applied_at": applied.applied_at,
            "removed_count": applied.removed_count,
        }
        layout, index, body = content(list(b.identities), "float32")
        rx = json.dumps(record, separators=(",", ":")).encode()
        lx = json.dumps(layout, separators=(",", ":")).encode()
        ix = json.dumps(index, separators=(",", ":")).encode()
        plain = struct.pack("<I", len(rx)) + rx + struct.pack("<I", len(lx)) + lx + struct.pack("<I", len(ix)) + ix
        nonce = os.urandom(NONCE_LEN)
        write_atomic(path or self.current_path, MAGIC + nonce + self._aead().encrypt(nonce, plain + body, MAGIC))

    def store_full(self, data: Buffer, bundle: Bundle) -> Applied:
        """Keep a new full gallery (sealed); what was removed from the previous one no longer matters."""
        applied = Applied(bundle, bundle.version, frozenset(), applied_now(), head_digest(data) or b"")
        try:
            self._write(applied)
        except OSError as exc:
            raise BundleError(
                "store", f"cannot write {self.current_path}: {exc.strerror or exc}", bundle.version
            ) from None
        return applied

    def store_removal(self, data: Buffer, removal: Bundle, applied: Applied) -> Applied:
        """Drop identities from disk at once: the stored gallery is rewritten without them."""
        gone = {i.id for i in removal.identities}
        kept = tuple(i for i in applied.bundle.identities if i.id not in gone)
        dropped = len(applied.bundle.identities) - len(kept)
        after = Applied(
            replace(applied.bundle, identities=kept),
            removal.version,
            applied.removed | gone,
            applied_now(),
            applied.head,
            applied.removed_count + dropped,
        )
        try:
            self._write(after)
        except OSError as exc:
            raise BundleError("store", f"cannot write the removal: {exc.strerror or exc}", removal.version) from None
        log.info("gallery: %d identit%s removed from disk", dropped, "y" if dropped == 1 else "ies")
        return after

    def wipe(self) -> bool:
        """Delete the stored gallery (``edge device wipe``); True if there was one."""
        found = False
        for path in (self.current_path, self.folder / NEXT, self.folder / LEGACY):
            if path.is_file():
                path.unlink()
                found = True
        for old in (self.folder / LEGACY_REMOVALS).glob("*.bundle"):
            old.unlink()
        return found

    # -- format 1 stores ----------------------------------------------------------------------
    def _migrate(self) -> Applied:
        """A format 1 store (the bundle as received, removals beside it), re-admitted as it was admitted then
        (in the clear, signed by a trusted key), sealed, and the clear files deleted."""
        legacy = self.folder / LEGACY
        then = replace(self.policy, allow_plaintext=True)
        version, removed = 0, set()
        for f in sorted((self.folder / LEGACY_REMOVALS).glob("*.bundle")):
            removal = self._legacy_admit(f, then, frozenset())
            removed |= {i.id for i in removal.identities}
            version = max(version, removal.version)
        data = legacy.read_bytes()
        admitted = self._legacy_admit(legacy, then, frozenset(removed))
        # Removed identities go whether their blocks were zeroed or not (a crash between the two writes of
        # a removal left them intact): a stored removal is applied again.
        bundle = replace(admitted, identities=tuple(i for i in admitted.identities if i.id not in removed))
        applied_at = datetime.fromtimestamp(legacy.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        applied = Applied(
            bundle, max(version, bundle.version), frozenset(), applied_at, head_digest(data) or b"", len(removed)
        )
        try:
            self._write(applied)
        except OSError as exc:  # the clear files stay as they were: the next start tries again
            raise InputError(
                f"stored gallery {legacy} cannot be moved into {self.current_path}: {exc.strerror or exc}"
            ) from None
        legacy.unlink()
        for f in (self.folder / LEGACY_REMOVALS).glob("*.bundle"):
            f.unlink()
        log.info(
            "gallery: the stored gallery %s v%d is now sealed under the device key (%s)",
            bundle.gallery,
            applied.version,
            self.current_path,
        )
        return applied

    @staticmethod
    def _legacy_admit(path: Path, policy: Policy, redacted: frozenset[str]) -> Bundle:
        try:
            return admit(path.read_bytes(), policy, redacted=redacted)
        except BundleError as exc:
            if exc.step == "model":
                raise StoredForAnotherEmbedder(path, exc) from None
            raise InputError(f"stored gallery {path}: {exc}; restore it or delete it to start without") from None
        except OSError as exc:
            raise InputError(f"stored gallery {path} cannot be read: {exc.strerror or exc}") from None
