"""Bundles larger than one MQTT message: split by the publisher, reassembled on the
device before any verification, in bounded memory.

A bundle that fits goes to its topic as it is. A larger one goes as parts on
``<topic>/part/<i>`` and a pointer on ``<topic>``; each part and the pointer name
the whole bundle's sha256, size, part count and part size. The device writes each
part into one buffer of the declared size (never more than ``max_bytes``, never
more than the parts can fill), checks the sha256 when every part is in, and hands
the buffer to the same checks as any bundle (the Ed25519 signature covers the whole).

Bounds: the bundles being assembled together declare at most ``max_bytes``; a part
whose index, length or offset does not fit its declaration is refused with the
reason; a partial bundle with no new part for ``timeout_s`` is dropped. So memory
is bounded by what was declared and allowed, whatever arrives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from edge.gallery.bundle import BundleError

log = logging.getLogger(__name__)
PART = b"EDGEPRT1"
POINTER = b"EDGEPTR1"
MAX_META = 1024


def _frame(magic: bytes, meta: dict[str, object], data: bytes = b"") -> bytes:
    m = json.dumps(meta, separators=(",", ":")).encode()
    return magic + struct.pack("<I", len(m)) + m + data


def base_topic(topic: str) -> str:
    """``a/b/part/3`` → ``a/b``; other topics unchanged."""
    head, sep, tail = topic.rpartition("/part/")
    return head if sep and tail.isdigit() else topic


def split(bundle: bytes, max_message: int) -> list[tuple[str, bytes]]:
    """(topic suffix, payload) to publish, in order: parts first, the pointer last."""
    if len(bundle) <= max_message:
        return [("", bundle)]
    size = max(1024, max_message - 256)
    sha = hashlib.sha256(bundle).hexdigest()
    count = (len(bundle) + size - 1) // size
    meta = {"sha256": sha, "count": count, "bytes": len(bundle), "part_bytes": size}
    parts = [
        (f"/part/{i}", _frame(PART, {**meta, "index": i}, bundle[i * size : (i + 1) * size])) for i in range(count)
    ]
    return [*parts, ("", _frame(POINTER, meta))]


@dataclass(frozen=True, slots=True)
class Declared:
    """What a part or pointer says about the whole bundle, checked for consistency."""

    sha256: str
    size: int
    count: int
    part_bytes: int

    def part_length(self, index: int) -> int:
        return self.part_bytes if index < self.count - 1 else self.size - self.part_bytes * (self.count - 1)


def _int(meta: dict[str, Any], key: str) -> int:
    value = meta.get(key)
    if type(value) is not int:
        raise BundleError("parse", f"part metadata '{key}' is not an integer")
    return value


def _declared(meta: dict[str, Any], max_bytes: int) -> Declared:
    sha = meta.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BundleError("parse", "part metadata has no valid sha256")
    size, count = _int(meta, "bytes"), _int(meta, "count")
    if "part_bytes" not in meta:
        raise BundleError("parse", "part metadata has no part_bytes (published by an older edge gallery publish?)")
    part = _int(meta, "part_bytes")
    if not 0 < size <= max_bytes:
        raise BundleError("size", f"declared bundle of {size} bytes exceeds the limit of {max_bytes}")
    if part < 1 or count < 1 or count != -(-size // part):
        raise BundleError("parse", f"{count} parts of {part} bytes cannot make {size} bytes")
    return Declared(sha, size, count, part)


def unframe(payload: bytes) -> tuple[bytes, dict[str, Any], memoryview] | None:
    """(magic, metadata, data) of a part or pointer; None for anything else (a whole bundle)."""
    if len(payload) < 12 or payload[:8] not in (PART, POINTER):
        return None
    (n,) = struct.unpack_from("<I", payload, 8)
    if n > MAX_META or 12 + n > len(payload):
        raise BundleError("parse", f"part metadata of {n} bytes (limit {MAX_META})")
    try:
        meta = json.loads(payload[12 : 12 + n])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BundleError("parse", "part metadata is not JSON") from None
    if not isinstance(meta, dict):
        raise BundleError("parse", "part metadata is not a JSON object")
    return payload[:8], meta, memoryview(payload)[12 + n :]


@dataclass
class _Pending:
    declared: Declared
    buffer: bytearray
    have: set[int] = field(default_factory=set)
    touched: float = field(default_factory=time.monotonic)


class Assembler:
    """Feed every message of a gallery topic (and its parts); get whole bundles out."""

    def __init__(self, max_bytes: int, timeout_s: float = 300.0) -> None:
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._wanted: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for bundles being assembled (the declared sizes)."""
        with self._lock:
            return sum(len(p.buffer) for p in self._pending.values())

    def expire(self, now: float | None = None) -> list[str]:
        """Drop partial bundles with no new part for ``timeout_s``; returns their sha256 prefixes."""
        now = time.monotonic() if now is None else now
        with self._lock:
            stale = [sha for sha, p in self._pending.items() if now - p.touched > self.timeout_s]
            for sha in stale:
                del self._pending[sha]
                if self._wanted == sha:
                    self._wanted = None
        for sha in stale:
            log.warning("gallery: partial bundle %s dropped (no part for %.0fs)", sha[:16], self.timeout_s)
        return [s[:16] for s in stale]

    def feed(self, payload: bytes) -> bytes | memoryview | None:
        """A complete bundle when this message completes one (or is one), else None.

        Raises BundleError (with the reason) for a part that does not fit its declaration."""
        framed = unframe(payload)
        if framed is None:
            return payload  # a whole bundle (or garbage, for the checks to name)
        magic, meta, data = framed
        decl = _declared(meta, self.max_bytes)
        self.expire()
        with self._lock:
            pend = self._pending.get(decl.sha256)
            if pend is not None and pend.declared != decl:
                raise BundleError("parse", f"part of {decl.sha256[:16]} contradicts the earlier declaration")
            if pend is None:
                pend = self._make_room(decl)
            pend.touched = time.monotonic()
            if magic == POINTER:
                self._wanted = decl.sha256
            else:
                index = _int(meta, "index")
                if not 0 <= index < decl.count:
                    raise BundleError("parse", f"part index {index} outside 0..{decl.count - 1}")
                if len(data) != decl.part_length(index):
                    raise BundleError("parse", f"part {index} is {len(data)} bytes, {decl.part_length(index)} declared")
                start = index * decl.part_bytes
                pend.buffer[start : start + len(data)] = data
                pend.have.add(index)
            if self._wanted != decl.sha256 or len(pend.have) != decl.count:
                return None
            del self._pending[decl.sha256]
            self._wanted = None
        if hashlib.sha256(pend.buffer).hexdigest() != decl.sha256:
            raise BundleError("parse", f"reassembled {decl.count} parts do not match their sha256 {decl.sha256[:16]}")
        return memoryview(pend.buffer)

    def _make_room(self, decl: Declared) -> _Pending:
        """A buffer for a new bundle, evicting others so that all declared sizes fit in ``max_bytes``."""
        total = sum(len(p.buffer) for p in self._pending.values())
        for sha in sorted(self._pending, key=lambda s: (s == self._wanted, self._pending[s].touched)):
            if total + decl.size <= self.max_bytes:
                break
            total -= len(self._pending.pop(sha).buffer)
            log.warning("gallery: partial bundle %s dropped to make room for %s", sha[:16], decl.sha256[:16])
            if self._wanted == sha:
                self._wanted = None
        pend = _Pending(decl, bytearray(decl.size))
        self._pending[decl.sha256] = pend
        return pend
