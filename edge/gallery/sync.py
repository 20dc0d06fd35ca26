"""Over-the-air gallery sync on the device.

Bundles arrive on the retained fleet topic ``{prefix}/galleries/{name}`` and the
per-device ``{prefix}/{device_id}/gallery/set``. A worker thread (never paho's
network thread, never the frame loop) runs the checks of ``store.verify_bundle``,
writes the bundle atomically (temporary file, fsync, rename, fsync of the folder)
and swaps the new Gallery into the matcher by reference. Then it publishes the
retained ``{prefix}/{device_id}/gallery/state``. Any failure leaves the gallery in
use and on disk untouched, and publishes the state again with an ``error``.

A signed ``removal`` bundle (version above the one in force) drops identities at
once: it is stored under ``removals/``, and the stored full bundle is rewritten
with those identities' embedding blocks zeroed, so their embeddings are gone
from disk while the bundle still verifies (see ``bundle.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import InputError
from edge.gallery.bundle import Bundle, BundleError, redact
from edge.gallery.chunks import Assembler, base_topic
from edge.gallery.store import expired, to_gallery, verify_bundle
from edge.match import GalleryHolder

log = logging.getLogger(__name__)
CURRENT = "current.bundle"
REMOVALS = "removals"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GallerySync:
    def __init__(
        self,
        holder: GalleryHolder,
        folder: Path,
        trusted: Sequence[Ed25519PublicKey],
        embedder_sha256: str,
        name: str | None,
        max_bytes: int,
        publish_state: Callable[[bytes], None],
    ) -> None:
        self.holder = holder
        self.folder = folder
        self.trusted = list(trusted)
        self.embedder_sha256 = embedder_sha256
        self.name = name
        self.max_bytes = max_bytes
        self.publish_state = publish_state
        self.current: Bundle | None = None  # the full gallery in force, less removed identities
        self.version: int | None = None  # version in force: the full bundle's or a later removal's
        self.redacted: frozenset[str] = frozenset()
        self.applied_at: str | None = None
        # Queued messages are bounded by bytes (a bundle may come as many parts).
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._queued_bytes = 0
        self._qlock = threading.Lock()
        self._assemblers: dict[str, Assembler] = {}
        self._thread = threading.Thread(target=self._worker, name="gallery-sync", daemon=True)
        self.applied = 0
        self.rejected = 0
        self._current_digest = ""

    # -- start-up ----------------------------------------------------------------------
    def load_from_disk(self) -> bool:
        """The last applied gallery (and the removals applied since), verified again."""
        path = self.folder / CURRENT
        if not path.is_file():
            return False
        version, redacted = None, set()
        for f in sorted((self.folder / REMOVALS).glob("*.bundle")):
            removal, _ = self._verify_stored(f, frozenset())
            redacted |= {i.id for i in removal.identities}
            version = max(version or 0, removal.version)
        bundle, data = self._verify_stored(path, frozenset(redacted))
        applied_at = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
        self._swap(bundle, max(version or 0, bundle.version), frozenset(redacted), applied_at)
        self._current_digest = hashlib.sha256(data).hexdigest()
        log.info("gallery %s v%d loaded from %s", bundle.gallery, self.version, path)
        return True

    def _verify_stored(self, path: Path, redacted: frozenset[str]) -> tuple[Bundle, bytes]:
        """A stored bundle verified again; failing that, an error naming the file (the
        device then refuses to start rather than match against an unverified gallery)."""
        try:
            data = path.read_bytes()
            return verify_bundle(
                data, self.trusted, self.embedder_sha256, None, self.max_bytes, self.name, redacted
            ), data
        except BundleError as exc:
            raise InputError(f"stored gallery {path}: {exc}; restore it or delete it to start without") from None
        except OSError as exc:
            raise InputError(f"stored gallery {path} cannot be read: {exc.strerror or exc}") from None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        if not self._thread.is_alive():
            return
        self._queue.put(None)  # after any bundle being applied
        self._thread.join(timeout)

    # -- messages -------------------------------------------------------------------------
    def submit(self, topic: str, payload: bytes) -> None:
        """Called from paho's thread: hand over and return at once."""
        if not payload:
            return  # a cleared retained message
        with self._qlock:
            if self._queued_bytes + len(payload) > 2 * self.max_bytes:
                log.warning("gallery sync busy: a %d-byte message on %s was dropped", len(payload), topic)
                return
            self._queued_bytes += len(payload)
        self._queue.put((topic, payload))

    def _worker(self) -> None:
        while (item := self._queue.get()) is not None:
            topic, payload = item
            with self._qlock:
                self._queued_bytes -= len(payload)
            assembler = self._assemblers.setdefault(base_topic(topic), Assembler(self.max_bytes))
            try:
                whole = assembler.feed(payload)
            except BundleError as exc:
                self.rejected += 1
                log.warning("gallery bundle parts rejected: %s", exc.reason)
                self.publish(error={"step": exc.step, "reason": exc.reason, "rejected_version": None})
                continue
            if whole is not None:
                self.apply(whole)

    def apply(self, payload: bytes) -> bool:
        digest = hashlib.sha256(payload).hexdigest()
        if digest == self._current_digest:
            return True  # the retained copy of what is already applied: nothing to do
        started = time.perf_counter()
        try:
            if self._is_base_in_force(payload):
                return True  # the retained fleet bundle that later removals were applied to
            bundle = verify_bundle(payload, self.trusted, self.embedder_sha256, self.version, self.max_bytes, self.name)
            if bundle.kind == "removal":
                self._apply_removal(bundle, payload)
            else:
                write_atomic(self.folder / CURRENT, payload)
                for old in (self.folder / REMOVALS).glob("*.bundle"):
                    old.unlink()  # they applied to the previous gallery
                self._swap(bundle, bundle.version, frozenset(), utc_now())
                self._current_digest = digest
        except BundleError as exc:
            self.rejected += 1
            rejected_version = _peek_version(payload)
            log.warning("gallery bundle (version %s) rejected at %s: %s", rejected_version, exc.step, exc.reason)
            self.publish(error={"step": exc.step, "reason": exc.reason, "rejected_version": rejected_version})
            return False
        except OSError as exc:
            self.rejected += 1
            log.error("gallery bundle could not be stored: %s", exc)
            self.publish(error={"step": "store", "reason": str(exc), "rejected_version": _peek_version(payload)})
            return False
        self.applied += 1
        log.info("gallery %s v%d applied in %.2fs: %d identities, %d embeddings", bundle.gallery, self.version,
                 time.perf_counter() - started, len(self.holder.current.gallery), len(self.holder.current.gallery.embeddings))  # fmt: skip
        self.publish()
        return True

    def _is_base_in_force(self, payload: bytes) -> bool:
        if self.current is None or not self.redacted or _peek_version(payload) != self.current.version:
            return False
        try:
            base = verify_bundle(payload, self.trusted, self.embedder_sha256, None, self.max_bytes, self.name)
        except BundleError:
            return False
        return base.kind != "removal" and base.gallery == self.current.gallery

    def _apply_removal(self, removal: Bundle, payload: bytes) -> None:
        """Drop identities at once: from matching, and from disk (their blocks zeroed)."""
        if self.current is None:
            raise BundleError("parse", "a removal needs a gallery in force")
        if removal.gallery != self.current.gallery:
            raise BundleError(
                "parse", f"removal is for gallery {removal.gallery!r}, {self.current.gallery!r} is in force"
            )
        ids = self.redacted | {i.id for i in removal.identities}
        full = (self.folder / CURRENT).read_bytes()
        redacted = redact(full, set(ids))
        # The removal is stored first: a crash between the two writes leaves a
        # removal on disk that the next start-up applies again.
        write_atomic(self.folder / REMOVALS / f"v{removal.version:012d}.bundle", payload)
        write_atomic(self.folder / CURRENT, redacted)
        bundle = verify_bundle(
            redacted, self.trusted, self.embedder_sha256, None, self.max_bytes, self.name, frozenset(ids)
        )
        self._swap(bundle, removal.version, frozenset(ids), utc_now())
        self._current_digest = hashlib.sha256(redacted).hexdigest()
        log.info("gallery: removed %s", ", ".join(sorted(i.id for i in removal.identities)))

    def _swap(self, bundle: Bundle, version: int, redacted: frozenset[str], applied_at: str) -> None:
        gallery = to_gallery(bundle)
        self.holder.swap(replace(gallery, version=version))
        self.current, self.version, self.redacted, self.applied_at = bundle, version, redacted, applied_at

    # -- expiry ---------------------------------------------------------------------------
    def check_expiry(self, now: datetime | None = None) -> list[str]:
        """Drop identities whose ``expires_at`` has passed; returns those newly dropped."""
        if self.current is None:
            return []
        now = now or datetime.now(timezone.utc)
        live = set(self.holder.current.gallery.identity_ids)
        gone = [i.id for i in self.current.identities if i.id in live and expired(i.meta, now)]
        if gone:
            self.holder.update(lambda snap: snap.gallery.without(set(gone)))
            log.info("gallery: %d identit%s expired: %s", len(gone), "y" if len(gone) == 1 else "ies", ", ".join(gone))
            self.publish()
        return gone

    # -- state ----------------------------------------------------------------------------
    def state(self, error: dict[str, object] | None = None) -> dict[str, object]:
        g = self.holder.current.gallery
        b = self.current
        out: dict[str, object] = {
            "gallery": b.gallery if b else None,
            "version": self.version,
            "identities": len(g),
            "embeddings": len(g.embeddings),
            "applied_at": self.applied_at,
            "expired": sorted({i.id for i in b.identities} - set(g.identity_ids)) if b else [],
            "removed": sorted(self.redacted),
        }
        if error is not None:
            out["error"] = error
        return out

    def publish(self, error: dict[str, object] | None = None) -> None:
        self.publish_state(json.dumps(self.state(error)).encode())


def _peek_version(payload: bytes) -> int | None:
    from edge.gallery.bundle import read_header

    try:
        return int(read_header(payload)["version"])
    except (BundleError, KeyError, TypeError, ValueError):
        return None
