"""Over-the-air gallery sync on the device.

Bundles arrive on the retained fleet topic ``{prefix}/galleries/{name}`` and the
per-device ``{prefix}/{device_id}/gallery/set``. A worker thread (never paho's
network thread, never the frame loop) runs the checks of ``store.verify_bundle``,
writes the bundle atomically (temporary file, fsync, rename, fsync of the folder)
and swaps the new Gallery into the matcher by reference. Then it publishes the
retained ``{prefix}/{device_id}/gallery/state``. Any failure leaves the gallery in
use and on disk untouched, and publishes the state again with an ``error``.
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
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.gallery.bundle import Bundle, BundleError
from edge.gallery.store import expired, to_gallery, verify_bundle
from edge.match import Matcher

log = logging.getLogger(__name__)
CURRENT = "current.bundle"


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
        matcher: Matcher,
        folder: Path,
        trusted: Sequence[Ed25519PublicKey],
        embedder_sha256: str,
        name: str | None,
        max_bytes: int,
        publish_state: Callable[[bytes], None],
    ) -> None:
        self.matcher = matcher
        self.folder = folder
        self.trusted = list(trusted)
        self.embedder_sha256 = embedder_sha256
        self.name = name
        self.max_bytes = max_bytes
        self.publish_state = publish_state
        self.current: Bundle | None = None
        self.applied_at: str | None = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._worker, name="gallery-sync", daemon=True)
        self.applied = 0
        self.rejected = 0
        self._current_digest = ""

    # -- start-up ----------------------------------------------------------------------
    def load_from_disk(self) -> bool:
        """The last applied bundle, verified again; False when there is none."""
        path = self.folder / CURRENT
        if not path.is_file():
            return False
        data = path.read_bytes()
        bundle = verify_bundle(data, self.trusted, self.embedder_sha256, None, self.max_bytes, self.name)
        self._current_digest = hashlib.sha256(data).hexdigest()
        self._swap(bundle, datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"))
        log.info("gallery %s v%d loaded from %s", bundle.gallery, bundle.version, path)
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)  # after any bundle being applied
        except queue.Full:
            log.warning("gallery sync still busy at shutdown")
        self._thread.join(timeout)

    # -- messages -------------------------------------------------------------------------
    def submit(self, payload: bytes) -> None:
        """Called from paho's thread: hand over and return at once."""
        if not payload:
            return  # a cleared retained message
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            log.warning("gallery sync busy: a bundle was dropped (it stays retained on the broker)")

    def _worker(self) -> None:
        while (payload := self._queue.get()) is not None:
            self.apply(payload)

    def apply(self, payload: bytes) -> bool:
        digest = hashlib.sha256(payload).hexdigest()
        if digest == self._current_digest:
            return True  # the retained copy of what is already applied: nothing to do
        current = self.current.version if self.current else None
        started = time.perf_counter()
        try:
            bundle = verify_bundle(payload, self.trusted, self.embedder_sha256, current, self.max_bytes, self.name)
            if bundle.kind == "removal":
                raise BundleError("parse", "removal bundles are not supported by this version")
            write_atomic(self.folder / CURRENT, payload)
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
        self._swap(bundle, datetime.now(timezone.utc).isoformat(timespec="seconds"))
        self._current_digest = digest
        self.applied += 1
        log.info("gallery %s v%d applied in %.2fs: %d identities, %d embeddings", bundle.gallery, bundle.version,
                 time.perf_counter() - started, len(self.matcher.gallery), len(self.matcher.gallery.embeddings))  # fmt: skip
        self.publish()
        return True

    def _swap(self, bundle: Bundle, applied_at: str) -> None:
        self.matcher.set_gallery(to_gallery(bundle))
        self.current, self.applied_at = bundle, applied_at

    # -- expiry ---------------------------------------------------------------------------
    def check_expiry(self, now: datetime | None = None) -> list[str]:
        """Drop identities whose ``expires_at`` has passed; returns those newly dropped."""
        if self.current is None:
            return []
        now = now or datetime.now(timezone.utc)
        live = set(self.matcher.gallery.identity_ids)
        gone = [i.id for i in self.current.identities if i.id in live and expired(i.meta, now)]
        if gone:
            self.matcher.set_gallery(to_gallery(self.current, now))
            log.info("gallery: %d identit%s expired: %s", len(gone), "y" if len(gone) == 1 else "ies", ", ".join(gone))
            self.publish()
        return gone

    # -- state ----------------------------------------------------------------------------
    def state(self, error: dict[str, object] | None = None) -> dict[str, object]:
        g = self.matcher.gallery
        b = self.current
        out: dict[str, object] = {
            "gallery": b.gallery if b else None,
            "version": b.version if b else None,
            "identities": len(g),
            "embeddings": len(g.embeddings),
            "applied_at": self.applied_at,
            "expired": sorted({i.id for i in b.identities} - set(g.identity_ids)) if b else [],
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
