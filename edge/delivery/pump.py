"""The outbox pump: hands pending outbox rows to the MQTT client in order (QoS 1) while connected,
and deletes a row only when the broker's PUBACK for it arrives.

A row handed to the client and not yet acknowledged is "in flight": it stays in the outbox, so a
broker that dies before its PUBACK loses nothing (the row is sent again after the restart: delivery
is at-least-once, consumers de-duplicate on ``event_id``). A failure PUBACK (the broker refused the
event) keeps the row and says so. A delete that fails (a full disk) is retried on the next round,
never fatal. The pump runs on its own thread and beats the supervisor.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from edge.delivery.outbox import Outbox
from edge.device.supervisor import Worker
from edge.errors import EdgeError

log = logging.getLogger(__name__)


class Sent(Protocol):
    @property
    def rc(self) -> int: ...

    @property
    def mid(self) -> int: ...


class Publisher(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int) -> Sent: ...


@dataclass(frozen=True, slots=True)
class PumpHealth:
    """A snapshot of the pump's own health."""

    published: int  # events the broker acknowledged (since start)
    refused: int  # events the broker refused (failure PUBACK): kept in the outbox
    ack_failures: int  # PUBACKs whose outbox delete failed (retried)
    in_flight: int  # rows handed to the client, not yet acknowledged
    problem: str | None


class OutboxPump:
    def __init__(
        self,
        outbox: Outbox,
        client: Publisher,
        connected: threading.Event,
        stop: threading.Event,
        max_inflight: int,
        worker: Worker | None = None,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.connected = connected
        self.stop_event = stop
        self.window = max_inflight * 5  # rows handed to the client at once (paho queues beyond its in-flight)
        self.worker = worker
        self.last_error: str | None = None
        self.published = 0
        self.refused = 0
        self.ack_failures = 0
        self.closing = threading.Event()  # set at shutdown: the loop ends after its round
        self._acks: queue.SimpleQueue[tuple[int, bool, str]] = queue.SimpleQueue()
        self._unstored_acks: list[int] = []  # outbox seqs acknowledged but not yet deleted (disk trouble)
        self._wake = threading.Event()
        self._progress = threading.Condition()  # notified after every round
        self._inflight: dict[int, int] = {}  # paho mid → outbox seq (pump thread only)
        self._cursor = 0  # highest outbox seq handed to the client in this process
        self.thread = threading.Thread(target=self.run, name="mqtt-pump", daemon=True)

    @property
    def in_flight(self) -> int:
        """Outbox rows handed to the MQTT client and not yet acknowledged by the broker (a snapshot)."""
        return len(self._inflight)

    def health(self) -> PumpHealth:
        return PumpHealth(self.published, self.refused, self.ack_failures, len(self._inflight), self.last_error)

    def notify(self) -> None:
        """A new event is in the outbox, or the connection came up."""
        self._wake.set()

    def reconnected(self) -> None:
        """A new connection: what was said about the last one no longer holds; send at once."""
        self.last_error = None
        self._wake.set()

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds, re-checked after every round (publishes, acks)."""
        deadline = time.monotonic() + timeout
        with self._progress:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._progress.wait(min(left, 0.5))  # pragma: no mutate (a poll interval)
            return True

    def on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        """paho's PUBACK callback (network thread): queued for the pump thread."""
        failed = bool(getattr(reason, "is_failure", False))
        self._acks.put((mid, not failed, str(reason)))
        self._wake.set()

    def run(self) -> None:
        while True:
            if self.worker is not None:
                self.worker.beat()
            self._wake.wait(0.5)  # pragma: no mutate (a poll interval: woken at once by work)
            self._wake.clear()
            try:
                self.round()
            except Exception as exc:  # e.g. the outbox failing to read: report, keep pumping
                self.last_error = f"outbox pump: {exc}"
                log.exception("mqtt pump: %s", exc)
                self.stop_event.wait(1.0)  # pragma: no mutate (a pause before retrying: any value serves)
            with self._progress:
                self._progress.notify_all()
            if self.closing.is_set() or (self.stop_event.is_set() and not self.connected.is_set()):
                break
        if self.worker is not None:
            self.worker.done("stopped")

    def round(self) -> int:
        """Settle the acknowledgements that arrived, then (connected) hand the next rows to the client.
        Returns the rows handed over."""
        self.take_acks()
        if not self.connected.is_set():
            return 0
        room = self.window - len(self._inflight)
        if room <= 0:
            return 0
        handed = 0
        for row in self.outbox.pending(after=self._cursor, limit=room):
            info = self.client.publish(row.topic, row.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("publish of outbox row %d deferred: %s", row.seq, mqtt.error_string(info.rc))
                break
            self._inflight[info.mid] = row.seq
            self._cursor = row.seq
            handed += 1
        return handed

    def take_acks(self) -> None:
        """Delete the acknowledged rows from the outbox, in order; a refused one stays."""
        while True:
            try:
                mid, ok, reason = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue
            if ok:
                self._unstored_acks.append(seq)
                self.published += 1
            else:
                self.refused += 1
                self.last_error = f"broker refused event (outbox row {seq}): {reason}"
                log.error("mqtt: %s; kept in the outbox, sent again at the next start", self.last_error)
        while self._unstored_acks:
            try:
                self.outbox.ack(self._unstored_acks[0])
            except EdgeError as exc:  # disk full or I/O error: keep the ack, retry on the next round
                self.ack_failures += 1
                self.last_error = str(exc)
                if self.ack_failures == 1 or self.ack_failures % 100 == 0:
                    log.error("%s (%d acknowledged event(s) waiting to be removed)", exc, len(self._unstored_acks))
                return
            self._unstored_acks.pop(0)
