"""Signed gallery bundles: a self-describing, versioned binary, signed with Ed25519.

Layout (all integers little-endian)::

    b"EDGEGAL1"                     magic and format version 1
    u32 header length, header       JSON: format, gallery, version, kind, created_at,
                                    embedder_sha256, embedder (its name), identities,
                                    embeddings, dim, dtype
    u32 index length, index         JSON list: {id, label, count, meta, sha256} per identity
    32 bytes signer public key id   sha256 of the raw public key
    64 bytes Ed25519 signature      over every byte before the key id (the "head")
    body                            one block per identity, in index order: its rows as
                                    float16, or as int8 followed by float16 row scales

Only the magic and the two length fields are read before the signature is
verified (``frame``); the header and index are parsed afterwards, each field
checked for its type and range (a version that is a string or ``Infinity``, a
header nested 100,000 deep, are rejected with the step and reason, never raised).

The signature covers the head; each identity's block is bound to it by the sha256
in its index entry, so every byte is authenticated. (Devices of earlier releases kept
this format on disk and zeroed removed identities' blocks, excused by the stored
removal: ``parse_identities(redacted=...)`` still reads such a store once, when
``store.py`` moves it into the device's sealed store.)

``kind`` is ``full`` (a whole gallery), ``removal`` (identities to drop at once:
index entries with count 0) or ``rollback`` (a full gallery explicitly allowed to
carry a lower version). Photos are never stored.

Functions take any bytes-like buffer (``bytes``, ``bytearray``, ``memoryview``), so
a bundle reassembled from parts is checked without being copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from edge.errors import InputError
from edge.types import FloatArray

MAGIC = b"EDGEGAL1"
SIG_LEN = 64
KEYID_LEN = 32
MAX_HEADER = 64 << 10  # a real header is ~300 bytes
MAX_DIM = 4096
Kind = Literal["full", "removal", "rollback"]
Dtype = Literal["float16", "int8", "float32"]  # float32: a device's own store only
Buffer: TypeAlias = bytes | bytearray | memoryview
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
IDENTITY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


class BundleError(InputError):
    """A bundle failed a check; ``step`` names which (size, parse, signature, model, gallery, version, store)."""

    def __init__(self, step: str, reason: str, version: int | None = None) -> None:
        super().__init__(f"gallery bundle rejected at {step}: {reason}")
        self.step = step
        self.reason = reason
        self.version = version  # the rejected bundle's version, when read from a verified header


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
    signer: str  # hex key id (16 digits)
    recipients: tuple[str, ...] = ()  # a sealed bundle's recipient key ids (hex); () in the clear
    embedder: str | None = None  # the embedder's manifest name, when the header gives it


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Routing(Strict):
    """The header fields every format signs in the clear: which gallery, its version and kind, when, and for
    which embedder (what admission checks before it reads anything else)."""

    gallery: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    version: int = Field(ge=0, le=2**53)
    kind: Kind
    created_at: Annotated[str, StringConstraints(max_length=64)]
    embedder_sha256: Hex64
    embedder: Annotated[str, StringConstraints(pattern=NAME_PATTERN)] | None = None  # its manifest name (since SFace)


class Header(Routing):
    """The signed header of a bundle in the clear (format 1), every field checked for type and range."""

    format: Literal[1]
    identities: int = Field(ge=0, le=10_000_000)
    embeddings: int = Field(ge=0, le=100_000_000)
    dim: int = Field(ge=1, le=MAX_DIM)
    dtype: Dtype


class IndexEntry(Strict):
    id: Annotated[str, StringConstraints(pattern=IDENTITY_PATTERN)]
    label: Annotated[str, StringConstraints(max_length=256)] | None
    count: int = Field(ge=0, le=10_000)
    meta: dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=4096)]]
    sha256: Hex64


INDEX = TypeAdapter(list[IndexEntry])


def key_id(public: Ed25519PublicKey) -> bytes:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()


def _block(rows: np.ndarray, dtype: Dtype) -> bytes:
    if dtype == "float16":
        return rows.astype("<f2").tobytes()
    if dtype == "float32":
        return rows.astype("<f4").tobytes()
    scale = np.maximum(np.abs(rows).max(axis=1, keepdims=True), 1e-12) / 127.0
    return bytes(np.round(rows / scale).astype(np.int8).tobytes() + scale.astype("<f2").tobytes())


def block_size(count: int, dim: int, dtype: str) -> int:
    return count * dim * {"float16": 2, "float32": 4}[dtype] if dtype != "int8" else count * (dim + 2)


def content(identities: list[Identity], dtype: Dtype) -> tuple[dict[str, int | str], list[dict[str, Any]], bytes]:
    """What a bundle carries about its identities: the counts and layout (identities, embeddings, dim,
    dtype), the index (id, label, count, meta, sha256 of the block) and the blocks, in index order."""
    dim = next((int(i.embeddings.shape[1]) for i in identities if i.embeddings.size), 128)
    blocks = [_block(i.embeddings.reshape(-1, dim).astype(np.float32), dtype) for i in identities]
    counts = [int(i.embeddings.reshape(-1, dim).shape[0]) for i in identities]
    layout: dict[str, int | str] = {
        "identities": len(identities),
        "embeddings": sum(counts),
        "dim": dim,
        "dtype": dtype,
    }
    index = [
        {"id": i.id, "label": i.label, "count": c, "meta": i.meta, "sha256": hashlib.sha256(blk).hexdigest()}
        for i, c, blk in zip(identities, counts, blocks, strict=True)
    ]
    return layout, index, b"".join(blocks)


def routing(gallery: str, version: int, kind: Kind, embedder_sha256: str, embedder: str | None) -> dict[str, Any]:
    """The header fields every format carries: which gallery, its version and kind, when, for which embedder."""
    return {
        "gallery": gallery,
        "version": int(version),
        "kind": kind,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "embedder_sha256": embedder_sha256,
        **({"embedder": embedder} if embedder else {}),
    }


def encode(
    identities: list[Identity],
    gallery: str,
    version: int,
    embedder_sha256: str,
    key: Ed25519PrivateKey,
    kind: Kind = "full",
    dtype: Dtype = "float16",
    embedder: str | None = None,
) -> bytes:
    """A signed bundle in the clear (format 1); ``embedder`` (the manifest name of the embedder
    ``embedder_sha256`` is) travels in the header so that a device running another one can name both in its
    refusal. ``edge.gallery.sealed.seal`` makes the encrypted one devices accept by default."""
    layout, index, body = content(identities, dtype)
    header = {"format": 1, **routing(gallery, version, kind, embedder_sha256, embedder), **layout}
    h = json.dumps(header, separators=(",", ":")).encode()
    ix = json.dumps(index, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<I", len(h)) + h + struct.pack("<I", len(ix)) + ix
    return head + key_id(key.public_key()) + key.sign(head) + body


@dataclass(frozen=True, slots=True)
class Framing:
    """Where the parts of a bundle lie; found from the magic and two lengths only."""

    header: tuple[int, int]
    index: tuple[int, int]
    head_end: int

    @property
    def key_id(self) -> slice:
        return slice(self.head_end, self.head_end + KEYID_LEN)

    @property
    def signature(self) -> slice:
        return slice(self.head_end + KEYID_LEN, self.head_end + KEYID_LEN + SIG_LEN)

    @property
    def body_start(self) -> int:
        return self.head_end + KEYID_LEN + SIG_LEN


def frame(data: Buffer) -> Framing:
    """The framing of a bundle, reading nothing but the magic and the two length fields."""
    view = memoryview(data)
    if len(view) < len(MAGIC) + 8 + KEYID_LEN + SIG_LEN or bytes(view[: len(MAGIC)]) != MAGIC:
        raise BundleError("parse", "not a gallery bundle (bad magic or too short)")
    (hlen,) = struct.unpack_from("<I", view, len(MAGIC))
    if hlen > MAX_HEADER:
        raise BundleError("parse", f"header length {hlen} exceeds {MAX_HEADER} bytes")
    istart = len(MAGIC) + 4 + hlen
    if istart + 4 > len(view):
        raise BundleError("parse", "truncated before the end of the header")
    (ilen,) = struct.unpack_from("<I", view, istart)
    end = istart + 4 + ilen
    if end + KEYID_LEN + SIG_LEN > len(view):
        raise BundleError("parse", "truncated before the signature")
    return Framing((len(MAGIC) + 4, istart), (istart + 4, end), end)


@dataclass(frozen=True)
class Signed:
    """A bundle whose head a trusted key signed (the body is bound by per-identity digests)."""

    data: memoryview
    framing: Framing
    signer: str

    @property
    def head(self) -> memoryview:
        return self.data[: self.framing.head_end]

    @property
    def body(self) -> memoryview:
        return self.data[self.framing.body_start :]


def verify_signature(data: Buffer, trusted: list[Ed25519PublicKey]) -> Signed:
    """The bundle, if one of ``trusted`` signed its head; else BundleError('signature')."""
    f = frame(data)
    view = memoryview(data)
    return Signed(view, f, signed_by(view, f.head_end, trusted))


def signed_by(view: memoryview, head_end: int, trusted: list[Ed25519PublicKey]) -> str:
    """The key id (16 hex digits) of the trusted key whose signature follows ``view[:head_end]`` (after the
    signer's 32-byte key id); else BundleError('signature')."""
    kid = bytes(view[head_end : head_end + KEYID_LEN])
    sig = bytes(view[head_end + KEYID_LEN : head_end + KEYID_LEN + SIG_LEN])
    for pub in trusted:
        if key_id(pub) == kid:
            try:
                pub.verify(sig, view[:head_end])
            except InvalidSignature:
                raise BundleError("signature", "signature does not match the content (altered or corrupt)") from None
            return kid.hex()[:16]
    raise BundleError("signature", f"signed by key {kid.hex()[:16]}, which is not trusted")


def json_of(raw: memoryview, what: str) -> Any:
    try:
        return json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError("parse", f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BundleError("parse", f"{what} is nested too deeply") from None


def first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top)"
    return f"{where}: {err['msg']} (got {str(err.get('input'))[:40]!r})"


def read_header(signed: Signed) -> Header:
    """The verified header, each field checked."""
    start, end = signed.framing.header
    raw = json_of(signed.data[start:end], "header")
    if isinstance(raw, dict) and raw.get("format") not in (1, None) and isinstance(raw.get("format"), int):
        raise BundleError("parse", f"unsupported bundle format {raw['format']}")
    try:
        return Header.model_validate(raw)
    except ValidationError as exc:
        raise BundleError("parse", f"header {first_error(exc)}") from None


def read_index(signed: Signed) -> list[IndexEntry]:
    start, end = signed.framing.index
    try:
        return INDEX.validate_python(json_of(signed.data[start:end], "identity index"))
    except ValidationError as exc:
        raise BundleError("parse", f"identity index {first_error(exc)}") from None


def peek_header(data: Buffer) -> dict[str, Any]:
    """The header as written, NOT verified (for ``gallery inspect`` of a file at hand)."""
    f = frame(data)
    return clear_header(data, f.header, f.head_end)


def clear_header(data: Buffer, header: tuple[int, int], head_end: int) -> dict[str, Any]:
    """A header's JSON as written, NOT verified, with the key id of the signature after ``head_end`` (either
    format: their framing says where the two are)."""
    view = memoryview(data)
    raw = json_of(view[header[0] : header[1]], "header")
    if not isinstance(raw, dict):
        raise BundleError("parse", "header is not a JSON object")
    out: dict[str, Any] = raw
    out["signer_key_id"] = bytes(view[head_end : head_end + KEYID_LEN]).hex()[:16]
    return out


class Layout(Strict):
    """How the identities' blocks are laid out (in a format 1 header, or inside a sealed bundle's content)."""

    identities: int = Field(ge=0, le=10_000_000)
    embeddings: int = Field(ge=0, le=100_000_000)
    dim: int = Field(ge=1, le=MAX_DIM)
    dtype: Dtype


def parse_identities(
    signed: Signed, header: Header, index: list[IndexEntry], redacted: frozenset[str] = frozenset()
) -> tuple[Identity, ...]:
    """Decode every identity's block of a format 1 bundle (``parse_blocks``)."""
    return parse_blocks(signed.body, header, index, redacted)


def parse_blocks(
    body: memoryview, layout: Header | Layout, index: list[IndexEntry], redacted: frozenset[str] = frozenset()
) -> tuple[Identity, ...]:
    """Decode every identity's block, checking counts, sizes and digests.

    A block that fails its digest is an error unless its identity is in
    ``redacted`` (removed by a verified removal bundle); such identities are left out.
    """
    dim, dtype = layout.dim, layout.dtype
    if len(index) != layout.identities or sum(e.count for e in index) != layout.embeddings:
        raise BundleError("parse", "identity index does not match the header counts")
    need = sum(block_size(e.count, dim, dtype) for e in index)
    if need != len(body):
        raise BundleError(
            "signature", f"body is {len(body)} bytes, the signed index implies {need} (truncated or padded)"
        )
    seen: set[str] = set()
    out, pos = [], 0
    for e in index:
        if e.id in seen:
            raise BundleError("parse", f"identity {e.id!r} appears twice")
        seen.add(e.id)
        size = block_size(e.count, dim, dtype)
        block = body[pos : pos + size]
        pos += size
        if hashlib.sha256(block).hexdigest() != e.sha256:
            if e.id in redacted:
                continue
            raise BundleError("signature", f"embeddings of {e.id!r} do not match their signed digest (altered)")
        k = e.count
        if dtype in ("float16", "float32"):
            mat = np.frombuffer(block, "<f2" if dtype == "float16" else "<f4").reshape(k, dim).astype(np.float32)
        else:
            q = np.frombuffer(block, np.int8, k * dim).reshape(k, dim).astype(np.float32)
            mat = q * np.frombuffer(block, "<f2", k, k * dim).astype(np.float32)[:, None]
        if not np.all(np.isfinite(mat)):
            raise BundleError("parse", f"embeddings of {e.id!r} contain NaN or infinity")
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        if k and norms.min() < 0.5:
            raise BundleError("parse", f"embeddings of {e.id!r} are not unit vectors")
        out.append(Identity(e.id, e.label, mat / np.maximum(norms, 1e-12), dict(e.meta)))
    return tuple(out)


# -- keys -----------------------------------------------------------------------------
def generate_key(out: Path) -> Ed25519PublicKey:
    """Private key PEM at ``out`` (mode 0600, never overwritten), public key at ``out``.pub."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{out} exists; refusing to overwrite a signing key") from None
    except OSError as exc:
        raise InputError(f"signing key {out} cannot be created: {exc.strerror or exc}") from None
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
    except (ValueError, TypeError):  # the library's message may quote the file: never echo key material
        raise InputError(f"signing key {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"signing key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise InputError(f"public key {path} cannot be read: {exc.strerror or exc}") from None
    except ValueError:
        raise InputError(f"public key {path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"public key {path} is not an Ed25519 key")
    return key
