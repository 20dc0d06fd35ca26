"""Signed gallery bundles: a self-describing, versioned binary, Ed25519-signed over
its exact bytes.

Layout (all integers little-endian)::

    b"EDGEGAL1"                     magic and format version 1
    u32 header length, header       JSON: format, gallery, version, kind, created_at,
                                    embedder_sha256, identities, embeddings, dim, dtype
    u32 index length, index         JSON list: {id, label, count, meta} per identity
    embeddings                      (embeddings × dim) float16, or int8 + float16 row scales
    32 bytes signer public key id   sha256 of the raw public key
    64 bytes Ed25519 signature      over every byte before the key id

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
    rows = [i.embeddings.reshape(-1, dim) for i in identities]
    mat = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
    header = {
        "format": 1, "gallery": gallery, "version": int(version), "kind": kind,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "embedder_sha256": embedder_sha256, "identities": len(identities), "embeddings": len(mat),
        "dim": dim, "dtype": dtype,
    }  # fmt: skip
    index = [
        {"id": i.id, "label": i.label, "count": len(r), "meta": i.meta} for i, r in zip(identities, rows, strict=True)
    ]
    if dtype == "float16":
        body = mat.astype("<f2").tobytes()
    else:
        scale = np.maximum(np.abs(mat).max(axis=1, keepdims=True), 1e-12) / 127.0
        body = np.round(mat / scale).astype(np.int8).tobytes() + scale.astype("<f2").tobytes()
    h = json.dumps(header, separators=(",", ":")).encode()
    ix = json.dumps(index, separators=(",", ":")).encode()
    payload = MAGIC + struct.pack("<I", len(h)) + h + struct.pack("<I", len(ix)) + ix + body
    return payload + key_id(key.public_key()) + key.sign(payload)


def verify_signature(data: bytes, trusted: list[Ed25519PublicKey]) -> tuple[bytes, str]:
    """The signed payload, if one of ``trusted`` signed it; else BundleError('signature')."""
    if len(data) < len(MAGIC) + 8 + KEYID_LEN + SIG_LEN or not data.startswith(MAGIC):
        raise BundleError("parse", "not a gallery bundle (bad magic or too short)")
    payload, kid, sig = data[: -KEYID_LEN - SIG_LEN], data[-KEYID_LEN - SIG_LEN : -SIG_LEN], data[-SIG_LEN:]
    for pub in trusted:
        if key_id(pub) == kid:
            try:
                pub.verify(sig, payload)
            except InvalidSignature:
                raise BundleError("signature", "signature does not match the content (altered or corrupt)") from None
            return payload, kid.hex()[:16]
    raise BundleError("signature", f"signed by key {kid.hex()[:16]}, which is not trusted")


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


def parse(payload: bytes, signer: str = "") -> Bundle:
    """Decode a verified payload, checking every count and size against the header."""
    try:
        header = read_header(payload)
        (hlen,) = struct.unpack_from("<I", payload, len(MAGIC))
        off = len(MAGIC) + 4 + hlen
        (ilen,) = struct.unpack_from("<I", payload, off)
        index = json.loads(payload[off + 4 : off + 4 + ilen])
        off += 4 + ilen
        n, dim, dtype = int(header["embeddings"]), int(header["dim"]), header["dtype"]
        if dtype == "float16":
            need = n * dim * 2
            mat = np.frombuffer(payload, "<f2", n * dim, off).reshape(n, dim).astype(np.float32)
        elif dtype == "int8":
            need = n * dim + n * 2
            q = np.frombuffer(payload, np.int8, n * dim, off).reshape(n, dim).astype(np.float32)
            scale = np.frombuffer(payload, "<f2", n, off + n * dim).astype(np.float32)[:, None]
            mat = q * scale
        else:
            raise ValueError(f"unknown dtype {dtype!r}")
        if off + need != len(payload):
            raise ValueError(f"body is {len(payload) - off} bytes, header implies {need}")
        if len(index) != int(header["identities"]) or sum(int(e["count"]) for e in index) != n:
            raise ValueError("identity index does not match the header counts")
        if header["kind"] not in ("full", "removal", "rollback"):
            raise ValueError(f"unknown kind {header['kind']!r}")
        if not np.all(np.isfinite(mat)):
            raise ValueError("embeddings contain NaN or infinity")
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        if n and (norms.min() < 0.5):
            raise ValueError("embeddings are not unit vectors")
        mat /= np.maximum(norms, 1e-12)
        ids, start, out = set(), 0, []
        for e in index:
            ident = str(e["id"])
            if ident in ids:
                raise ValueError(f"identity {ident!r} appears twice")
            ids.add(ident)
            k = int(e["count"])
            out.append(
                Identity(
                    ident,
                    e.get("label"),
                    mat[start : start + k],
                    {str(a): str(b) for a, b in (e.get("meta") or {}).items()},
                )
            )
            start += k
        return Bundle(str(header["gallery"]), int(header["version"]), header["kind"], str(header["created_at"]),
                      str(header["embedder_sha256"]), tuple(out), signer)  # fmt: skip
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
