"""Where a confirmed match event goes: sinks registered in one place, in order.

Each sink has one small interface, ``emit(event)``. The App lists them once (the
audit log first, so an event is recorded before it takes effect; then the outbox,
from which MQTT publishes; then Home Assistant presence), so a new consumer is a
new module, not new lines in ``App``. A sink that fails is logged and counted; the
others still get the event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge.delivery.audit import AuditLog
from edge.delivery.events import MatchEvent
from edge.delivery.outbox import Outbox
from edge.errors import EdgeError

log = logging.getLogger(__name__)


class EventSink(Protocol):
    name: str

    def emit(self, event: MatchEvent) -> None:
        """Take one event; raise EdgeError (one line, the cause) when it could not."""


class OutboxSink:
    """Stores the event durably for the MQTT pump (which publishes it and deletes it on PUBACK)."""

    name = "outbox"

    def __init__(self, outbox: Outbox, topic: str, include_label: bool, wake: Callable[[], None]) -> None:
        self.outbox = outbox
        self.topic = topic
        self.include_label = include_label
        self.wake = wake

    def emit(self, event: MatchEvent) -> None:
        self.outbox.put(self.topic, event.to_json(self.include_label))
        self.wake()


class AuditSink:
    """Records the event in the audit log before it goes anywhere: identity ids and scores only."""

    name = "audit"

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def emit(self, event: MatchEvent) -> None:
        self.audit.append(
            "event",
            {
                "event_id": str(event.event_id),
                "identity_id": event.identity_id,
                "score": event.score,
                "threshold": event.threshold,
                "est_false_match_rate": event.est_false_match_rate,
                "gallery_version": event.gallery_version,
                "track_id": event.track_id,
            },
        )


@dataclass(frozen=True, slots=True)
class SinksHealth:
    """A snapshot of the fan-out's own health."""

    failures: dict[str, int]  # events each sink could not take
    problem: str | None  # the last failure (kept: the event it lost is not coming back)


class Sinks:
    """The fan-out: every sink, in order; failures counted per sink and reported, never raised."""

    def __init__(self, sinks: Sequence[EventSink]) -> None:
        self.sinks = list(sinks)
        self.failures: dict[str, int] = {s.name: 0 for s in self.sinks}
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def health(self) -> SinksHealth:
        with self._lock:
            return SinksHealth(dict(self.failures), self.last_error)

    def emit(self, event: MatchEvent) -> list[str]:
        """Names of the sinks that failed (empty when all took it)."""
        failed = []
        for sink in self.sinks:
            try:
                sink.emit(event)
            except EdgeError as exc:
                failed.append(sink.name)
                with self._lock:
                    self.failures[sink.name] += 1
                    self.last_error = f"{sink.name}: {exc}"
                log.error("event %s identity=%s not taken by %s: %s", event.event_id, event.identity_id, sink.name, exc)
        return failed
