"""A bundle's rules, each at its boundary, on the decoding functions themselves: what each refusal says
and at which step, the unit-vector floor, int8 dequantisation, the header and index checks, the keys."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import InputError
from edge.gallery.bundle import (
    MAGIC,
    BundleError,
    Identity,
    IndexEntry,
    Layout,
    content,
    encode,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    parse_blocks,
    read_header,
    read_index,
    verify_signature,
)

KEY = Ed25519PrivateKey.generate()
SHA = "ab" * 32


def unit(*rows: list[float]) -> np.ndarray:
    m = np.array(rows, np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def pieces(identities: list[Identity], dtype: str = "float32") -> tuple[Layout, list[IndexEntry], memoryview]:
    layout, index, body = content(identities, dtype)  # type: ignore[arg-type]
    return Layout(**layout), [IndexEntry(**e) for e in index], memoryview(body)


def refusal(call: object) -> tuple[str, str]:
    with pytest.raises(BundleError) as info:
        call()  # type: ignore[operator]
    return info.value.step, info.value.reason


def test_each_block_refusal_names_its_identity_and_step() -> None:
    a, b = Identity("a", None, unit([1, 0, 0, 0]), {}), Identity("b", "B", unit([0, 1, 0, 0], [0, 0, 1, 0]), {})
    layout, index, body = pieces([a, b])
    decoded = parse_blocks(body, layout, index)
    assert [i.id for i in decoded] == ["a", "b"] and decoded[1].label == "B"
    assert decoded[1].embeddings.dtype == np.float32 and np.allclose(decoded[1].embeddings, b.embeddings)
    twice = [index[0], index[1].model_copy(update={"id": "a"})]
    assert refusal(lambda: parse_blocks(body, layout, twice)) == ("parse", "identity 'a' appears twice")
    off = layout.model_copy(update={"embeddings": 4})  # the right number of identities, not of embeddings
    assert refusal(lambda: parse_blocks(body, layout.model_copy(update={"identities": 3}), index))[1] == (
        "identity index does not match the header counts"
    )
    assert refusal(lambda: parse_blocks(body, off, index)) == (
        "parse",
        "identity index does not match the header counts",
    )
    altered = bytearray(body)
    altered[0] ^= 1
    assert refusal(lambda: parse_blocks(memoryview(bytes(altered)), layout, index)) == (
        "signature",
        "embeddings of 'a' do not match their signed digest (altered)",
    )
    kept = parse_blocks(memoryview(bytes(altered)), layout, index, redacted=frozenset({"a"}))
    assert [i.id for i in kept] == ["b"]  # removed by a verified removal: left out, not an error


def test_non_finite_or_short_vectors_are_refused_at_exactly_half_a_unit() -> None:
    nan = Identity("n", None, np.array([[np.nan, 0, 0, 0]], np.float32), {})
    assert refusal(lambda: parse_blocks(*_order(pieces([nan])))) == (
        "parse",
        "embeddings of 'n' contain NaN or infinity",
    )
    half = Identity("h", None, np.array([[0.5, 0, 0, 0]], np.float32), {})  # length exactly 0.5: accepted
    (got,) = parse_blocks(*_order(pieces([half])))
    assert np.array_equal(got.embeddings, np.array([[1, 0, 0, 0]], np.float32))  # made unit length
    short = Identity("s", None, np.array([[np.nextafter(np.float32(0.5), 0), 0, 0, 0]], np.float32), {})
    assert refusal(lambda: parse_blocks(*_order(pieces([short])))) == (
        "parse",
        "embeddings of 's' are not unit vectors",
    )


def _order(p: tuple[Layout, list[IndexEntry], memoryview]) -> tuple[memoryview, Layout, list[IndexEntry]]:
    layout, index, body = p
    return body, layout, index


def test_int8_blocks_are_dequantised_row_by_row() -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(3, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    layout, index, body = pieces([Identity("q", None, rows, {})], "int8")
    (got,) = parse_blocks(body, layout, index)
    assert got.embeddings.dtype == np.float32 and np.abs(got.embeddings - rows).max() < 0.02
    q = np.frombuffer(body, np.int8, 3 * 16).reshape(3, 16).astype(np.float32)
    scale = np.frombuffer(body, "<f2", 3, 3 * 16).astype(np.float32)[:, None]
    manual = q * scale
    assert np.allclose(got.embeddings, manual / np.linalg.norm(manual, axis=1, keepdims=True), atol=1e-7)


def signed(header: object, index: object) -> bytes:
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    ix = json.dumps(index).encode() if not isinstance(index, bytes) else index
    head = MAGIC + struct.pack("<I", len(h)) + h + struct.pack("<I", len(ix)) + ix
    return head + key_id(KEY.public_key()) + KEY.sign(head)


def good_header() -> dict[str, object]:
    data = encode([Identity("a", None, unit([1, 0]), {})], "lobby", 3, SHA, KEY)
    h = read_header(verify_signature(data, [KEY.public_key()]))
    return h.model_dump(mode="json")


def test_a_header_or_index_that_is_not_what_it_must_be_is_named() -> None:
    trusted = [KEY.public_key()]
    header = good_header()
    assert read_header(verify_signature(signed(header, []), trusted)).gallery == "lobby"
    assert refusal(lambda: read_header(verify_signature(signed({**header, "format": 3}, []), trusted))) == (
        "parse",
        "unsupported bundle format 3",
    )
    step, why = refusal(lambda: read_header(verify_signature(signed(b"{not json", []), trusted)))
    assert step == "parse" and why.startswith("header is not valid JSON: ")
    step, why = refusal(lambda: read_header(verify_signature(signed({**header, "version": "x" * 60}, []), trusted)))
    assert step == "parse" and why.startswith("header version: ") and why.endswith(f"(got {('x' * 40)!r})")
    step, why = refusal(lambda: read_header(verify_signature(signed([1], []), trusted)))
    assert step == "parse" and why.startswith("header (top): ")
    step, why = refusal(lambda: read_index(verify_signature(signed(header, b"[{"), trusted)))
    assert step == "parse" and why.startswith("identity index is not valid JSON: ")
    entry = {"id": "a", "label": None, "count": 1, "meta": {}, "sha256": "0" * 64}
    assert read_index(verify_signature(signed(header, [entry]), trusted))[0].id == "a"
    step, why = refusal(lambda: read_index(verify_signature(signed(header, [{**entry, "count": -1}]), trusted)))
    assert step == "parse" and why.startswith("identity index 0.count: ") and why.endswith("(got '-1')")


def test_signing_keys_refuse_what_they_cannot_use_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "signing.pem"
    public = generate_key(out)
    assert (out.stat().st_mode & 0o777) == 0o600 and load_private_key(out).public_key() == public
    assert load_public_key(Path(f"{out}.pub")) == public
    with pytest.raises(InputError, match=rf"^{out} exists; refusing to overwrite a signing key$"):
        generate_key(out)
    with pytest.raises(
        InputError, match=r"^signing key .*nowhere/k\.pem cannot be created: No such file or directory$"
    ):
        generate_key(tmp_path / "nowhere" / "k.pem")
    with pytest.raises(InputError, match=r"^signing key .*missing\.pem cannot be read: No such file or directory$"):
        load_private_key(tmp_path / "missing.pem")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(InputError, match=rf"^signing key {junk} is not an unencrypted PEM private key$"):
        load_private_key(junk)
    with pytest.raises(InputError, match=rf"^public key {junk} is not a PEM public key$"):
        load_public_key(junk)
    with pytest.raises(InputError, match=r"^public key .*gone\.pub cannot be read: No such file or directory$"):
        load_public_key(tmp_path / "gone.pub")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    ec_key, ec_pub = tmp_path / "ec.pem", tmp_path / "ec.pub"
    ec_key.write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ec_pub.write_bytes(
        other.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(InputError, match=rf"^signing key {ec_key} is not an Ed25519 key$"):
        load_private_key(ec_key)
    with pytest.raises(InputError, match=rf"^public key {ec_pub} is not an Ed25519 key$"):
        load_public_key(ec_pub)


# -- admission: what the operator's tools and a device without its key say -------------------------


def test_a_sealed_bundle_where_no_device_key_is_at_hand_and_templates_of_another_width(tmp_path: Path) -> None:
    from edge.device.keys import ensure_key
    from edge.gallery.admit import Policy, admit
    from edge.gallery.sealed import seal

    device, _ = ensure_key(tmp_path / "state")
    data = seal([Identity("a", None, unit([1, 0, 0, 0]), {})], "lobby", 7, SHA, KEY, [device.public])
    policy = Policy((KEY.public_key(),), SHA, "lobby")
    with pytest.raises(BundleError) as info:
        admit(data, policy)
    e = info.value
    assert (e.step, e.reason, e.version) == (
        "recipient",
        "a sealed bundle, and this side has no device key to open it",
        7,
    )
    wide = Policy((KEY.public_key(),), SHA, "lobby", embedder_dim=128, device_key=device)
    with pytest.raises(BundleError) as info:
        admit(data, wide)
    e = info.value
    assert (e.step, e.reason, e.version) == ("model", "templates of 4 dimensions, this device's embedder gives 128", 7)
    assert admit(data, Policy((KEY.public_key(),), SHA, "lobby", embedder_dim=4, device_key=device)).version == 7
    clear = encode([Identity("a", None, unit([1, 0]), {})], "lobby", 2, SHA, KEY)
    with pytest.raises(BundleError) as info:
        admit(clear, Policy((KEY.public_key(),), SHA, "lobby", embedder_dim=3, allow_plaintext=True))
    assert (info.value.step, info.value.version) == ("model", 2)


def test_an_operators_check_passes_a_redacted_block_and_a_bundle_file_is_named_in_each_refusal(tmp_path: Path) -> None:
    from edge.gallery.admit import Policy, load_bundle_file, load_trusted, verify_bundle

    a, b = Identity("a", None, unit([1, 0]), {}), Identity("b", None, unit([0, 1]), {})
    data = bytearray(encode([a, b], "lobby", 2, SHA, KEY, dtype="float32"))
    data[-1] ^= 1  # b's block altered after signing
    with pytest.raises(BundleError, match="embeddings of 'b' do not match"):
        verify_bundle(bytes(data), [KEY.public_key()], SHA)
    kept = verify_bundle(bytes(data), [KEY.public_key()], SHA, redacted=frozenset({"b"}))
    assert [i.id for i in kept.identities] == ["a"]  # b was removed by a verified removal: left out
    pub = tmp_path / "signing.pub"
    from cryptography.hazmat.primitives import serialization

    pub.write_bytes(
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (trusted,) = load_trusted([pub])
    assert trusted == KEY.public_key() and load_trusted([]) == ()
    policy = Policy((trusted,), SHA, "lobby", allow_plaintext=True)
    good = tmp_path / "good.bundle"
    good.write_bytes(encode([a], "lobby", 3, SHA, KEY))
    bundle, raw = load_bundle_file(good, policy)
    assert bundle.version == 3 and raw == good.read_bytes()
    with pytest.raises(
        InputError, match=r"^gallery bundle .*missing\.bundle cannot be read: No such file or directory$"
    ):
        load_bundle_file(tmp_path / "missing.bundle", policy)
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(b"not a bundle at all, but long enough to be framed as one" * 4)
    with pytest.raises(InputError, match=rf"^{bad}: gallery bundle rejected at parse: not a gallery bundle"):
        load_bundle_file(bad, policy)


def test_what_a_device_refuses_before_opening_and_what_an_admitted_sealed_bundle_carries(tmp_path: Path) -> None:
    from edge.device.keys import ensure_key
    from edge.gallery.admit import Policy, admit, to_gallery
    from edge.gallery.bundle import key_id as kid
    from edge.gallery.sealed import seal

    device, _ = ensure_key(tmp_path / "state")
    data = seal(
        [Identity("a", "Ann", unit([1, 0, 0, 0]), {})], "lobby", 7, SHA, KEY, [device.public], embedder="sface_int8"
    )
    with pytest.raises(BundleError) as info:
        admit(data, Policy((), SHA, "lobby", device_key=device))
    assert (info.value.step, info.value.reason) == ("signature", "no trusted public key configured")
    clear = encode([Identity("a", None, unit([1, 0]), {})], "lobby", 2, SHA, KEY)
    with pytest.raises(BundleError) as info:
        admit(clear, Policy((KEY.public_key(),), SHA, "lobby"))
    assert (info.value.step, info.value.version) == ("plaintext", 2)
    assert info.value.reason == (
        "a bundle in the clear (format 1): this device accepts only bundles encrypted to its key "
        "(enrol with --recipient; gallery.allow_plaintext = true admits clear ones)"
    )
    with pytest.raises(BundleError) as info:
        admit(data, Policy((KEY.public_key(),), "cd" * 32, "lobby", device_key=device))
    assert info.value.step == "model" and info.value.reason.endswith(
        "enrol again from the photos with this device's embedder (docs/models.md)"
    )
    bundle = admit(data, Policy((KEY.public_key(),), SHA, "lobby", device_key=device))
    assert (bundle.gallery, bundle.version, bundle.kind, bundle.embedder_sha256) == ("lobby", 7, "full", SHA)
    assert bundle.signer == kid(KEY.public_key()).hex()[:16] and bundle.created_at.startswith("20")
    assert bundle.embedder == "sface_int8"
    assert to_gallery(bundle).labels == ("Ann",)


def test_the_framing_of_a_bundle_at_each_of_its_bounds() -> None:
    import hashlib

    from edge.gallery.bundle import KEYID_LEN, MAX_HEADER, SIG_LEN, frame, peek_header, signed_by

    least = len(MAGIC) + 8 + KEYID_LEN + SIG_LEN
    assert refusal(lambda: frame(MAGIC + b"\0" * (least - len(MAGIC) - 1))) == (
        "parse",
        "not a gallery bundle (bad magic or too short)",
    )
    empty = MAGIC + struct.pack("<I", 0) + struct.pack("<I", 0) + b"\0" * (KEYID_LEN + SIG_LEN)
    assert len(empty) == least and frame(empty).head_end == len(MAGIC) + 8  # the least there can be: framed
    assert refusal(lambda: frame(b"EDGEGAL9" + empty[8:]))[1] == "not a gallery bundle (bad magic or too short)"
    big = MAGIC + struct.pack("<I", MAX_HEADER + 1) + b"\0" * (MAX_HEADER + 200)
    assert refusal(lambda: frame(big)) == ("parse", f"header length {MAX_HEADER + 1} exceeds {MAX_HEADER} bytes")
    at_max = MAGIC + struct.pack("<I", MAX_HEADER) + b"\0" * MAX_HEADER + struct.pack("<I", 0) + b"\0" * 96
    assert frame(at_max).head_end == len(MAGIC) + 8 + MAX_HEADER  # exactly the limit: allowed
    # The header runs past the end: the index length itself is missing.
    cut = MAGIC + struct.pack("<I", 100) + b"\0" * 100
    cut += b"\0" * (least - len(cut))
    assert refusal(lambda: frame(cut)) == ("parse", "truncated before the end of the header")
    h = 20
    ends_at = MAGIC + struct.pack("<I", h) + b"\0" * h + struct.pack("<I", 0)  # index length the last 4 bytes
    assert refusal(lambda: frame(ends_at + b"\0" * (KEYID_LEN + SIG_LEN - 1))) == (
        "parse",
        "truncated before the signature",
    )
    assert frame(ends_at + b"\0" * (KEYID_LEN + SIG_LEN)).body_start == len(ends_at) + KEYID_LEN + SIG_LEN
    # Key ids are the sha256 of the raw public key; signatures are checked over the head.
    from cryptography.hazmat.primitives import serialization

    raw = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(KEY.public_key()) == hashlib.sha256(raw).digest()
    data = bytearray(encode([Identity("a", None, unit([1, 0]), {})], "lobby", 2, SHA, KEY))
    f = frame(bytes(data))
    data[f.signature.start] ^= 1
    assert refusal(lambda: signed_by(memoryview(bytes(data)), f.head_end, [KEY.public_key()])) == (
        "signature",
        "signature does not match the content (altered or corrupt)",
    )
    stranger = Ed25519PrivateKey.generate().public_key()
    assert refusal(lambda: signed_by(memoryview(bytes(data)), f.head_end, [stranger]))[1] == (
        f"signed by key {key_id(KEY.public_key()).hex()[:16]}, which is not trusted"
    )
    header = peek_header(encode([], "lobby", 1, SHA, KEY))
    assert header["dim"] == 128 and "embedder" not in header and header["created_at"].endswith("+00:00")
    e = BundleError("store", "disk full", 4)
    assert (e.step, e.reason, e.version, str(e)) == (
        "store",
        "disk full",
        4,
        "gallery bundle rejected at store: disk full",
    )


def test_int8_quantisation_keeps_each_rows_own_scale() -> None:
    rows = np.array([[0.6, 0.8, 0.0, 0.0], [0.0, 0.0, 0.28, 0.96]], np.float32)
    _, _, body = content([Identity("q", None, rows, {})], "int8")
    q = np.frombuffer(body, np.int8, 8).reshape(2, 4)
    scale = np.frombuffer(body, "<f2", 2, 8)
    assert np.allclose(scale, rows.max(axis=1) / 127.0, rtol=1e-3)  # each row's own: 0.8 and 0.96
    assert q.tolist() == [[95, 127, 0, 0], [0, 0, 37, 127]]
