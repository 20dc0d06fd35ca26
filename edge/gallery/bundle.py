"""Signed gallery bundles: a self-describing, versioned binary, signed with Ed25519.

Layout (all integers little-endian)::

    b"EDGEGAL1"                     magic and format version 1
    u32 header length, header       JSON: format, gallery, version, kind, created_at,
                                    embedder_sha256, identities, embeddings, dim, dtype
    u32 index length, index         JSON list: {id, label, count, meta, sha256} per identity
    32 bytes signer public key id   sha256 of the raw public key
    64 bytes Ed25519 signature      over every byte before the key id (the "head")
    body                            one block per identity, in index order: its rows as
                                    float16, or as int8 followed by float16 row scales

The signature covers the head; each identity's block is bound to it by the sha256
in its index entry, so every byte is authenticated. That split is what lets a
device honour a signed *removal*: it zeroes the removed identities' blocks on disk
(the embeddings are really gone) and the stored bundle still verifies, the zeroed
blocks being excused by the stored removal bundle that names them.

``kind`` is ``full`` (a whole gallery), ``removal`` (identities to drop at once:
index entries with count 0) or ``rollback`` (a full gallery explicitly allowed to
carry a lower version). Photos are never stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.errors import InputError
from edge.types import FloatArray

MAGIC = b"EDGEGAL1"
SIG_LEN = 64
KEYID_LEN = 32
Kind = Literal["full", "removal", "rollback"]
Dtype = Literal["float16", "int8"]


class BundleError(InputError):
    """A bundle failed a check; ``step`` names which (size, signature, version, model, parse)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"gallery bundle rejected at {step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class Identity:
    id: str
    label: str | None
    embeddings: FloatArray  # (k, dim), unit rows; k = 0 in a removal
    meta: dict[str, str]


@dataclass(frozen=True)
class Bundle:
    gallery: str
    version: int
    kind: Kind
    created_at: str
    embedder_sha256: str
    identities: tuple[Identity, ...]
    signer: str  # hex key id


def key_id(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()


def _block(rows: np.ndarray, dtype: Dtype) -> bytes:
    if dtype == "float16":
        return rows.astype("<f2").tobytes()
    scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-12) / 127.0
    return bytes(np.round(rows / scale).astype(np.int8).tobytes() + scale.astype("<f2").tobytes())


def _block_size(count: int, dim: int, dtype: str) -> int:
    return count * dim * 2 if dtype == "float16" else count * (dim + 2)


def encode(
    identities: list[Identity],
    gallery: str,
    version: int,
    embedder_sha256: str,
    key: Ed25519PrivateKey,
    kind: Kind = "full",
    dtype: Dtype = "float16",
) -> bytes:
    dim = next((int(i.embeddings.shape[1]) for i in identities if i.embeddings.size), 192)
    blocks = [_block(i.embeddings.reshape(-1, dim).astype(np.float32), dtype) for i in identities]
    counts = [int(i.embeddings.reshape(-1, dim).shape[0]) for i in identities]
    header = {
        "format": 1, "gallery": gallery, "version": int(version), "kind": kind,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "embedder_sha256": embedder_sha256, "identities": len(identities), "embeddings": sum(counts),
        "dim": dim, "dtype": dtype,
    }  # fmt: skip
    index = [
        {"id": i.id, "label": i.label, "count": c, "meta": i.meta, "sha256": hashlib.sha256(blk).hexdigest()}
        for i, c, blk in zip(identities, counts, blocks, strict=True)
    ]
    h = json.dumps(header, separators=(",", ":")).encode()
    ix = json.dumps(index, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<I", len(h)) + h + struct.pack("<I", len(ix)) + ix
    return head + key_id(key.public_key()) + key.sign(head) + b"".join(blocks)


def _head_length(data: bytes) -> int:
    try:
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        (ilen,) = struct.unpack_from("<I", data, len(MAGIC) + 4 + hlen)
    except struct.error:
        raise BundleError("parse", "truncated before the end of the header") from None
    end = int(len(MAGIC) + 8 + hlen + ilen)
    if end + KEYID_LEN + SIG_LEN > len(data):
        raise BundleError("parse", "truncated before the signature")
    return end


@dataclass(frozen=True)
class Signed:
    head: bytes
    body: bytes
    signer: str


def verify_signature(data: bytes, trusted: list[Ed25519PublicKey]) -> Signed:
    """Head and body, if one of ``trusted`` signed the head; else BundleError('signature')."""
    if len(data) < len(MAGIC) + 8 + KEYID_LEN + SIG_LEN or not data.startswith(MAGIC):
        raise BundleError("parse", "not a gallery bundle (bad magic or too short)")
    end = _head_length(data)
    head, kid, sig = data[:end], data[end : end + KEYID_LEN], data[end + KEYID_LEN : end + KEYID_LEN + SIG_LEN]
    for pub in trusted:
        if key_id(pub) == kid:
            try:
                pub.verify(sig, head)
            except InvalidSignature:
                raise BundleError("signature", "signature does not match the content (altered or corrupt)") from None
            return Signed(head, data[end + KEYID_LEN + SIG_LEN :], kid.hex()[:16])
    raise BundleError("signature", f"signed by key {kid.hex()[:16]}, which is not trusted")


def _header_and_index(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header = read_header(data)
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    off = len(MAGIC) + 4 + hlen
    (ilen,) = struct.unpack_from("<I", data, off)
    index = json.loads(data[off + 4 : off + 4 + ilen])
    if not isinstance(index, list):
        raise ValueError("identity index is not a list")
    return header, index


def redact(data: bytes, ids: set[str]) -> bytes:
    """The same bundle with the embedding blocks of ``ids`` overwritten with zeros."""
    end = _head_length(data)
    header, index = _header_and_index(data)
    out = bytearray(data)
    off = end + KEYID_LEN + SIG_LEN
    for e in index:
        size = _block_size(int(e["count"]), int(header["dim"]), str(header["dtype"]))
        if e["id"] in ids:
            out[off : off + size] = bytes(size)
        off += size
    return bytes(out)


def read_header(data: bytes) -> dict[str, Any]:
    """The header, unverified (for ``inspect`` and early checks)."""
    try:
        (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
        header: dict[str, Any] = json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + hlen])
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise BundleError("parse", f"unreadable header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != 1:
        raise BundleError(
            "parse", f"unsupported bundle format {header.get('format') if isinstance(header, dict) else '?'}"
        )
    return header


def parse(signed: Signed, redacted: frozenset[str] = frozenset()) -> Bundle:
    """Decode a verified bundle, checking every count, size and block digest.

    A block that fails its digest is an error unless its identity is in
    ``redacted`` (removed by a verified removal bundle); such identities are left out.
    """
    try:
        header, index = _header_and_index(signed.head)
        body = signed.body
        dim, dtype = int(header["dim"]), str(header["dtype"])
        if dtype not in ("float16", "int8"):
            raise ValueError(f"unknown dtype {dtype!r}")
        if header["kind"] not in ("full", "removal", "rollback"):
            raise ValueError(f"unknown kind {header['kind']!r}")
        if len(index) != int(header["identities"]) or sum(int(e["count"]) for e in index) != int(header["embeddings"]):
            raise ValueError("identity index does not match the header counts")
        need = sum(_block_size(int(e["count"]), dim, dtype) for e in index)
        if need != len(body):
            raise BundleError(
                "signature", f"body is {len(body)} bytes, the signed index implies {need} (truncated or padded)"
            )
        ids: set[str] = set()
        out, pos = [], 0
        for e in index:
            ident, k = str(e["id"]), int(e["count"])
            if ident in ids:
                raise ValueError(f"identity {ident!r} appears twice")
            ids.add(ident)
            size = _block_size(k, dim, dtype)
            block = body[pos : pos + size]
            pos += size
            if hashlib.sha256(block).hexdigest() != e["sha256"]:
                if ident in redacted:
                    continue
                raise BundleError("signature", f"embeddings of {ident!r} do not match their signed digest (altered)")
            if dtype == "float16":
                mat = np.frombuffer(block, "<f2").reshape(k, dim).astype(np.float32)
            else:
                q = np.frombuffer(block, np.int8, k * dim).reshape(k, dim).astype(np.float32)
                mat = q * np.frombuffer(block, "<f2", k, k * dim).astype(np.float32)[:, None]
            if not np.all(np.isfinite(mat)):
                raise ValueError(f"embeddings of {ident!r} contain NaN or infinity")
            norms = np.linalg.norm(mat, axis=1, keepdims=True)
            if k and norms.min() < 0.5:
                raise ValueError(f"embeddings of {ident!r} are not unit vectors")
            meta = {str(a): str(b) for a, b in (e.get("meta") or {}).items()}
            out.append(Identity(ident, e.get("label"), mat / np.maximum(norms, 1e-12), meta))
        return Bundle(str(header["gallery"]), int(header["version"]), header["kind"], str(header["created_at"]),
                      str(header["embedder_sha256"]), tuple(out), signed.signer)  # fmt: skip
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise BundleError("parse", str(exc)) from None


# -- keys -----------------------------------------------------------------------------
def generate_key(out: Path) -> Ed25519PublicKey:
    """Private key PEM at ``out`` (mode 0600, never overwritten), public key at ``out``.pub."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{out} exists; refusing to overwrite a signing key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key()
    Path(f"{out}.pub").write_bytes(
        pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pub


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise InputError(f"signing key {path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"signing key {path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"signing key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise InputError(f"public key {path} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"public key {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"public key {path} is not an Ed25519 key")
    return key
