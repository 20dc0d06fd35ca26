"""Bundles larger than one MQTT message: split by the publisher, reassembled on the
device before any verification.

A bundle that fits goes to its topic as it is. A larger one goes as parts on
``<topic>/part/<i>`` and a pointer on ``<topic>``; each part and the pointer name
the whole bundle's sha256, part count and size. The device assembles the parts
of the bundle the pointer names, checks the sha256, and hands the bytes to the
same checks as any bundle (the Ed25519 signature covers the whole). Stray or
stale parts (another sha256) are ignored; memory is bounded by the bundle limit.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from dataclasses import dataclass, field

from edge.gallery.bundle import BundleError

PART = b"EDGEPRT1"
POINTER = b"EDGEPTR1"


def _frame(magic: bytes, meta: dict[str, object], data: bytes = b"") -> bytes:
    m = json.dumps(meta, separators=(",", ":")).encode()
    return magic + struct.pack("<I", len(m)) + m + data


def _unframe(payload: bytes) -> tuple[bytes, dict[str, object], bytes] | None:
    if len(payload) < 12 or payload[:8] not in (PART, POINTER):
        return None
    try:
        (n,) = struct.unpack_from("<I", payload, 8)
        meta = json.loads(payload[12 : 12 + n])
    except (struct.error, ValueError):
        return None
    return (payload[:8], meta, payload[12 + n :]) if isinstance(meta, dict) else None


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
    meta = {"sha256": sha, "count": count, "bytes": len(bundle)}
    parts = [
        (f"/part/{i}", _frame(PART, {**meta, "index": i}, bundle[i * size : (i + 1) * size])) for i in range(count)
    ]
    return [*parts, ("", _frame(POINTER, meta))]


@dataclass
class _Pending:
    count: int
    size: int
    parts: dict[int, bytes] = field(default_factory=dict)


class Assembler:
    """Feed every message of a gallery topic (and its parts); get whole bundles out."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._wanted: str | None = None

    def feed(self, payload: bytes) -> bytes | None:
        """A complete bundle when this message completes one (or is one), else None."""
        framed = _unframe(payload)
        if framed is None:
            return payload  # a whole bundle (or garbage, for the verifier to name)
        magic, meta, data = framed
        try:
            sha, count, size = str(meta["sha256"]), int(str(meta["count"])), int(str(meta["bytes"]))
        except (KeyError, ValueError):
            return None
        if size > self.max_bytes or count < 1:
            return None
        with self._lock:
            pend = self._pending.get(sha)
            if pend is None:
                # Bounded: keep the bundle being assembled and at most one other.
                if len(self._pending) >= 2:
                    for old in [k for k in self._pending if k != self._wanted][:1]:
                        del self._pending[old]
                pend = self._pending[sha] = _Pending(count, size)
            if magic == POINTER:
                self._wanted = sha
            else:
                try:
                    pend.parts[int(str(meta["index"]))] = data
                except (KeyError, ValueError):
                    return None
            if self._wanted != sha or len(pend.parts) != pend.count:
                return None
            whole = b"".join(pend.parts[i] for i in range(pend.count) if i in pend.parts)
            del self._pending[sha]
        if len(whole) != size or hashlib.sha256(whole).hexdigest() != sha:
            raise BundleError("parse", f"reassembled {count} parts do not match their sha256 {sha[:16]}")
        return whole
