"""The device service: the one place that wires the stages, starts them in order
and stops them in order.

    capture thread → LatestFrame → frame loop (detect → track → align → quality →
    embed → match → confirm) → event → outbox → MQTT pump thread → broker

Threads exist only where I/O blocks: the camera reader, paho's network loop and
the outbox pump. One stop event ends them all; shutdown goes in stages, each
with a time limit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType

from edge import __version__
from edge.capture import CaptureThread, LatestFrame, open_source
from edge.config import Settings
from edge.errors import EdgeError
from edge.events import Evidence, MatchEvent, Status
from edge.gallery.enroll import enroll_directory
from edge.gallery.store import load_bundle_file, load_trusted, to_gallery
from edge.gallery.sync import GallerySync
from edge.health import Stats, SystemdNotifier, cpu_temperature
from edge.match import Gallery, GalleryHolder
from edge.mqtt import MqttLink, Topics
from edge.outbox import Outbox
from edge.pipeline import Recognizer
from edge.process import FrameProcessor
from edge.track import Confirmation, Tracker
from edge.types import Frame

log = logging.getLogger("edge.app")


@dataclass
class RunResult:
    events: int
    frames: int
    drained: bool


class App:
    def __init__(self, settings: Settings, recognizer: Recognizer | None = None) -> None:
        self.s = settings
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.notifier = SystemdNotifier()
        self.rec = recognizer or Recognizer(settings)
        self.topics = Topics(settings.mqtt.topic_prefix, settings.device.id)
        self.stats = Stats()
        self.events = 0
        self.lost_events = 0  # events that could not be written to the outbox (disk errors)
        self.model_tag = self.rec.embedder_sha256[:16]
        state = settings.device.state_dir
        self.outbox = Outbox(
            settings.outbox.path or state / "outbox.sqlite", settings.outbox.max_events, settings.outbox.max_age_s
        )
        self.link = MqttLink(settings.mqtt, self.topics, self.outbox, self.stop)
        self.link.on_connected = self._on_connected
        self.slot = LatestFrame()
        self.capture = CaptureThread(
            open_source(settings.source.uri, settings.source.fps, settings.source.width, settings.source.height),
            self.slot,
            self.stop,
            realtime=settings.source.rate == "native",
            at_end=settings.source.at_end,
            retry_initial_s=settings.source.retry_initial_s,
            retry_max_s=settings.source.retry_max_s,
        )
        self.gallery = GalleryHolder(self.rec.matcher)
        self.sync: GallerySync | None = None
        g = settings.gallery
        if g.sync and g.name and g.trusted_keys:
            self.sync = GallerySync(
                self.gallery, state / "gallery", load_trusted(g.trusted_keys), self.rec.embedder_sha256, g.name,
                g.max_bundle_bytes, lambda data: self.link.publish_retained(self.topics.gallery_state, data),
            )  # fmt: skip
            self.link.on_message = lambda topic, payload, retain: (
                self.sync.submit(topic, payload) if self.sync else None
            )
            for topic in (self.topics.gallery_fleet(g.name), self.topics.gallery_set):
                self.link.subscribe(topic)
                self.link.subscribe(topic + "/part/+")
        self.process = FrameProcessor(self.rec, self.gallery, Tracker(settings.tracking), self.stats, self.emit)

    # -- start-up ------------------------------------------------------------------
    def load_gallery(self) -> None:
        g = self.s.gallery
        path = g.path
        if self.sync is not None and self.sync.load_from_disk():
            return  # the last gallery applied over the air takes precedence
        if path is None:
            log.warning("no gallery configured: nothing can match until one is enrolled")
            return
        if path.is_file():
            bundle = load_bundle_file(path, load_trusted(g.trusted_keys), self.rec.embedder_sha256, g.name)
            if self.sync is not None:
                # Through the sync, so the file's version is the floor for over-the-air updates.
                self.sync.apply(path.read_bytes())
            else:
                self.gallery.swap(to_gallery(bundle))
            snap = self.gallery.current
            log.info("gallery %s v%d from %s (signed by %s): %d identities, threshold %.4f", bundle.gallery,
                     bundle.version, path, bundle.signer, len(snap), snap.threshold)  # fmt: skip
            return
        reports = enroll_directory(self.rec, path)
        entries = [(r.identity_id, r.label, r.embeddings) for r in reports if r.embeddings is not None]
        gallery = Gallery.build(entries, version=0, name=path.name)
        snap = self.gallery.swap(gallery)
        for r in reports:
            for photo, reason in r.rejected.items():
                log.warning("enrol %s/%s rejected: %s", r.identity_id, photo, reason)
        log.info(
            "gallery %s: %d identities, %d embeddings, threshold %.4f (max FMR %g per stranger)",
            path, len(gallery), len(gallery.embeddings), snap.threshold, self.s.match.max_false_match_rate,
        )  # fmt: skip

    def _on_connected(self) -> None:
        self.link.publish_status(self.status("online"))
        if self.sync is not None:
            self.sync.publish()

    # -- status --------------------------------------------------------------------
    def status(self, state: str = "online") -> Status:
        now = time.monotonic()
        fps, fpm, lat = self.stats.snapshot(now)
        gallery = self.gallery.current.gallery
        cap = self.capture.status
        return Status(
            device_id=self.topics.device_id, state=state, version=__version__,
            uptime_s=round(now - self.started, 1), camera=cap.state, camera_error=cap.error, fps=fps, latency=lat,
            faces_per_min=fpm, dropped_frames=self.slot.dropped, outbox_depth=self.outbox.depth(),
            outbox_dropped=self.outbox.dropped() + self.lost_events, events_published=self.link.published,
            gallery_version=gallery.version, gallery_identities=len(gallery), cpu_temp_c=cpu_temperature(),
        )  # fmt: skip

    # -- events ------------------------------------------------------------------
    def emit(self, conf: Confirmation, frame: Frame) -> None:
        m = conf.match
        assert m.identity_id is not None
        event = MatchEvent(
            device_id=self.topics.device_id, identity_id=m.identity_id,
            label=m.label if self.s.events.include_label else None, score=round(m.score, 4),
            threshold=round(m.threshold, 4), est_false_match_rate=m.est_false_match_rate,
            evidence=Evidence(agreed=conf.agreed, seen=conf.seen), track_id=conf.track_id,
            bbox=tuple(round(v, 4) for v in conf.box.normalised(frame.width, frame.height)),
            quality=conf.quality, model=self.model_tag, gallery_version=m.gallery_version,
        )  # fmt: skip
        try:
            seq = self.outbox.put(self.topics.match, event.to_json(self.s.events.include_label))
        except EdgeError as exc:
            self.lost_events += 1
            log.error("event %s identity=%s NOT queued: %s", event.event_id, event.identity_id, exc)
            return
        self.events += 1
        self.link.notify()
        log.info(
            "event %s identity=%s score=%.3f threshold=%.3f track=%d outbox=%d",
            event.event_id, event.identity_id, event.score, event.threshold, conf.track_id, seq,
        )  # fmt: skip

    # -- run -------------------------------------------------------------------------
    def install_signals(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> RunResult:
        self.load_gallery()
        if self.sync is not None:
            self.sync.start()
        self.link.start()
        self.capture.start()
        self.notifier.ready(f"watching {self.s.source.uri}")
        log.info("running: source %s, device %s, broker %s:%d", self.s.source.uri, self.topics.device_id,
                 self.s.mqtt.host, self.s.mqtt.port)  # fmt: skip
        next_beat = time.monotonic() + self.s.mqtt.heartbeat_s
        next_expiry = time.monotonic()
        exit_at_end = self.s.source.at_end == "exit"
        try:
            while not self.stop.is_set():
                frame = self.slot.take(timeout=0.25)
                if frame is not None:
                    self.process(frame)
                now = time.monotonic()
                self.notifier.watchdog(now)
                # Only when it can be sent: building a status closes the statistics interval.
                if now >= next_beat and self.link.connected.is_set():
                    next_beat = now + self.s.mqtt.heartbeat_s
                    self.link.publish_status(self.status())
                if self.sync is not None and now >= next_expiry:
                    next_expiry = now + self.s.gallery.expiry_check_s
                    self.sync.check_expiry()
                if exit_at_end and frame is None and self.capture.exhausted.is_set():
                    break
        finally:
            drained = self.shutdown(drain=exit_at_end and not self.stop.is_set())
        return RunResult(self.events, self.process.frames, drained)

    def shutdown(self, drain: bool) -> bool:
        """Stop in stages: capture, (drain the outbox), final status, MQTT, outbox."""
        self.notifier.stopping()
        drained = True
        if drain:
            drained = self.link.drain(self.s.outbox.drain_timeout_s)
            if not drained:
                log.warning("outbox not drained within %.0fs: %d event(s) kept for the next start",
                            self.s.outbox.drain_timeout_s, self.outbox.depth())  # fmt: skip
        self.stop.set()
        self.capture.join(timeout=3.0)
        if self.sync is not None:
            self.sync.stop()
        self.link.close(self.status("offline"), timeout=3.0)
        self.outbox.close()
        log.info("stopped: %d frames, %d events", self.process.frames, self.events)
        return drained
