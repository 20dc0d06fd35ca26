"""A tamper-evident audit log: every decision the device takes, in a SHA-256 hash chain.

    <state_dir>/audit/audit-000001.jsonl, audit-000002.jsonl, …

One JSON object per line: ``seq`` (1, 2, … over the device's life), ``ts`` (UTC),
``kind``, ``data``, ``prev`` (the previous record's hash) and ``hash`` = sha256 of
``prev`` and the canonical JSON of seq, ts, kind and data. Kinds: ``start`` (settings
digest, model sha256s, software version), ``event`` (identity ids and scores: never
an image, a crop or an embedding), ``gallery_applied`` / ``gallery_removed`` /
``gallery_rejected`` / ``gallery_expired`` (version, signer key id, step, reason),
``recovered`` (a torn last line cut after a crash), ``stop``.

A record is written (O_APPEND, fsync) before what it records takes effect. A write
that fails (a full disk) is undone to the last whole record and raised: the caller
logs it and goes on, nothing else is lost. Segments rotate at ``segment_bytes``;
the oldest are deleted beyond ``max_bytes`` or ``max_age_days``; the chain runs on
across files, so what remains still verifies (from the first record kept).

``verify`` recomputes every hash and link: an edited, removed or reordered record
breaks the chain at the first one affected. A chain cut short at a record boundary
still verifies on its own; that is what the ``audit_head`` and ``audit_records`` of
every status message are for: ``verify(head=…)`` fails when a head a subscriber
recorded is no longer in the chain.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.errors import EdgeError, InputError

log = logging.getLogger(__name__)
GENESIS = "0" * 64
PREFIX, SUFFIX = "audit-", ".jsonl"


def _digest(prev: str, seq: int, ts: str, kind: str, data: dict[str, Any]) -> str:
    body = json.dumps({"seq": seq, "ts": ts, "kind": kind, "data": data}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((prev + body).encode()).hexdigest()


def _segments(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"{PREFIX}*{SUFFIX}") if p.stem[len(PREFIX) :].isdigit())


@dataclass(frozen=True, slots=True)
class Head:
    records: int  # seq of the last record (records written over the device's life)
    hash: str


@dataclass(frozen=True, slots=True)
class AuditHealth:
    """A snapshot of the audit log's own health."""

    head: Head
    failures: int  # records that could not be written (each raised to its caller)
    problem: str | None  # the last write's failure, until a record is written again


class AuditLog:
    def __init__(
        self, folder: Path, segment_bytes: int = 1 << 20, max_bytes: int = 64 << 20, max_age_days: float = 365.0
    ) -> None:
        self.folder = folder
        self.segment_bytes = segment_bytes
        self.max_bytes = max_bytes
        self.max_age_s = max_age_days * 86400.0
        self._lock = threading.Lock()
        self.failures = 0
        self.last_error: str | None = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeError(f"audit log folder {folder} cannot be created: {exc.strerror or exc}") from None
        self.head = self._recover()

    def health(self) -> AuditHealth:
        return AuditHealth(self.head, self.failures, self.last_error)

    # -- start-up: find the head, cut a torn last line ---------------------------------------
    def _recover(self) -> Head:
        segs = _segments(self.folder)
        if not segs:
            return Head(0, GENESIS)
        last = segs[-1]
        data = last.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # what follows the last newline: empty unless a write was cut
        head: Head | None = None
        for raw in reversed(lines):
            try:
                record = json.loads(raw)
                head = Head(int(record["seq"]), str(record["hash"]))
                break
            except (ValueError, KeyError, TypeError):
                continue  # a corrupt line: verify names it; the chain goes on from the last good one
        if head is None:
            head = self._head_before(segs[:-1])
        if torn:
            with open(last, "r+b") as f:
                f.truncate(len(data) - len(torn))
                os.fsync(f.fileno())
            log.warning("audit log %s: a record cut by a crash (%d bytes) was removed", last, len(torn))
            self.head = head
            self.append("recovered", {"file": last.name, "torn_bytes": len(torn)})
            return self.head
        return head

    def _head_before(self, segs: list[Path]) -> Head:
        for seg in reversed(segs):
            for raw in reversed(seg.read_bytes().split(b"\n")):
                try:
                    record = json.loads(raw)
                    return Head(int(record["seq"]), str(record["hash"]))
                except (ValueError, KeyError, TypeError):
                    continue
        return Head(0, GENESIS)

    # -- appending ----------------------------------------------------------------------------
    def append(self, kind: str, data: dict[str, Any]) -> Head:
        """Write one record durably; EdgeError (and nothing half-written) when the disk refuses."""
        with self._lock:
            seq = self.head.records + 1
            ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
            digest = _digest(self.head.hash, seq, ts, kind, data)
            line = (
                json.dumps(
                    {"seq": seq, "ts": ts, "kind": kind, "data": data, "prev": self.head.hash, "hash": digest},
                    sort_keys=True,
                    separators=(",", ":"),
                ).encode()
                + b"\n"
            )
            path = self._current(len(line))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            except OSError as exc:
                return self._failed(f"audit log {path} cannot be opened: {exc.strerror or exc}")
            try:
                size = os.fstat(fd).st_size
                try:
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(28, "short write")
                    os.fsync(fd)
                except OSError as exc:
                    with contextlib.suppress(OSError):  # undo to the last whole record
                        os.ftruncate(fd, size)
                    return self._failed(f"audit log {path}: record not written: {exc.strerror or exc}")
            finally:
                os.close(fd)
            self.head = Head(seq, digest)
            self.last_error = None
            return self.head

    def _failed(self, message: str) -> Head:
        self.failures += 1
        self.last_error = message
        raise EdgeError(message)

    def _current(self, adding: int) -> Path:
        """The segment to append to, rotating (and pruning) when it is full."""
        segs = _segments(self.folder)
        if segs:
            try:
                full = segs[-1].stat().st_size + adding > self.segment_bytes and segs[-1].stat().st_size > 0
            except OSError:
                full = False
            if not full:
                return segs[-1]
            number = int(segs[-1].stem[len(PREFIX) :]) + 1
        else:
            number = 1
        path = self.folder / f"{PREFIX}{number:06d}{SUFFIX}"
        self._prune([*segs, path])
        return path

    def _prune(self, segs: list[Path]) -> None:
        """Delete the oldest segments beyond the size and age bounds (never the newest two)."""
        now = time.time()
        total = sum(p.stat().st_size for p in segs if p.exists())
        for old in segs[:-2]:
            try:
                st = old.stat()
            except OSError:
                continue
            if total <= self.max_bytes and now - st.st_mtime <= self.max_age_s:
                break
            old.unlink()
            total -= st.st_size
            log.info(
                "audit log: %s rotated out (bounds: %d bytes, %.0f days)",
                old.name,
                self.max_bytes,
                self.max_age_s / 86400,
            )


# -- reading and verifying ---------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    ok: bool
    records: int  # records checked
    first_seq: int
    head: Head
    message: str
    torn_tail: bool = False


def read_records(folder: Path) -> Iterator[tuple[Path, int, bytes]]:
    """(file, line number, raw line) of every record in order."""
    for seg in _segments(folder):
        for n, raw in enumerate(seg.read_bytes().split(b"\n"), start=1):
            yield seg, n, raw


def verify(folder: Path, head: str | None = None) -> Verdict:
    """Check every hash and link; the first broken record is named with what was found there."""
    if not folder.is_dir() or not _segments(folder):
        raise InputError(f"no audit log under {folder}")
    prev: str | None = None
    last = Head(0, GENESIS)
    first_seq, count, seen_head, torn = 0, 0, False, False
    entries = list(read_records(folder))
    final_seg = entries[-1][0] if entries else None
    present = set()  # every seq the log holds, to tell a removal from a reordering
    for _, _, raw in entries:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            present.add(int(json.loads(raw)["seq"]))
    for i, (seg, n, raw) in enumerate(entries):
        where = f"{seg.name} line {n}"
        if not raw:
            continue
        at_end = seg == final_seg and all(not r for _, _, r in entries[i + 1 :])
        try:
            record = json.loads(raw)
            seq, ts, kind, data = int(record["seq"]), str(record["ts"]), str(record["kind"]), record["data"]
            rprev, rhash = str(record["prev"]), str(record["hash"])
        except (ValueError, KeyError, TypeError):
            if at_end and not raw.endswith(b"}"):
                torn = True  # cut by a crash mid-write: not tampering
                break
            return Verdict(False, count, first_seq, last, f"record at {where} is not a valid record: {raw[:80]!r}")
        if _digest(rprev, seq, ts, kind, data) != rhash:
            return Verdict(
                False,
                count,
                first_seq,
                last,
                f"record {seq} ({where}) was altered: its content does not match its hash",
            )
        if prev is None:
            first_seq = seq
        elif rprev != prev or seq != last.records + 1:
            expected = last.records + 1
            if seq > expected:
                what = "reordered" if expected in present else "removed"
            elif seq == expected:
                what = "altered (its link to the previous record does not match)"
            else:
                what = "reordered or inserted"
            return Verdict(
                False,
                count,
                first_seq,
                last,
                f"record {seq} ({where}) does not follow record {last.records}: records {what} "
                f"(expected seq {last.records + 1} linked to {prev[:12]}…, found seq {seq} linked to {rprev[:12]}…)",
            )
        prev, last = rhash, Head(seq, rhash)
        count += 1
        seen_head = seen_head or (head is not None and rhash == head)
    if head is not None and not seen_head:
        return Verdict(
            False,
            count,
            first_seq,
            last,
            f"head {head[:16]}… is not in the chain: the log was cut or rewritten after it was recorded",
        )
    start = "" if first_seq <= 1 else f" (from record {first_seq}: earlier ones rotated out)"
    tail = "; the last record was cut by a crash (not tampering)" if torn else ""
    return Verdict(True, count, first_seq, last, f"{count} records, chain intact{start}, head {last.hash}{tail}", torn)


def records_since(folder: Path, since: datetime | None = None) -> list[dict[str, Any]]:
    out = []
    for _, _, raw in read_records(folder):
        if not raw:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if since is not None and datetime.fromisoformat(str(record["ts"])) < since:
            continue
        out.append(record)
    return out
