"""The device's own key pair: X25519, made on first start (or by ``edge device key``) in its state directory.

    <state_dir>/device.key      the private key, PEM (PKCS#8), mode 0600; the folder itself 0700

Galleries are encrypted to a device's public key (HPKE, ``edge.gallery.sealed``); the device opens them
with this key and keeps what it applied sealed under a key derived from it (``storage_key``). The public
key travels as one line, ``x25519:<base64 of the 32 raw bytes>``, which an operator pastes into
``edge enroll --recipient`` or keeps in a file; its key id is the sha256 of the raw key (hex), the first
16 digits of which are shown wherever a key is named.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.errors import InputError

KEY_FILE = "device.key"
LINE_PREFIX = "x25519:"
STORE_INFO = b"edge gallery store v1"


def raw_public(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: X25519PublicKey) -> bytes:
    """sha256 of the raw public key: how a bundle names its recipients."""
    return hashlib.sha256(raw_public(public)).digest()


def public_line(public: X25519PublicKey) -> str:
    """The public key as one line (``x25519:`` and base64), to paste or save."""
    return LINE_PREFIX + base64.b64encode(raw_public(public)).decode()


def parse_public_line(text: str, where: str) -> X25519PublicKey:
    """A public key from its line (``x25519:…``); an InputError naming ``where`` (a file, an argument)."""
    line = text.strip()
    if not line.startswith(LINE_PREFIX):
        raise InputError(
            f"{where}: not a device public key (expected one line 'x25519:<base64>', as 'edge device key' prints)"
        )
    try:
        raw = base64.b64decode(line[len(LINE_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{where}: the key after 'x25519:' is not base64") from None
    if len(raw) != 32:
        raise InputError(f"{where}: a device public key is 32 bytes, this one is {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def read_recipient(value: str) -> X25519PublicKey:
    """``--recipient``: the printed line itself, or a file holding it."""
    if value.strip().startswith(LINE_PREFIX):
        return parse_public_line(value, "--recipient")
    path = Path(value).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(
            f"--recipient {value}: neither a key line ('x25519:…') nor a readable file ({exc.strerror or exc})"
        ) from None
    return parse_public_line(text, str(path))


def read_recipients_file(path: Path) -> list[X25519PublicKey]:
    """``--recipients FILE``: one key line each (blank lines and ``#`` comments skipped; text after the key,
    such as the device's name, ignored)."""
    try:
        lines = path.expanduser().read_text().splitlines()
    except OSError as exc:
        raise InputError(f"--recipients {path}: cannot be read ({exc.strerror or exc})") from None
    keys = [
        parse_public_line(ln.split()[0], f"{path} line {n}")
        for n, ln in enumerate(lines, 1)
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not keys:
        raise InputError(f"--recipients {path}: no key in it")
    return keys


@dataclass(frozen=True)
class DeviceKey:
    private: X25519PrivateKey
    path: Path

    @property
    def public(self) -> X25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> bytes:
        return key_id(self.public)

    @property
    def short_id(self) -> str:
        return self.key_id.hex()[:16]

    def storage_key(self) -> bytes:
        """The 32-byte AEAD key under which this device keeps its applied gallery (HKDF of the private key)."""
        raw = self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return HKDF(hashes.SHA256(), 32, salt=None, info=STORE_INFO).derive(raw)


def secure_state_dir(state_dir: Path) -> None:
    """The state directory, made if missing, readable by its owner only (0700)."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        if state_dir.stat().st_mode & 0o077:
            state_dir.chmod(0o700)
    except OSError as exc:
        raise InputError(f"state directory {state_dir} cannot be made private: {exc.strerror or exc}") from None


def load_key(state_dir: Path) -> DeviceKey | None:
    """The device key, or None when there is none yet; an InputError when it exists but is unusable."""
    path = state_dir / KEY_FILE
    if not path.exists():
        return None
    return load_key_file(path)


def load_key_file(path: Path) -> DeviceKey:
    """A device key file (``--device-key``: the device's own, copied by its operator for a check)."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise InputError(f"device key {path} cannot be read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):  # the library's message may quote the file: never echo key material
        raise InputError(
            f"device key {path} is not an unencrypted PEM private key; move it away to make a new "
            "one (galleries encrypted to the old key can then no longer be read)"
        ) from None
    if not isinstance(key, X25519PrivateKey):
        raise InputError(f"device key {path} is not an X25519 key")
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return DeviceKey(key, path)


def write_key(state_dir: Path, key: X25519PrivateKey, replace: bool = False) -> DeviceKey:
    """Write ``key`` as the device key (0600, atomically); never over an existing one unless ``replace``."""
    secure_state_dir(state_dir)
    path = state_dir / KEY_FILE
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(KEY_FILE + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        if not replace and path.exists():
            tmp.unlink()
            raise InputError(f"{path} exists; refusing to overwrite the device key")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"device key {path} cannot be written: {exc.strerror or exc}") from None
    return DeviceKey(key, path)


def ensure_key(state_dir: Path) -> tuple[DeviceKey, bool]:
    """The device key, made now if there is none (True: made now)."""
    secure_state_dir(state_dir)
    found = load_key(state_dir)
    if found is not None:
        return found, False
    return write_key(state_dir, X25519PrivateKey.generate()), True
