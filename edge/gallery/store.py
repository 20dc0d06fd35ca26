"""The applied gallery on disk: what is in force survives a restart, verified again.

    <state_dir>/gallery/current.bundle      the full gallery in force (removed identities' blocks zeroed)
    <state_dir>/gallery/removals/v*.bundle  signed removals applied since (they excuse the zeroed blocks)

Every write is atomic (temporary file, fsync, rename, fsync of the folder): a
crash or a full disk leaves the previous state, never half a file. At start-up
the stored bundle is admitted again with the same checks as one that arrives.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from edge.delivery.events import utc_now
from edge.errors import InputError
from edge.gallery.admit import Policy, admit
from edge.gallery.bundle import Buffer, Bundle, BundleError, frame, redact

log = logging.getLogger(__name__)
CURRENT = "current.bundle"
REMOVALS = "removals"


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
    """sha256 of everything up to the body: header, index, key id, signature (unverified).

    Equal to the digest of a bundle in force means the very bundle in force, before or
    after removals zeroed some of its body blocks (they never touch the head)."""
    try:
        return hashlib.sha256(memoryview(data)[: frame(data).body_start]).digest()
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
    removed: frozenset[str]
    applied_at: str
    head: bytes  # digest of the full bundle's head: its retained copy (even un-redacted) is already in force


class GalleryStore:
    def __init__(self, folder: Path, policy: Policy) -> None:
        self.folder = folder
        self.policy = policy

    @property
    def current_path(self) -> Path:
        return self.folder / CURRENT

    def load(self) -> Applied | None:
        """The last applied gallery (and the removals applied since), verified again; None if none.

        A stored bundle that fails is an error naming the file: the device refuses to
        start rather than match against an unverified gallery."""
        path = self.current_path
        if not path.is_file():
            return None
        version, removed = 0, set()
        for f in sorted((self.folder / REMOVALS).glob("*.bundle")):
            removal = self._verify(f, frozenset())
            removed |= {i.id for i in removal.identities}
            version = max(version, removal.version)
        bundle = self._verify(path, frozenset(removed))
        applied_at = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        head = head_digest(path.read_bytes()) or b""
        return Applied(bundle, max(version, bundle.version), frozenset(removed), applied_at, head)

    def _verify(self, path: Path, redacted: frozenset[str]) -> Bundle:
        try:
            return admit(path.read_bytes(), self.policy, redacted=redacted)
        except BundleError as exc:
            if exc.step == "model":
                raise StoredForAnotherEmbedder(path, exc) from None
            raise InputError(f"stored gallery {path}: {exc}; restore it or delete it to start without") from None
        except OSError as exc:
            raise InputError(f"stored gallery {path} cannot be read: {exc.strerror or exc}") from None

    def store_full(self, data: Buffer, bundle: Bundle) -> Applied:
        """Write a new full gallery; the removals of the previous one no longer apply."""
        try:
            write_atomic(self.current_path, data)
            for old in (self.folder / REMOVALS).glob("*.bundle"):
                old.unlink()
        except OSError as exc:
            raise BundleError(
                "store", f"cannot write {self.current_path}: {exc.strerror or exc}", bundle.version
            ) from None
        return Applied(bundle, bundle.version, frozenset(), applied_now(), head_digest(data) or b"")

    def store_removal(self, data: Buffer, removal: Bundle, applied: Applied) -> Applied:
        """Drop identities from disk at once: the removal is kept, their blocks in the stored gallery zeroed."""
        ids = applied.removed | {i.id for i in removal.identities}
        try:
            redacted = redact(self.current_path.read_bytes(), set(ids))
            # The removal is stored first: a crash between the two writes leaves a
            # removal on disk that the next start-up applies again.
            write_atomic(self.folder / REMOVALS / f"v{removal.version:012d}.bundle", data)
            write_atomic(self.current_path, redacted)
        except OSError as exc:
            raise BundleError("store", f"cannot write the removal: {exc.strerror or exc}", removal.version) from None
        kept = tuple(i for i in applied.bundle.identities if i.id not in ids)
        bundle = replace(applied.bundle, identities=kept)
        log.info("gallery: removed %s from disk", ", ".join(sorted(i.id for i in removal.identities)))
        return Applied(bundle, removal.version, frozenset(ids), applied_now(), applied.head)

    def digest(self) -> str:
        try:
            return hashlib.sha256(self.current_path.read_bytes()).hexdigest()
        except OSError:
            return ""
