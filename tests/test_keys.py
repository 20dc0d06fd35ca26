"""The device key: made once, private on disk, printed as one line, read back from what an operator pastes;
every bad key or file is one line naming it."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.device import keys
from edge.errors import InputError


def test_a_key_is_made_once_private_and_read_back_the_same(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b" / "state"  # parents made too
    key, made = keys.ensure_key(state)
    again, made_again = keys.ensure_key(state)
    assert made is True and made_again is False
    assert again.key_id == key.key_id and again.path == state / keys.KEY_FILE == key.path
    assert (state.stat().st_mode & 0o777) == 0o700 and (key.path.stat().st_mode & 0o777) == 0o600
    assert not list(state.glob("*.tmp"))
    # Loosened by hand: put right again when read.
    state.chmod(0o755)
    key.path.chmod(0o644)
    keys.secure_state_dir(state)
    assert keys.load_key(state) is not None
    assert (state.stat().st_mode & 0o777) == 0o700 and (key.path.stat().st_mode & 0o777) == 0o600
    state.chmod(0o750)  # group bits alone are loosened too
    keys.secure_state_dir(state)
    assert (state.stat().st_mode & 0o777) == 0o700
    assert keys.load_key(tmp_path / "none") is None


def test_the_key_is_never_overwritten_unless_asked(tmp_path: Path) -> None:
    key, _ = keys.ensure_key(tmp_path)
    with pytest.raises(InputError, match=rf"^{tmp_path / 'device.key'} exists; refusing to overwrite the device key$"):
        keys.write_key(tmp_path, X25519PrivateKey.generate())
    assert keys.load_key(tmp_path).key_id == key.key_id  # type: ignore[union-attr]
    assert not (tmp_path / "device.key.tmp").exists()
    new = keys.write_key(tmp_path, X25519PrivateKey.generate(), replace=True)
    assert keys.load_key(tmp_path).key_id == new.key_id != key.key_id  # type: ignore[union-attr]
    (tmp_path / "device.key.tmp").write_text("left by a crash")
    keys.write_key(tmp_path, X25519PrivateKey.generate(), replace=True)  # a stale temporary file is no obstacle


def test_the_public_line_round_trips_and_every_bad_one_is_named(tmp_path: Path) -> None:
    key, _ = keys.ensure_key(tmp_path)
    line = keys.public_line(key.public)
    raw = key.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert line == "x25519:" + base64.b64encode(raw).decode()
    assert keys.key_id(keys.parse_public_line(f"  {line}\n", "x")) == key.key_id
    bad = {
        "ed25519:AAAA": "x: not a device public key (expected one line 'x25519:<base64>', as 'edge device key' prints)",
        "x25519:not*base64!": "x: the key after 'x25519:' is not base64",
        "x25519:" + base64.b64encode(b"\x01" * 31).decode(): "x: a device public key is 32 bytes, this one is 31",
        "x25519:" + base64.b64encode(b"\x01" * 32).decode()[:-1] + "\u00e9": "x: the key after 'x25519:' is not base64",
    }
    for text, message in bad.items():
        with pytest.raises(InputError) as e:
            keys.parse_public_line(text, "x")
        assert str(e.value) == message
    # --recipient: the line, or a file holding it; named by what was given.
    assert keys.key_id(keys.read_recipient(line)) == key.key_id
    f = tmp_path / "door.pub"
    f.write_text(line + "\n")
    assert keys.key_id(keys.read_recipient(str(f))) == key.key_id
    f.write_text("nonsense\n")
    with pytest.raises(InputError, match=rf"^{f}: not a device public key"):
        keys.read_recipient(str(f))
    with pytest.raises(InputError, match=r"^--recipient: a device public key is 32 bytes, this one is 31$"):
        keys.read_recipient("x25519:" + base64.b64encode(b"\x01" * 31).decode())  # a line: named as the argument
    with pytest.raises(InputError, match=r"^--recipient: the key after 'x25519:' is not base64"):
        keys.read_recipient("x25519:???")
    with pytest.raises(InputError, match=rf"^--recipient {tmp_path / 'nope'}: neither a key line .*No such file"):
        keys.read_recipient(str(tmp_path / "nope"))


def test_a_recipients_file_skips_blanks_and_comments_and_names_a_bad_line(tmp_path: Path) -> None:
    a, b = (keys.ensure_key(tmp_path / n)[0] for n in ("a", "b"))
    f = tmp_path / "devices.txt"
    f.write_text(
        f"# lobby\n\n{keys.public_line(a.public)} door\n   \n  # indented comment\n{keys.public_line(b.public)}\n"
    )
    assert [keys.key_id(k) for k in keys.read_recipients_file(f)] == [a.key_id, b.key_id]
    f.write_text(f"{keys.public_line(a.public)}\nbroken\n")
    with pytest.raises(InputError, match=rf"^{f} line 2: not a device public key"):
        keys.read_recipients_file(f)
    f.write_text("# nothing but a comment\n")
    with pytest.raises(InputError, match=rf"^--recipients {f}: no key in it$"):
        keys.read_recipients_file(f)
    with pytest.raises(InputError, match=rf"^--recipients {tmp_path / 'nope'}: cannot be read"):
        keys.read_recipients_file(tmp_path / "nope")


def test_a_bad_key_file_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n")
    with pytest.raises(InputError) as e:
        keys.load_key(tmp_path)
    assert str(e.value) == (
        f"device key {path} is not an unencrypted PEM private key; move it away to make a new one "
        "(galleries encrypted to the old key can then no longer be read)"
    )
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(InputError) as e:
        keys.load_key(tmp_path)
    assert str(e.value) == f"device key {path} is not an X25519 key"
    with pytest.raises(InputError, match=rf"^device key {tmp_path / 'gone.key'} cannot be read: No such file"):
        keys.load_key_file(tmp_path / "gone.key")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=rf"^state directory {blocker / 'state'} cannot be made private: "):
        keys.ensure_key(blocker / "state")
    with pytest.raises(InputError, match=rf"^state directory {blocker} cannot be made private: "):
        keys.write_key(blocker, X25519PrivateKey.generate())


def test_the_store_key_is_hkdf_of_the_device_key_with_its_own_label(tmp_path: Path) -> None:
    """A known answer: change the label, the salt or the length and a device no longer opens its store."""
    key, _ = keys.ensure_key(tmp_path)
    raw = key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    expected = HKDF(hashes.SHA256(), 32, salt=None, info=b"edge gallery store v1").derive(raw)
    assert keys.STORE_INFO == b"edge gallery store v1" and key.storage_key() == expected
    assert key.short_id == key.key_id.hex()[:16] and len(key.key_id) == 32
