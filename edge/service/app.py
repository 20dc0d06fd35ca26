"""The device service: the one place that wires the stages, starts them in order
and stops them in order.

    cameras (each: reader thread → LatestFrame) → frame loop (per camera: scan → track →
    align → quality; embed in one batch; match; confirm) → event → sinks (audit,
    outbox → MQTT pump, presence)

The per-camera chain is ``edge.service.camera.Camera``, made once per camera; this
module holds the device-wide services. Threads exist only where I/O blocks: each
camera's reader, the MQTT network loop and the outbox pump, the gallery sync. Each is a supervised worker (``supervisor.py``):
one that dies or stalls stops the watchdog and ends the service non-zero, after
the cause is logged and published in the final status. One stop event ends them
all; shutdown goes in stages, each with a time limit.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import FrameType

from edge import __version__
from edge.capture import FrameHub
from edge.delivery.audit import AuditLog
from edge.delivery.events import CameraStatus, MatchEvent, StageLatency, Status, make_event, utc_now
from edge.delivery.homeassistant import HomeAssistant
from edge.delivery.mqtt import MqttLink, Topics
from edge.delivery.outbox import Outbox
from edge.delivery.sinks import AuditSink, EventSink, OutboxSink, Sinks
from edge.device.config import secret_values, settings_digest
from edge.device.health import Stats, SystemdNotifier, cpu_temperature
from edge.device.keys import ensure_key, public_line
from edge.device.logs import protect
from edge.device.settings import Settings
from edge.device.supervisor import Supervisor
from edge.errors import EdgeError
from edge.gallery.admit import Policy, load_bundle_file, load_trusted, to_gallery
from edge.gallery.build import gallery_of
from edge.gallery.enroll import enroll_directory
from edge.gallery.store import GalleryStore
from edge.gallery.sync import GallerySync
from edge.recognition.match import GalleryHolder
from edge.recognition.pipeline import Recognizer
from edge.recognition.track import Confirmation
from edge.service.camera import Camera, CameraState, FrameLoop, summarise, summarise_error, wait_cameras
from edge.types import Frame

log = logging.getLogger("edge.service.app")


@dataclass
class RunResult:
    events: int
    frames: int
    drained: bool
    error: str | None = None  # why the run ended early: a fault, or a source that could not be used
    exit_code: int = 0


class App:
    def __init__(
        self,
        settings: Settings,
        recognizer: Recognizer | None = None,
        hard_exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.settings = settings
        protect(*secret_values(settings))
        self.stop = threading.Event()
        self.ready = threading.Event()  # every worker started (systemd READY=1 is sent with it)
        self.started = time.monotonic()
        self.since: datetime | None = None
        self.hard_exit = hard_exit
        self.fault: str | None = None
        self._hard_exit_timer: threading.Timer | None = None
        self.supervisor = Supervisor(settings.health.stall_timeout_s, self._on_fault)
        self.notifier = SystemdNotifier()
        self.recognizer = recognizer or Recognizer(settings)
        self.topics = Topics(settings.mqtt.topic_prefix, settings.device.id)
        self.stats = Stats(period_s=settings.mqtt.heartbeat_s)  # a window per heartbeat, on its own clock
        self.events = 0
        self.model_tag = self.recognizer.embedder_sha256[:16]
        state = settings.device.state_dir
        # The device's X25519 key (state directory 0700, key 0600): galleries are encrypted to it.
        self.device_key, made = ensure_key(state)
        if made:
            log.info(
                "device key made (key id %s): %s; give this line to 'edge enroll --recipient'",
                self.device_key.short_id,
                public_line(self.device_key.public),
            )
        a = settings.audit
        self.audit = AuditLog(state / "audit", a.segment_bytes, a.max_bytes, a.max_age_days) if a.enabled else None
        self.outbox = Outbox(
            settings.outbox.path or state / "outbox.sqlite", settings.outbox.max_events, settings.outbox.max_age_s
        )
        sup = self.supervisor
        net, pump = sup.register("mqtt-network"), sup.register("mqtt-pump")
        self.link = MqttLink(
            settings.mqtt, self.topics, self.outbox, self.stop, settings.gallery.max_bundle_bytes, net, pump
        )
        sup.attach(net, self.link.threads[0])
        sup.attach(pump, self.link.threads[1])
        self.link.when_connected(self._on_connected)
        self.gallery = GalleryHolder(self.recognizer.matcher)
        g = settings.gallery
        self.policy = Policy(
            load_trusted(g.trusted_keys),
            self.recognizer.embedder_sha256,
            g.name,
            g.max_bundle_bytes,
            self.recognizer.embedder_names,
            self.recognizer.embedder.dim,
            self.device_key,
            g.allow_plaintext,
        )
        self.sync: GallerySync | None = None
        if g.sync and g.name and g.trusted_keys:
            sync_worker = sup.register("gallery-sync")
            self.sync = GallerySync(
                self.gallery,
                GalleryStore(state / "gallery", self.policy),
                self.policy,
                g,
                lambda data: self.link.publish_retained(self.topics.gallery_state, data),
                journal=lambda kind, details: self._record(f"gallery_{kind}", details),
                worker=sync_worker,
            )
            sup.attach(sync_worker, self.sync.thread)
            self.sync.attach(self.link, self.topics)
        self.ha: HomeAssistant | None = None
        self.periodic: list[Callable[[float], None]] = []  # called from the frame loop, at least 4 times a second
        if settings.homeassistant.enabled:
            self.ha = HomeAssistant(
                settings.homeassistant,
                self.topics,
                self.link,
                settings.events.include_label,
                [c.id for c in settings.camera_list()],
            )
            self.ha.attach()
            self.gallery.on_change(self.ha.on_gallery)
            self.periodic.append(self.ha.presence.tick)
        self.sinks = Sinks(self.event_sinks())
        # Each camera its own chain (reader, scanner, tracker, gate), all served by one frame loop.
        self.hub = FrameHub()
        specs = settings.camera_list()
        self.cameras = [
            Camera(
                spec,
                self.recognizer,
                self.gallery,
                settings.tracking,
                sup,
                self.stop,
                self.hub,
                self.stats,
                self.emit,
                self.ha.presence.seen if self.ha else None,
                single=len(specs) == 1,
            )
            for spec in specs
        ]
        self.loop = FrameLoop(self.cameras, self.hub)
        self.loop_worker = sup.register("frame-loop")

    def event_sinks(self) -> list[EventSink]:
        """Every consumer of a confirmed event, in order: the one place to add one. The audit log comes
        first, so an event is on record before it takes effect."""
        sinks: list[EventSink] = [AuditSink(self.audit)] if self.audit is not None else []
        sinks.append(OutboxSink(self.outbox, self.topics.match, self.settings.events.include_label, self.link.notify))
        if self.ha is not None:
            sinks.append(self.ha.presence)
        return sinks

    def _record(self, kind: str, details: dict[str, object]) -> None:
        """On record in the audit log before it takes effect (a refused write is logged, not fatal)."""
        if self.audit is None:
            return
        try:
            self.audit.append(kind, details)
        except EdgeError as exc:
            log.error("%s not recorded in the audit log: %s", kind, exc)

    # -- start-up ------------------------------------------------------------------
    def load_gallery(self) -> None:
        g = self.settings.gallery
        path = g.path
        if self.sync is not None and self.sync.load_from_disk():
            return  # the last gallery applied over the air takes precedence
        if path is None:
            if self.sync is not None:
                log.info("waiting for gallery %r over MQTT: nothing can match until it applies", g.name)
            else:
                log.warning("no gallery configured: nothing can match until one is enrolled")
            return
        if path.is_file():
            bundle, data = load_bundle_file(path, self.policy)
            if self.sync is not None:
                # Through the sync, so the file's version is the floor for over-the-air updates.
                self.sync.apply(data)
            else:
                self.gallery.swap(to_gallery(bundle))
            snapshot = self.gallery.current
            log.info(
                "gallery %s v%d from %s (signed by %s): %d identities, threshold %.4f",
                bundle.gallery,
                bundle.version,
                path,
                bundle.signer,
                len(snapshot),
                snapshot.threshold,
            )
            return
        reports = enroll_directory(self.recognizer, path)
        snapshot = self.gallery.swap(gallery_of(reports, version=0, name=path.name))
        for r in reports:
            for photo, reason in r.rejected.items():
                log.warning("enrol %s/%s rejected: %s", r.identity_id, photo, reason)
        log.info(
            "gallery %s: %d identities, %d embeddings, threshold %.4f (max FMR %g per stranger)",
            path,
            len(snapshot),
            len(snapshot.gallery.embeddings),
            snapshot.threshold,
            self.settings.match.max_false_match_rate,
        )

    def _on_connected(self) -> None:
        self.since = self.since or utc_now()
        self.link.publish_status(self.status("online"))

    # -- status --------------------------------------------------------------------
    def _worst(self, cameras: list[CameraState]) -> str | None:
        """The first problem, most severe first, of each component's own health snapshot."""
        camera_error = summarise_error([(c.id, c.error) for c in cameras if c.error], len(cameras))
        problems = (
            self.fault or self.supervisor.health().problem,  # a worker dead or stalled: the run ends
            self.audit.health().problem if self.audit is not None else None,
            self.sinks.health().problem,
            self.link.health().problem,
            camera_error,
            self.sync.health().problem if self.sync is not None else None,
        )
        return next((p for p in problems if p), None)

    def status(self, state: str = "online") -> Status:
        """The status message, composed of each component's own health snapshot: no side effects, safe from
        any thread (the frame loop's heartbeat and the MQTT thread on every connection both build one)."""
        now = time.monotonic()
        fps, fpm, lat = self.stats.snapshot(now)
        snapshot = self.gallery.current
        cameras = [c.state(now) for c in self.cameras]
        camera_state, camera_error = summarise(cameras)
        outbox, sinks, link = self.outbox.health(), self.sinks.health(), self.link.health()
        audit = self.audit.health() if self.audit is not None else None
        if outbox.problem:
            log.warning("status: %s", outbox.problem)
        return Status(
            device_id=self.topics.device_id,
            state=state,
            version=__version__,
            embedder=self.recognizer.embedder_name,
            key_id=self.device_key.key_id.hex(),
            public_key=public_line(self.device_key.public),
            uptime_s=round(now - self.started, 1),
            camera=camera_state,
            camera_error=camera_error,
            cameras={
                c.id: CameraStatus(state=c.state, error=c.error, fps=c.fps, dropped_frames=c.dropped_frames)
                for c in cameras
            },
            fps=fps,
            latency={k: StageLatency(p50_ms=v.p50_ms, p95_ms=v.p95_ms) for k, v in lat.items()},
            faces_per_min=fpm,
            dropped_frames=sum(c.dropped_frames for c in cameras),
            outbox_depth=outbox.depth,
            outbox_dropped=outbox.dropped + sum(sinks.failures.values()) if outbox.dropped >= 0 else -1,
            events_published=link.published,
            gallery_name=snapshot.gallery.name or None,
            gallery_version=snapshot.version,
            gallery_identities=len(snapshot),
            cpu_temp_c=cpu_temperature(),
            since=self.since,
            last_error=self._worst(cameras),
            audit_head=audit.head.hash if audit else None,
            audit_records=audit.head.records if audit else None,
        )

    # -- events ------------------------------------------------------------------
    def emit(self, conf: Confirmation, frame: Frame, camera: str) -> None:
        event = make_event(
            conf,
            frame.width,
            frame.height,
            self.topics.device_id,
            self.model_tag,
            self.settings.events.include_label,
            camera,
        )
        self.publish_event(event)

    def publish_event(self, event: MatchEvent) -> None:
        failed = self.sinks.emit(event)
        if "outbox" not in failed:
            self.events += 1
        log.info(
            "event %s identity=%s score=%.3f threshold=%.3f camera=%s track=%d gallery=v%d",
            event.event_id,
            event.identity_id,
            event.score,
            event.threshold,
            event.camera,
            event.track_id,
            event.gallery_version,
        )

    # -- faults --------------------------------------------------------------------
    def _on_fault(self, reason: str) -> None:
        """A worker died or stalled: say so, stop in order if we can, hard if the shutdown hangs."""
        self.fault = reason
        timer = threading.Timer(self.settings.health.exit_grace_s, self._hard_stop, args=(reason,))
        timer.daemon = True
        timer.start()  # first: what follows may block on whatever the stalled worker holds
        self._hard_exit_timer = timer
        self.stop.set()
        for cam in self.cameras:
            cam.slot.close()
        try:
            self.link.publish_status(self.status("offline"))
        except Exception:
            log.exception("the fault could not be published in the status")

    def _hard_stop(self, reason: str) -> None:
        log.critical(
            "orderly shutdown did not finish within %.0fs after: %s; exiting now",
            self.settings.health.exit_grace_s,
            reason,
        )
        self.hard_exit(1)

    # -- run -------------------------------------------------------------------------
    def install_signals(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> RunResult:
        self._record(
            "start",
            {
                "version": __version__,
                "device_id": self.topics.device_id,
                "settings_sha256": settings_digest(self.settings),
                "models": {k: m.sha256 for k, m in self.recognizer.manifest.models.items()},
            },
        )
        self.load_gallery()
        if self.sync is not None:
            self.sync.start()
        self.link.start()
        for cam in self.cameras:
            cam.start()
        self.supervisor.attach(self.loop_worker, threading.current_thread())
        self.supervisor.start()
        watching = ", ".join(c.display for c in self.cameras)
        self.notifier.ready(f"watching {watching}")
        self.ready.set()
        log.info(
            "running: %s %s, device %s, broker %s:%d",
            "camera" if len(self.cameras) == 1 else "cameras",
            watching,
            self.topics.device_id,
            self.settings.mqtt.host,
            self.settings.mqtt.port,
        )
        next_beat = time.monotonic() + self.settings.mqtt.heartbeat_s
        exit_at_end = self.settings.source.at_end == "exit"
        try:
            while not self.stop.is_set():
                self.loop_worker.beat()
                processed = self.loop.step(timeout=0.25)
                now = time.monotonic()
                for task in self.periodic:
                    task(now)
                if self.supervisor.healthy:  # a dead or stalled worker stops the watchdog pings
                    self.notifier.watchdog(now)
                if now >= next_beat:
                    next_beat = now + self.settings.mqtt.heartbeat_s
                    self.outbox.tick()
                    if self.link.connected.is_set():
                        self.link.publish_status(self.status())
                if exit_at_end and not processed and self.loop.all_done():
                    break
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # the frame loop itself died: the same rule as any worker
            self.fault = self.fault or f"worker 'frame-loop' died: {type(exc).__name__}: {exc}"
            log.critical("fatal: %s", self.fault, exc_info=True)
        finally:
            failure = next((c.capture.failure for c in self.cameras if c.capture.failure), None)
            drained = self.shutdown(drain=exit_at_end and not self.stop.is_set() and not failure)
        error = self.fault or failure
        code = 1 if self.fault else 2 if failure else 0
        return RunResult(self.events, self.loop.frames, drained, error, code)

    def shutdown(self, drain: bool) -> bool:
        """Stop in stages: capture, (drain the outbox), final status, MQTT, outbox."""
        self.notifier.stopping()
        self.loop_worker.done("stopping")
        drained = True
        if drain:
            drained = self.link.drain(self.settings.outbox.drain_timeout_s)
            if not drained:
                log.warning(
                    "outbox not drained within %.0fs: %d event(s) kept for the next start",
                    self.settings.outbox.drain_timeout_s,
                    self.outbox.depth(),
                )
        self.stop.set()
        self.supervisor.stop()
        wait_cameras(self.cameras, timeout=3.0)
        if self.sync is not None:
            self.sync.stop()
        self._record("stop", {"frames": self.loop.frames, "events": self.events, "fault": self.fault})
        self.link.close(self.status("offline"), timeout=3.0)
        self.outbox.close()
        if self._hard_exit_timer is not None:
            self._hard_exit_timer.cancel()
        log.info(
            "stopped: %d frames, %d events%s",
            self.loop.frames,
            self.events,
            f" (fault: {self.fault})" if self.fault else "",
        )
        return drained
