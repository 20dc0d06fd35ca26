"""Durable outbox: an event is stored in SQLite (WAL) before it is published and
deleted only when the broker acknowledges it (PUBACK).

The queue survives broker outages, restarts and SIGKILL: a row is committed
(synchronous=FULL) before ``put`` returns. Rows go out in insertion order. It is
bounded by count and age; what the bounds drop is counted and logged, never lost
silently.

Age is measured on a *service clock*: the time the service has been running,
accumulated across restarts in the database itself. A Raspberry Pi has no
real-time clock and NTP corrects the wall clock after boot, sometimes by years;
such a jump must not age (and drop) what is queued. The wall-clock time of each
event is in its payload (``ts``) for consumers.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clock (id INTEGER PRIMARY KEY CHECK (id = 1), service_s REAL NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    seq: int
    topic: str
    payload: bytes
    created: float  # service-clock seconds when stored


@dataclass(frozen=True, slots=True)
class OutboxHealth:
    """A snapshot of the outbox's own health."""

    depth: int  # events waiting for their PUBACK
    dropped: int  # events dropped over the device's life (bounds: size, age)
    problem: str | None


class Outbox:
    def __init__(self, path: Path, max_events: int = 10_000, max_age_s: float = 7 * 86400) -> None:
        self.path = path
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")  # pragma: no mutate
            self._db.execute("PRAGMA synchronous=FULL")  # pragma: no mutate
            # A delivered event (it names the person matched) is overwritten on disk, not left in a free page.
            self._db.execute("PRAGMA secure_delete=ON")  # pragma: no mutate
            self._db.executescript(SCHEMA)
            self._db.execute("PRAGMA quick_check").fetchone()  # pragma: no mutate
            self._migrate()
            row = self._db.execute("SELECT service_s FROM clock WHERE id = 1").fetchone()  # pragma: no mutate
        except sqlite3.DatabaseError as exc:
            raise EdgeError(f"outbox {path} cannot be opened: {exc}") from None
        except OSError as exc:
            raise EdgeError(f"outbox {path} cannot be created: {exc.strerror or exc}") from None
        self._clock_base = float(row[0]) if row else 0.0
        self._clock_start = time.monotonic()

    def _migrate(self) -> None:
        """Databases written before the service clock held wall-clock times in ``created``:
        from now on their rows age from the moment of the upgrade."""
        if self._db.execute("SELECT COUNT(*) FROM clock").fetchone()[0] == 0:  # pragma: no mutate
            with self._db:
                self._db.execute("INSERT INTO clock VALUES (1, 0.0)")  # pragma: no mutate
                self._db.execute("UPDATE outbox SET created = 0.0")  # pragma: no mutate

    def service_time(self) -> float:
        """Seconds the service has run with this outbox, over all its runs (immune to clock jumps)."""
        return self._clock_base + (time.monotonic() - self._clock_start)

    def _save_clock(self, now: float) -> None:
        self._db.execute("UPDATE clock SET service_s = MAX(service_s, ?) WHERE id = 1", (now,))  # pragma: no mutate

    def tick(self) -> None:
        """Persist the service clock (called with each heartbeat, so restarts lose at most one interval)."""
        try:
            with self._lock, self._db:
                self._save_clock(self.service_time())
        except sqlite3.Error as exc:
            log.warning("outbox %s: service clock not saved: %s", self.path, exc)

    def put(self, topic: str, payload: bytes, now: float | None = None) -> int:
        """Store one event durably; returns its sequence number. ``now``: service-clock seconds."""
        now = self.service_time() if now is None else now
        try:
            with self._lock, self._db:
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",  # pragma: no mutate
                    (topic, payload, now),  # pragma: no mutate
                )
                self._enforce_bounds(now)
                self._save_clock(now)
                return int(cur.lastrowid or 0)
        except sqlite3.Error as exc:  # disk full, I/O error: the transaction rolled back
            raise EdgeError(f"outbox {self.path}: event not stored: {exc}") from None

    def _enforce_bounds(self, now: float) -> None:
        aged = self._db.execute(
            "DELETE FROM outbox WHERE created < ?",  # pragma: no mutate
            (now - self.max_age_s,),  # pragma: no mutate
        ).rowcount  # pragma: no mutate
        over = self._db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq DESC LIMIT -1 OFFSET ?)",  # pragma: no mutate
            (self.max_events,),
        ).rowcount
        dropped = aged + over
        if dropped:
            self._db.execute(
                "INSERT INTO counters VALUES ('dropped', ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",  # pragma: no mutate
                (dropped, dropped),
            )
            log.warning(
                "outbox full or stale: dropped %d oldest event(s) (%d too old, %d over %d)",
                dropped,
                aged,
                over,
                self.max_events,
            )

    def pending(self, after: int = 0, limit: int = 100) -> list[Pending]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, payload, created FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",  # pragma: no mutate
                (after, limit),  # pragma: no mutate
            ).fetchall()
        return [Pending(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def ack(self, seq: int) -> None:
        """Delete an acknowledged event; EdgeError (the row stays) when the disk refuses."""
        try:
            with self._lock, self._db:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))  # pragma: no mutate
        except sqlite3.Error as exc:
            raise EdgeError(f"outbox {self.path}: acknowledged event {seq} not removed: {exc}") from None

    def health(self) -> OutboxHealth:
        """Depth and drops now; a database that cannot be read is the problem (depth and dropped -1)."""
        try:
            return OutboxHealth(self.depth(), self.dropped(), None)
        except (EdgeError, sqlite3.Error) as exc:
            return OutboxHealth(-1, -1, f"outbox {self.path} cannot be read: {exc}")

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])  # pragma: no mutate

    def dropped(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()  # pragma: no mutate
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            try:
                with self._db:
                    self._save_clock(self.service_time())
            except sqlite3.Error as exc:
                log.warning("outbox %s: service clock not saved at close: %s", self.path, exc)
            self._db.close()
