"""Over-the-air gallery sync on the device.

Bundles arrive on the retained fleet topic ``{prefix}/galleries/{name}`` and the
per-device ``{prefix}/{device_id}/gallery/set``, whole or as parts. On paho's
thread ``submit`` checks the size and assembles parts (bounded, ``chunks.py``); a
complete bundle is handed to the sync's own worker thread, which runs the checks
of ``admit.py``, records the decision (audit), writes the bundle atomically
(``store.py``) and swaps the new snapshot into the ``GalleryHolder``. Then it
publishes the retained ``{prefix}/{device_id}/gallery/state``. Any failure leaves
the gallery in force (in memory and on disk) untouched and publishes the state
again with an ``error``. Identity expiry is checked by the same worker, so one
thread writes the gallery.

Nothing a message contains can end the worker: every failure is a rejection with
its step and reason, and anything unforeseen is logged and reported as step
``internal``. The worker beats the supervisor, which ends the service if it stalls.

A signed ``removal`` bundle (version above the one in force) drops identities at
once: from matching, and from disk (their embedding blocks zeroed, ``store.py``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from edge.delivery.events import GalleryError, GalleryState
from edge.delivery.mqtt import MqttLink, Topics
from edge.device.settings import GallerySettings
from edge.device.supervisor import Worker
from edge.gallery.admit import Policy, admit, expired, to_gallery
from edge.gallery.bundle import Buffer, Bundle, BundleError
from edge.gallery.chunks import Assembler, base_topic
from edge.gallery.store import Applied, GalleryStore, StoredForAnotherEmbedder, head_digest
from edge.recognition.match import GalleryHolder

log = logging.getLogger(__name__)

# Decisions the sync records before they take effect: ("applied" | "rejected" | "removed" | "expired", details).
Journal = Callable[[str, dict[str, Any]], None]
QUEUED_BUNDLES = 2  # complete bundles waiting for the worker (memory: each is at most max_bundle_bytes)
QUEUE_WAIT_S = 30.0  # how long paho's thread waits for room (back-pressure) before refusing a bundle


@dataclass(frozen=True, slots=True)
class SyncHealth:
    """A snapshot of the gallery sync's own health."""

    gallery: str | None  # the bundle in force (None: none applied)
    version: int | None
    problem: str | None  # the last bundle refused, until one is applied


class GallerySync:
    def __init__(
        self,
        holder: GalleryHolder,
        store: GalleryStore,
        policy: Policy,
        settings: GallerySettings,
        publish_state: Callable[[bytes], None],
        journal: Journal | None = None,
        worker: Worker | None = None,
    ) -> None:
        self.holder = holder
        self.store = store
        self.policy = policy
        self.settings = settings
        self.publish_state = publish_state
        self.journal = journal or (lambda kind, details: None)
        self.worker = worker
        self.applied: Applied | None = None
        self.last_error: GalleryError | None = None
        self.counts = {"applied": 0, "rejected": 0}
        self._queue: queue.Queue[Buffer | None] = queue.Queue(maxsize=QUEUED_BUNDLES)
        self._assemblers: dict[str, Assembler] = {}
        self._alock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="gallery-sync", daemon=True)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def attach(self, link: MqttLink, topics: Topics) -> None:
        """Follow the fleet topic and this device's set topic (and their parts); state at every connection."""
        name = self.policy.gallery_name or ""
        for topic in (topics.gallery_fleet(name), topics.gallery_set):
            for filt in (topic, topic + "/part/+"):
                link.listen(filt, self._on_message)
        link.when_connected(self.publish)

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.submit(topic, payload)

    @property
    def version(self) -> int | None:
        return self.applied.version if self.applied else None

    # -- start-up ----------------------------------------------------------------------
    def load_from_disk(self) -> bool:
        """The last applied gallery, verified again (a damaged one stops start-up, naming the file; one made
        for another embedder is kept on disk, not used: the device waits for a bundle for its own)."""
        try:
            applied = self.store.load()
        except StoredForAnotherEmbedder as exc:
            self.last_error = GalleryError(step="model", reason=exc.error.reason, rejected_version=exc.error.version)
            log.warning("%s; starting without a gallery until one made for this embedder arrives", exc)
            return False
        if applied is None:
            return False
        self._swap(applied, applied.bundle)
        log.info("gallery %s v%d loaded from %s", applied.bundle.gallery, applied.version, self.store.current_path)
        return True

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)  # after the bundles already queued
        except queue.Full:
            log.warning("gallery sync: stopping with bundles still queued")
        self._thread.join(timeout)

    # -- messages (paho's thread) -------------------------------------------------------
    def submit(self, topic: str, payload: bytes) -> None:
        """Check the size, assemble parts, and queue a complete bundle; returns at once."""
        if not payload:
            return  # a cleared retained message
        limit = self.settings.max_bundle_bytes + 4096
        if len(payload) > limit:
            self._reject(BundleError("size", f"message on {topic} is {len(payload)} bytes, over the limit of {limit}"))
            return
        try:
            with self._alock:
                asm = self._assemblers.setdefault(
                    base_topic(topic), Assembler(self.settings.max_bundle_bytes, self.settings.part_timeout_s)
                )
            whole = asm.feed(payload)
        except BundleError as exc:
            self._reject(exc)
            return
        except Exception as exc:  # a bug must not end paho's network thread
            log.exception("gallery: message on %s could not be handled", topic)
            self._reject(BundleError("internal", f"{type(exc).__name__}: {exc}"))
            return
        if whole is not None:
            try:
                # Back-pressure: the network thread waits while earlier bundles are checked.
                self._queue.put(whole, timeout=QUEUE_WAIT_S)
            except queue.Full:
                self._reject(BundleError("queue", f"still checking earlier bundles after {QUEUE_WAIT_S:.0f}s"))

    @property
    def buffered_bytes(self) -> int:
        with self._alock:
            assemblers = list(self._assemblers.values())
        return sum(a.buffered for a in assemblers)

    # -- the worker -----------------------------------------------------------------------
    def _run(self) -> None:
        next_expiry = time.monotonic()
        while True:
            if self.worker is not None:
                self.worker.beat()
            now = time.monotonic()
            if now >= next_expiry:
                next_expiry = now + self.settings.expiry_check_s
                self._safely(self.check_expiry)
                with self._alock:
                    assemblers = list(self._assemblers.values())
                for asm in assemblers:
                    asm.expire()
            try:
                item = self._queue.get(timeout=min(1.0, self.settings.expiry_check_s))
            except queue.Empty:
                continue
            if item is None:
                if self.worker is not None:
                    self.worker.done("stopped")
                return
            self._safely(lambda item=item: self.apply(item))  # type: ignore[misc]

    def _safely(self, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:  # nothing a bundle holds may end the worker
            log.exception("gallery sync: unexpected failure")
            self._reject(BundleError("internal", f"{type(exc).__name__}: {exc}"))

    def apply(self, payload: Buffer) -> bool:
        """Admit, record, store and swap one bundle; False (state published with the error) if refused."""
        if self.applied is not None and head_digest(payload) == self.applied.head:
            return True  # the retained copy of what is in force (before or after removals): nothing to do
        started = time.perf_counter()
        try:
            bundle = admit(payload, self.policy, self.version)
            if bundle.kind == "removal":
                applied = self._removal(payload, bundle)
            else:
                self.journal("applied", self._decision(bundle))
                applied = self.store.store_full(payload, bundle)
        except BundleError as exc:
            self._reject(exc)
            return False
        self._swap(applied, applied.bundle)
        self.counts["applied"] += 1
        snapshot = self.holder.current
        log.info(
            "gallery %s v%d applied in %.2fs: %d identities, %d embeddings (signed by %s)",
            bundle.gallery,
            applied.version,
            time.perf_counter() - started,
            len(snapshot),
            len(snapshot.gallery.embeddings),
            bundle.signer,
        )
        self.last_error = None
        self.publish()
        return True

    def _removal(self, payload: Buffer, removal: Bundle) -> Applied:
        if self.applied is None:
            raise BundleError("gallery", "a removal needs a gallery in force", removal.version)
        if removal.gallery != self.applied.bundle.gallery:
            raise BundleError(
                "gallery",
                f"removal is for gallery {removal.gallery!r}, {self.applied.bundle.gallery!r} is in force",
                removal.version,
            )
        self.journal("removed", {**self._decision(removal), "identities": sorted(i.id for i in removal.identities)})
        return self.store.store_removal(payload, removal, self.applied)

    @staticmethod
    def _decision(bundle: Bundle) -> dict[str, Any]:
        return {
            "gallery": bundle.gallery,
            "version": bundle.version,
            "kind": bundle.kind,
            "signer": bundle.signer,
            "identities": len(bundle.identities),
        }

    def _reject(self, exc: BundleError) -> None:
        self.counts["rejected"] += 1
        self.last_error = GalleryError(step=exc.step, reason=exc.reason, rejected_version=exc.version)
        log.warning("gallery bundle (version %s) rejected at %s: %s", exc.version, exc.step, exc.reason)
        try:
            self.journal("rejected", {"step": exc.step, "reason": exc.reason, "version": exc.version})
        except Exception:
            log.exception("gallery: the rejection could not be recorded")
        self.publish(self.last_error)

    def _swap(self, applied: Applied, bundle: Bundle) -> None:
        gallery = to_gallery(bundle, version=applied.version)
        self.applied = applied
        self.holder.swap(gallery)

    # -- expiry ---------------------------------------------------------------------------
    def check_expiry(self, now: datetime | None = None) -> list[str]:
        """Drop identities whose ``expires_at`` has passed; returns those newly dropped."""
        if self.applied is None:
            return []
        now = now or datetime.now(timezone.utc)
        live = set(self.holder.current.gallery.identity_ids)
        gone = [i.id for i in self.applied.bundle.identities if i.id in live and expired(i.meta, now)]
        if gone:
            self.journal("expired", {"version": self.applied.version, "identities": gone})
            self.holder.update(lambda snapshot: snapshot.gallery.without(set(gone)))
            log.info("gallery: %d identit%s expired: %s", len(gone), "y" if len(gone) == 1 else "ies", ", ".join(gone))
            self.publish()
        return gone

    # -- state ----------------------------------------------------------------------------
    def health(self) -> SyncHealth:
        """A snapshot of the sync's own health: the gallery in force, and the last bundle refused."""
        a, err = self.applied, self.last_error
        problem = f"gallery bundle rejected at {err.step}: {err.reason}" if err is not None else None
        return SyncHealth(a.bundle.gallery if a else None, a.version if a else None, problem)

    def state(self, error: GalleryError | None = None) -> GalleryState:
        """What the retained state says: counts only, for a sealed gallery (its ids stay off the broker)."""
        g = self.holder.current.gallery
        a = self.applied
        expired = sorted({i.id for i in a.bundle.identities} - set(g.identity_ids)) if a else []
        removed = sorted(a.removed) if a else []
        clear = a is not None and not a.bundle.recipients
        return GalleryState(
            gallery=a.bundle.gallery if a else None,
            version=a.version if a else None,
            identities=len(g),
            embeddings=len(g.embeddings),
            applied_at=a.applied_at if a else None,
            expired=expired if clear else [],
            removed=removed if clear else [],
            expired_count=len(expired),
            removed_count=max(len(removed), a.removed_count) if a else 0,
            sealed=a is not None and bool(a.bundle.recipients),
            error=error,
        )

    def publish(self, error: GalleryError | None = None) -> None:
        try:
            self.publish_state(self.state(error).to_json())
        except Exception:
            log.exception("gallery: state could not be published")
