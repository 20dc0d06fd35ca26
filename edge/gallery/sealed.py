"""Sealed gallery bundles (format 2): the identities encrypted to the devices they are for, then signed.

Layout (all integers little-endian)::

    b"EDGEGAL2"                   magic and format version 2
    u32 header length, header     JSON, in the clear: what routing and replay protection need and no more:
                                  format, gallery, version, kind, created_at, embedder_sha256, embedder,
                                  suite, recipients (the key ids, hex, of the devices that can open it)
    u32 recipients length         one 112-byte block per recipient, in the header's order:
    recipients                    32-byte key id | HPKE (RFC 9180) of the content key to that device's
                                  X25519 key: 32-byte encapsulated key, 32-byte key + 16-byte tag
    u32 content length, content   12-byte nonce | AES-256-GCM under the content key, the header as
                                  associated data, of: u32 length, layout JSON (identities, embeddings, dim,
                                  dtype) | u32 length, index JSON (id, label, count, meta, sha256 per
                                  identity) | the identities' blocks (as in format 1)
    32 bytes signer key id        sha256 of the publisher's raw Ed25519 public key
    64 bytes Ed25519 signature    over every byte before the key id

The signature covers the whole envelope and is checked before anything is decrypted (``admit.py``); HPKE
binds each wrapped content key to the header (its sha256 is the HPKE ``info``), and the content's tag binds
it to the header too. One content key per bundle: a further recipient costs one 112-byte block.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import Field, ValidationError

from edge.device import keys
from edge.gallery.bundle import (
    INDEX,
    KEYID_LEN,
    MAX_HEADER,
    SIG_LEN,
    Buffer,
    BundleError,
    Dtype,
    Hex64,
    Identity,
    IndexEntry,
    Kind,
    Layout,
    Routing,
    clear_header,
    content,
    first_error,
    json_of,
    key_id,
    parse_blocks,
    routing,
    signed_by,
)

MAGIC = b"EDGEGAL2"
SUITE_NAME = "X25519-HKDF-SHA256/AES-256-GCM"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_INFO = b"edge gallery content key v2 "
WRAPPED_LEN = 32 + 32 + 16  # encapsulated key, content key, tag
RECIPIENT_LEN = KEYID_LEN + WRAPPED_LEN
NONCE_LEN = 12
MAX_RECIPIENTS = 10_000


class SealedHeader(Routing):
    """The clear header of a sealed bundle (format 2), every field checked for type and range."""

    format: Literal[2]
    suite: Literal["X25519-HKDF-SHA256/AES-256-GCM"]
    recipients: list[Hex64] = Field(min_length=1, max_length=MAX_RECIPIENTS)


@dataclass(frozen=True, slots=True)
class SealedFraming:
    header: tuple[int, int]
    recipients: tuple[int, int]
    content: tuple[int, int]

    @property
    def head_end(self) -> int:
        return self.content[1]


def is_sealed(data: Buffer) -> bool:
    return bytes(memoryview(data)[: len(MAGIC)]) == MAGIC


def seal(
    identities: list[Identity],
    gallery: str,
    version: int,
    embedder_sha256: str,
    key: Ed25519PrivateKey,
    recipients: list[X25519PublicKey],
    kind: Kind = "full",
    dtype: Dtype = "float16",
    embedder: str | None = None,
) -> bytes:
    """A bundle only ``recipients`` can open, signed by ``key``."""
    if not recipients:
        raise ValueError("a sealed bundle needs at least one recipient")
    ids = [keys.key_id(r) for r in recipients]
    if len(set(ids)) != len(ids):
        raise ValueError("the same recipient key is given twice")
    header = {
        "format": 2,
        **routing(gallery, version, kind, embedder_sha256, embedder),
        "suite": SUITE_NAME,
        "recipients": [i.hex() for i in ids],
    }
    h = json.dumps(header, separators=(",", ":")).encode()
    cek = AESGCM.generate_key(bit_length=256)
    info = _INFO + hashlib.sha256(h).digest()
    wrapped = b"".join(i + _SUITE.encrypt(cek, r, info=info) for i, r in zip(ids, recipients, strict=True))
    layout, index, body = content(identities, dtype)
    lx = json.dumps(layout, separators=(",", ":")).encode()
    ix = json.dumps(index, separators=(",", ":")).encode()
    plain = struct.pack("<I", len(lx)) + lx + struct.pack("<I", len(ix)) + ix + body
    nonce = os.urandom(NONCE_LEN)
    sealed = nonce + AESGCM(cek).encrypt(nonce, plain, h)
    head = (
        MAGIC
        + struct.pack("<I", len(h))
        + h
        + struct.pack("<I", len(wrapped))
        + wrapped
        + struct.pack("<I", len(sealed))
        + sealed
    )
    return head + key_id(key.public_key()) + key.sign(head)


def frame(data: Buffer) -> SealedFraming:
    """Where the parts lie, from the magic and three length fields only."""
    view = memoryview(data)
    if len(view) < len(MAGIC) + 12 + KEYID_LEN + SIG_LEN or bytes(view[: len(MAGIC)]) != MAGIC:
        raise BundleError("parse", "not a sealed gallery bundle (bad magic or too short)")
    parts, pos = [], len(MAGIC)
    for what, limit in (("header", MAX_HEADER), ("recipients", RECIPIENT_LEN * MAX_RECIPIENTS), ("content", None)):
        if pos + 4 > len(view):
            raise BundleError("parse", f"truncated before the {what}")
        (n,) = struct.unpack_from("<I", view, pos)
        if limit is not None and n > limit:
            raise BundleError("parse", f"{what} length {n} exceeds {limit} bytes")
        parts.append((pos + 4, pos + 4 + n))
        pos += 4 + n
    if pos + KEYID_LEN + SIG_LEN != len(view):
        raise BundleError(
            "parse", f"{len(view)} bytes, the lengths inside imply {pos + KEYID_LEN + SIG_LEN} (truncated or padded)"
        )
    return SealedFraming(parts[0], parts[1], parts[2])


@dataclass(frozen=True)
class Verified:
    """A sealed bundle whose signature a trusted key made, and its clear header (checked)."""

    data: memoryview
    framing: SealedFraming
    header: SealedHeader
    signer: str

    @property
    def header_bytes(self) -> bytes:
        return bytes(self.data[self.framing.header[0] : self.framing.header[1]])


def verify(data: Buffer, trusted: list[Ed25519PublicKey]) -> Verified:
    """Signature first (over the whole envelope), then the clear header; BundleError naming the step."""
    f = frame(data)
    view = memoryview(data)
    signer = signed_by(view, f.head_end, trusted)
    raw = json_of(view[f.header[0] : f.header[1]], "header")
    try:
        header = SealedHeader.model_validate(raw)
    except ValidationError as exc:
        raise BundleError("parse", f"header {first_error(exc)}") from None
    return Verified(view, f, header, signer)


def peek(data: Buffer) -> dict[str, Any]:
    """The clear header as written, NOT verified (``gallery inspect`` without keys shows only this)."""
    f = frame(data)
    return clear_header(data, f.header, f.head_end)


def _content_key(v: Verified, device: keys.DeviceKey) -> bytes:
    """The content key this device's block wraps; BundleError('recipient') when there is none for it or it
    does not open with this device's key."""
    block = v.data[v.framing.recipients[0] : v.framing.recipients[1]]
    listed = v.header.recipients
    if len(block) != RECIPIENT_LEN * len(listed):
        raise BundleError(
            "recipient",
            f"{len(block)} bytes of key blocks for {len(listed)} recipients (each is {RECIPIENT_LEN})",
            v.header.version,
        )
    if len(set(listed)) != len(listed):
        raise BundleError("recipient", "a recipient is listed twice", v.header.version)
    mine = device.key_id.hex()
    for n, kid in enumerate(listed):
        at = n * RECIPIENT_LEN
        if bytes(block[at : at + KEYID_LEN]).hex() != kid:
            raise BundleError(
                "recipient",
                f"key block {n + 1} is not the one the header lists there (swapped or altered blocks)",
                v.header.version,
            )
    if mine not in listed:
        raise BundleError(
            "recipient",
            f"this device (key {device.short_id}) is not among the bundle's {len(listed)} recipient"
            f"{'' if len(listed) == 1 else 's'}: it was encrypted for other devices",
            v.header.version,
        )
    at = listed.index(mine) * RECIPIENT_LEN + KEYID_LEN
    info = _INFO + hashlib.sha256(v.header_bytes).digest()
    try:
        cek = _SUITE.decrypt(bytes(block[at : at + WRAPPED_LEN]), device.private, info=info)
    except (InvalidTag, ValueError):
        raise BundleError(
            "recipient",
            f"the key block for this device (key {device.short_id}) does not open with "
            "its private key (a block made for another key, or altered)",
            v.header.version,
        ) from None
    return cek  # 32 bytes: a block's length is fixed, and only a 32-byte key fills it


def open_content(v: Verified, device: keys.DeviceKey) -> tuple[Identity, ...]:
    """The identities of a verified sealed bundle, decrypted with this device's key; BundleError naming the
    step (``recipient``: not for this device, ``decrypt``: the content does not open, ``parse``)."""
    cek = _content_key(v, device)
    sealed = v.data[v.framing.content[0] : v.framing.content[1]]
    if len(sealed) < NONCE_LEN + 16:
        raise BundleError("decrypt", f"content of {len(sealed)} bytes is too short (truncated)", v.header.version)
    try:
        plain = AESGCM(cek).decrypt(bytes(sealed[:NONCE_LEN]), bytes(sealed[NONCE_LEN:]), v.header_bytes)
    except InvalidTag:
        raise BundleError(
            "decrypt",
            "the content does not decrypt with its content key (wrong tag: altered, or not the key it was sealed with)",
            v.header.version,
        ) from None
    try:
        return inner_identities(memoryview(plain))
    except BundleError as exc:
        raise BundleError(exc.step, exc.reason, v.header.version) from None


def inner_identities(plain: memoryview, redacted: frozenset[str] = frozenset()) -> tuple[Identity, ...]:
    """Parse decrypted content: layout, index, blocks (each bound to the index by its digest)."""
    pos, parts = 0, []
    for what in ("layout", "identity index"):
        if pos + 4 > len(plain):
            raise BundleError("parse", f"content truncated before the {what}")
        (n,) = struct.unpack_from("<I", plain, pos)
        if pos + 4 + n > len(plain):
            raise BundleError("parse", f"content truncated inside the {what}")
        parts.append(json_of(plain[pos + 4 : pos + 4 + n], what))
        pos += 4 + n
    try:
        layout = Layout.model_validate(parts[0])
        index: list[IndexEntry] = INDEX.validate_python(parts[1])
    except ValidationError as exc:
        raise BundleError("parse", f"content {first_error(exc)}") from None
    return parse_blocks(plain[pos:], layout, index, redacted)


def recipients_of(data: Buffer) -> list[str]:
    """The recipient key ids (hex) a sealed bundle's clear header lists (unverified)."""
    head = peek(data)
    listed = head.get("recipients")
    return [str(x) for x in listed] if isinstance(listed, list) else []
