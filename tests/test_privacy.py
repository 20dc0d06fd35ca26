"""Sealed galleries (issue 26): the envelope's every fault is one rejection naming its step with the gallery
in force untouched; keys are rotated and revoked; a device's disk holds only what it must."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cli import main
from edge.delivery.events import GalleryState
from edge.device.keys import DeviceKey, ensure_key, load_key, public_line
from edge.device.runtime import load_manifest
from edge.device.settings import GallerySettings, MatchSettings, Settings
from edge.gallery import sealed
from edge.gallery.admit import Policy
from edge.gallery.bundle import Bundle, Identity
from edge.gallery.store import NEXT, GalleryStore
from edge.gallery.sync import GallerySync
from edge.recognition.match import GalleryHolder, Matcher

from .test_match import CAL

KEY = Ed25519PrivateKey.generate()
SHA = load_manifest().spec(Settings().models.embedder).sha256  # the default device's embedder
DIM = 16


def people(n: int, seed: int = 0) -> list[Identity]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        v = rng.normal(size=(2, DIM)).astype(np.float32)
        out.append(Identity(f"id{i}", f"Person {i}", v / np.linalg.norm(v, axis=1, keepdims=True), {}))
    return out


def sync_for(state: Path, key: DeviceKey, states: list[GalleryState] | None = None) -> GallerySync:
    policy = Policy((KEY.public_key(),), SHA, "lobby", 1 << 20, device_key=key)
    got = states if states is not None else []
    return GallerySync(
        GalleryHolder(Matcher(CAL, MatchSettings())),
        GalleryStore(state / "gallery", policy),
        policy,
        GallerySettings(),
        lambda d: got.append(GalleryState.model_validate_json(d)),
    )


def resealed(
    data: bytes, *, header: bytes | None = None, recipients: bytes | None = None, content: bytes | None = None
) -> bytes:
    """The bundle with parts replaced and signed again by the trusted key: what an insider (or a bug in a
    publisher) could make; the signature passes, so the checks after it must catch it."""
    f = sealed.frame(data)
    parts = [data[a:b] for a, b in (f.header, f.recipients, f.content)]
    for i, new in enumerate((header, recipients, content)):
        if new is not None:
            parts[i] = new
    head = sealed.MAGIC + b"".join(struct.pack("<I", len(p)) + p for p in parts)
    from edge.gallery.bundle import key_id

    return head + key_id(KEY.public_key()) + KEY.sign(head)


def test_every_fault_of_the_envelope_is_one_rejection_naming_its_step_and_the_gallery_stays(tmp_path: Path) -> None:
    door, yard = ensure_key(tmp_path / "door")[0], ensure_key(tmp_path / "yard")[0]
    states: list[GalleryState] = []
    sync = sync_for(tmp_path / "door", door, states)
    assert sync.apply(sealed.seal(people(3), "lobby", 5, SHA, KEY, [door.public]))
    before = (
        sync.holder.current.gallery.identity_ids,
        sync.version,
        sorted(p.read_bytes() for p in (tmp_path / "door" / "gallery").iterdir()),
    )
    both = sealed.seal(people(4, seed=1), "lobby", 6, SHA, KEY, [yard.public, door.public])
    f = sealed.frame(both)
    blocks = both[f.recipients[0] : f.recipients[1]]
    yard_block, door_block = blocks[: sealed.RECIPIENT_LEN], blocks[sealed.RECIPIENT_LEN :]
    content = both[f.content[0] : f.content[1]]
    header = json.loads(both[f.header[0] : f.header[1]])
    faults = {
        "truncated ciphertext": (resealed(both, content=content[:-40]), "decrypt", "does not decrypt"),
        "wrong AEAD tag": (
            resealed(both, content=content[:-1] + bytes([content[-1] ^ 1])),
            "decrypt",
            "does not decrypt",
        ),
        "ciphertext too short": (resealed(both, content=content[:20]), "decrypt", "too short"),
        "swapped recipient blocks": (
            resealed(both, recipients=door_block + yard_block),
            "recipient",
            "not the one the header lists there",
        ),
        "a block under the wrong key id": (
            resealed(both, recipients=yard_block + door_block[:32] + yard_block[32:]),
            "recipient",
            "does not open with its private key",
        ),
        "duplicated recipient": (
            resealed(
                both,
                header=json.dumps({**header, "recipients": [header["recipients"][1]] * 2}).encode(),
                recipients=door_block + door_block,
            ),
            "recipient",
            "listed twice",
        ),
        "a missing key block": (resealed(both, recipients=yard_block), "recipient", "key blocks for 2 recipients"),
        "not a recipient": (
            sealed.seal(people(2), "lobby", 6, SHA, KEY, [yard.public]),
            "recipient",
            "not among the bundle's 1 recipient",
        ),
        "unsigned": (both[: f.head_end] + bytes(96), "signature", "not trusted"),
        "cut short": (both[:-50], "parse", "truncated or padded"),
    }
    for name, (data, step, words) in faults.items():
        assert not sync.apply(data), name
        error = states[-1].error
        assert error is not None and error.step == step and words in error.reason, (name, error)
        assert "\n" not in error.reason
        after = (
            sync.holder.current.gallery.identity_ids,
            sync.version,
            sorted(p.read_bytes() for p in (tmp_path / "door" / "gallery").iterdir()),
        )
        assert after == before, name  # the gallery in force and its stored copy untouched
    assert sync.apply(both)  # the bundle itself, as published, applies
    assert sync.holder.current.gallery.identity_ids == ("id0", "id1", "id2", "id3")


def test_a_rotated_key_gets_the_next_bundle_and_the_old_one_is_refused_while_the_gallery_stays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "door"
    old = ensure_key(state)[0]
    assert sync_for(state, old).apply(sealed.seal(people(3), "lobby", 5, SHA, KEY, [old.public]))
    assert main(["device", "key", "--rotate", "--state-dir", str(state)]) == 0
    line = capsys.readouterr().out.strip()
    new = load_key(state)
    assert new is not None and public_line(new.public) == line and new.key_id != old.key_id
    states: list[GalleryState] = []
    sync = sync_for(state, new, states)
    assert sync.load_from_disk() and sync.version == 5  # the stored gallery, sealed again under the new key
    assert not sync.apply(sealed.seal(people(2), "lobby", 6, SHA, KEY, [old.public]))  # sealed to the old key
    assert states[-1].error is not None and states[-1].error.step == "recipient"
    assert sync.version == 5 and len(sync.holder.current) == 3
    assert sync.apply(sealed.seal(people(2), "lobby", 7, SHA, KEY, [new.public]))


def test_a_rotation_cut_short_between_its_steps_leaves_a_gallery_the_key_in_place_opens(tmp_path: Path) -> None:
    state = tmp_path / "door"
    old = ensure_key(state)[0]
    first = sync_for(state, old)
    assert first.apply(sealed.seal(people(3), "lobby", 5, SHA, KEY, [old.public]))
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    new = DeviceKey(X25519PrivateKey.generate(), state / "device.key")
    assert first.applied is not None
    GalleryStore(state / "gallery", Policy((), SHA, device_key=new)).write_next(first.applied)
    # Cut before the key was replaced: the old key is in place, the new store is not its own.
    assert sync_for(state, old).load_from_disk() and not (state / "gallery" / NEXT).exists()
    GalleryStore(state / "gallery", Policy((), SHA, device_key=new)).write_next(first.applied)
    # Cut after the key was replaced, before the store was: the new key opens the new store.
    again = sync_for(state, new)
    assert again.load_from_disk() and again.version == 5 and not (state / "gallery" / NEXT).exists()


def test_a_revoked_device_is_ended_by_a_removal_of_everyone_or_wiped_on_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "door"
    key = ensure_key(state)[0]
    sync = sync_for(state, key)
    crowd = people(3)
    assert sync.apply(sealed.seal(crowd, "lobby", 5, SHA, KEY, [key.public]))
    everyone = [Identity(p.id, None, np.zeros((0, DIM), np.float32), {}) for p in crowd]
    assert sync.apply(sealed.seal(everyone, "lobby", 6, SHA, KEY, [key.public], kind="removal"))
    assert len(sync.holder.current) == 0 and sync.state().removed_count == 3
    store = sync.store
    plain = store._open(store.current_path.read_bytes())
    assert all(p.id.encode() not in plain and str(p.label).encode() not in plain for p in crowd)
    assert main(["device", "wipe", "--state-dir", str(state)]) == 0
    assert "deleted the stored gallery" in capsys.readouterr().out
    assert not store.current_path.exists() and not sync_for(state, key).load_from_disk()
    assert main(["device", "wipe", "--state-dir", str(state)]) == 0
    assert "no stored gallery" in capsys.readouterr().out


def test_inspect_without_the_device_key_shows_the_clear_header_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ensure_key(tmp_path / "door")[0]
    bundle = tmp_path / "g.bundle"
    bundle.write_bytes(sealed.seal(people(2), "lobby", 3, SHA, KEY, [key.public]))
    pub = tmp_path / "owner.pub"
    from cryptography.hazmat.primitives import serialization

    pub.write_bytes(
        KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert main(["gallery", "inspect", str(bundle), "--trusted-key", str(pub)]) == 0
    captured = capsys.readouterr()
    header = json.loads(captured.out)
    assert header["verified"] is True and header["version"] == 3 and header["recipients"] == [key.key_id.hex()]
    assert "Person" not in captured.out and "id0" not in captured.out and "--device-key" in captured.err
    assert (
        main(["gallery", "inspect", str(bundle), "--trusted-key", str(pub), "--device-key", str(key.path), "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert [r["identity_id"] for r in report["identities_report"]] == ["id0", "id1"]


def test_a_format_1_store_is_moved_into_the_sealed_one_at_first_start(tmp_path: Path) -> None:
    from edge.gallery.bundle import encode

    state = tmp_path / "door"
    key = ensure_key(state)[0]
    legacy = state / "gallery" / "current.bundle"
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(encode(people(3), "lobby", 4, SHA, KEY))
    sync = sync_for(state, key)
    assert sync.load_from_disk() and sync.version == 4 and len(sync.holder.current) == 3
    assert not legacy.exists() and (state / "gallery" / "current.sealed").is_file()
    assert b"Person" not in (state / "gallery" / "current.sealed").read_bytes()
    assert sync_for(state, key).load_from_disk()  # and opens again from the sealed store


def test_a_format_1_store_with_a_removal_moves_without_the_removed(tmp_path: Path) -> None:
    """Earlier releases zeroed a removed identity's block in current.bundle and kept the removal beside it."""
    from edge.gallery.bundle import encode, frame

    state = tmp_path / "door"
    key = ensure_key(state)[0]
    full = bytearray(encode(people(3), "lobby", 4, SHA, KEY))
    f = frame(full)
    size = 2 * DIM * 2  # two float16 templates per identity
    at = f.body_start + size  # id1's block
    full[at : at + size] = bytes(size)
    folder = state / "gallery"
    (folder / "removals").mkdir(parents=True)
    (folder / "current.bundle").write_bytes(bytes(full))
    gone = [Identity("id1", None, np.zeros((0, DIM), np.float32), {})]
    (folder / "removals" / "v000000000005.bundle").write_bytes(encode(gone, "lobby", 5, SHA, KEY, kind="removal"))
    sync = sync_for(state, key)
    assert sync.load_from_disk() and sync.version == 5
    assert sync.holder.current.gallery.identity_ids == ("id0", "id2") and sync.state().removed_count == 1
    assert not (folder / "current.bundle").exists() and not list((folder / "removals").glob("*"))
    plain = sync.store._open(sync.store.current_path.read_bytes())
    assert b"id1" not in plain and b"Person 1" not in plain


# -- the sealed store, field by field (mutation testing found these unpinned) ------------------------


def test_the_stored_gallery_comes_back_field_by_field(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    state = tmp_path / "a" / "b" / "door"  # the store's folders are made, parents too
    key = ensure_key(tmp_path / "keys")[0]
    crowd = people(4)
    crowd[1] = Identity("id1", "Person 1", crowd[1].embeddings, {"expires_at": "2999-01-01T00:00:00+00:00"})
    sync = sync_for(state, key)
    assert sync.apply(sealed.seal(crowd, "lobby", 5, SHA, KEY, [key.public], embedder="sface_int8"))
    assert sync.applied is not None and sync.applied.applied_at.startswith("20") and len(sync.applied.head) == 32
    with caplog.at_level(logging.INFO, logger="edge.gallery.store"):
        assert sync.apply(
            sealed.seal(
                [Identity("id2", None, np.zeros((0, DIM), np.float32), {})],
                "lobby",
                6,
                SHA,
                KEY,
                [key.public],
                kind="removal",
            )
        )
        assert sync.apply(
            sealed.seal(
                [Identity(i, None, np.zeros((0, DIM), np.float32), {}) for i in ("id0", "id3")],
                "lobby",
                7,
                SHA,
                KEY,
                [key.public],
                kind="removal",
            )
        )
    said = [r.getMessage() for r in caplog.records]
    assert "gallery: 1 identity removed from disk" in said and "gallery: 2 identities removed from disk" in said
    before = sync.applied
    assert before is not None and before.removed == frozenset({"id0", "id2", "id3"}) and before.removed_count == 3
    again = sync_for(state, key)
    assert again.load_from_disk()
    after = again.applied
    assert after is not None
    b, a = before.bundle, after.bundle
    assert (a.gallery, a.version, a.kind, a.created_at, a.embedder_sha256, a.signer, a.recipients, a.embedder) == (
        b.gallery,
        5,
        "full",
        b.created_at,
        SHA,
        b.signer,
        (key.key_id.hex(),),
        "sface_int8",
    )
    assert (after.version, after.applied_at, after.head, after.removed_count) == (7, before.applied_at, before.head, 3)
    assert len(after.head) == 32 and after.applied_at.startswith("20") and after.removed == frozenset()
    (kept,) = a.identities
    assert (kept.id, kept.label, kept.meta) == ("id1", "Person 1", {"expires_at": "2999-01-01T00:00:00+00:00"})
    np.testing.assert_array_equal(kept.embeddings, b.identities[0].embeddings)  # float32, bit for bit
    assert again.state().removed_count == 3 and again.state().sealed is True


def test_every_fault_of_the_stored_gallery_is_one_line_naming_the_file(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from edge.errors import InputError
    from edge.gallery.store import MAGIC, NONCE_LEN, StoredForAnotherEmbedder

    key = ensure_key(tmp_path / "door")[0]
    store = sync_for(tmp_path / "door", key).store
    path = store.current_path
    path.parent.mkdir(parents=True)

    def seal_plain(plain: bytes) -> bytes:
        nonce = bytes(NONCE_LEN)
        return MAGIC + nonce + AESGCM(key.storage_key()).encrypt(nonce, plain, MAGIC)

    not_sealed = f"stored gallery {path} is not a sealed gallery store; restore it or delete it to start without"
    no_open = (
        f"stored gallery {path} does not open with this device's key (the key was replaced without 'edge "
        "device key --rotate', or the file is damaged); restore both or delete it to start without"
    )
    shortest = len(MAGIC) + NONCE_LEN + 16
    cases = {
        b"garbage, not a store": not_sealed,
        MAGIC + bytes(NONCE_LEN + 15): not_sealed,  # one byte short of the smallest sealed store
        MAGIC + bytes(NONCE_LEN + 16): no_open,  # the smallest: read, and it does not open
        b"EDGESTO2" + bytes(shortest): not_sealed,
        seal_plain(struct.pack("<I", 5) + b"hello"): f"stored gallery {path} is malformed (",
        seal_plain(
            struct.pack("<I", 2) + b"[]"
        ): f"stored gallery {path} is malformed (the record is not a JSON object)",
        seal_plain(struct.pack("<I", 2) + b"{}"): f"stored gallery {path} is malformed (store format None, this "
        "release reads 'edge-store-1')",
        seal_plain(struct.pack("<I", 25) + b'{"format":"edge-store-2"}'): f"stored gallery {path} is malformed (store "
        "format 'edge-store-2'",
    }
    for data, message in cases.items():
        path.write_bytes(data)
        with pytest.raises(InputError) as e:
            store.load()
        assert str(e.value).startswith(message) and "\n" not in str(e.value), (data[:20], str(e.value))
    # Another embedder's: kept, not damage, named with both embedders and its version.
    other = sync_for(tmp_path / "door", key)
    path.unlink()
    policy = Policy((KEY.public_key(),), "cd" * 32, "lobby", 1 << 20, {"cd" * 32: "mobilefacenet_int8"}, device_key=key)
    GallerySync(
        GalleryHolder(Matcher(CAL, MatchSettings())),
        GalleryStore(path.parent, policy),
        policy,
        GallerySettings(),
        lambda d: None,
    ).apply(sealed.seal(people(2), "lobby", 9, "cd" * 32, KEY, [key.public], embedder="mobilefacenet_int8"))
    with pytest.raises(StoredForAnotherEmbedder) as moved:
        other.store.load()
    assert (moved.value.error.step, moved.value.error.version) == ("model", 9) and str(path) in str(moved.value)
    assert moved.value.error.reason.startswith(
        "made for embedder mobilefacenet_int8 (sha256 cdcdcdcdcdcd…), this device runs "
    )
    assert moved.value.error.reason.endswith("enrol again from the photos with this device's embedder (docs/models.md)")
    # Another gallery's: the device follows another name now.
    path.unlink()
    assert other.apply(sealed.seal(people(2), "lobby", 3, SHA, KEY, [key.public]))
    garden = Policy((KEY.public_key(),), SHA, "garden", 1 << 20, device_key=key)
    with pytest.raises(InputError) as e:
        GalleryStore(path.parent, garden).load()
    assert str(e.value) == (
        f"stored gallery {path}: gallery bundle rejected at gallery: it is gallery 'lobby', this "
        "device follows 'garden'; restore it or delete it to start without"
    )


def test_a_store_that_cannot_be_written_is_refused_at_step_store_and_nothing_changes(tmp_path: Path) -> None:
    key = ensure_key(tmp_path / "door")[0]
    states: list[GalleryState] = []
    sync = sync_for(tmp_path / "door", key, states)
    path = sync.store.current_path
    path.mkdir(parents=True)  # a folder where the file goes: every write fails
    (path / "x").write_text("")
    assert not sync.apply(sealed.seal(people(2), "lobby", 3, SHA, KEY, [key.public]))
    error = states[-1].error
    assert error is not None and (error.step, error.rejected_version) == ("store", 3)
    assert error.reason.startswith(f"cannot write {path}: ") and sync.version is None
    (path / "x").unlink()
    path.rmdir()
    assert sync.apply(sealed.seal(people(2), "lobby", 3, SHA, KEY, [key.public]))
    path.unlink()
    path.mkdir()
    (path / "x").write_text("")
    assert not sync.apply(
        sealed.seal(
            [Identity("id0", None, np.zeros((0, DIM), np.float32), {})],
            "lobby",
            4,
            SHA,
            KEY,
            [key.public],
            kind="removal",
        )
    )
    error = states[-1].error
    assert error is not None and (error.step, error.rejected_version) == ("store", 4)
    assert error.reason.startswith("cannot write the removal: ")
    assert sync.version == 3 and sync.holder.current.gallery.identity_ids == ("id0", "id1")  # nothing changed


def test_wipe_deletes_every_stored_form_and_says_whether_there_was_one(tmp_path: Path) -> None:
    from edge.gallery.store import LEGACY, LEGACY_REMOVALS

    key = ensure_key(tmp_path / "door")[0]
    store = sync_for(tmp_path / "door", key).store
    assert store.wipe() is False
    folder = store.folder
    (folder / LEGACY_REMOVALS).mkdir(parents=True)
    (folder / LEGACY).write_bytes(b"old")
    (folder / LEGACY_REMOVALS / "v000000000003.bundle").write_bytes(b"old removal")
    (folder / NEXT).write_bytes(b"half a rotation")
    assert store.wipe() is True
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == []


def test_the_sealed_framing_is_read_from_its_lengths_and_each_fault_is_named_at_its_boundary() -> None:
    from edge.gallery.bundle import MAX_HEADER, BundleError

    def framed(*parts: bytes, tail: int = 96) -> bytes:
        return sealed.MAGIC + b"".join(struct.pack("<I", len(p)) + p for p in parts) + bytes(tail)

    def refused(data: bytes) -> str:
        with pytest.raises(BundleError) as e:
            sealed.frame(data)
        assert e.value.step == "parse"
        return e.value.reason

    smallest = framed(b"", b"", b"")
    assert len(smallest) == len(sealed.MAGIC) + 12 + 96 and sealed.frame(smallest).head_end == len(smallest) - 96
    assert refused(smallest[:-1]) == "not a sealed gallery bundle (bad magic or too short)"
    assert refused(b"EDGEGAL1" + smallest[8:]) == "not a sealed gallery bundle (bad magic or too short)"
    # A length that runs past the end: 3 bytes left where the next 4-byte length should be, and 4 (enough).
    assert refused(sealed.MAGIC + struct.pack("<I", 200) + bytes(203)) == "truncated before the recipients"
    assert refused(sealed.MAGIC + struct.pack("<I", 200) + bytes(204)) == "truncated before the content"  # 4: read
    assert refused(sealed.MAGIC + struct.pack("<I", 200) + bytes(200) + struct.pack("<I", 0) + bytes(3)) == (
        "truncated before the content"
    )
    at_limit = framed(bytes(MAX_HEADER), b"", b"")
    assert sealed.frame(at_limit).header == (12, 12 + MAX_HEADER)  # exactly the limit: read
    assert (
        refused(framed(bytes(MAX_HEADER + 1), b"", b"")) == f"header length {MAX_HEADER + 1} exceeds {MAX_HEADER} bytes"
    )
    too_many = sealed.RECIPIENT_LEN * sealed.MAX_RECIPIENTS + 1
    assert refused(sealed.MAGIC + struct.pack("<I", 0) + struct.pack("<I", too_many) + bytes(200)) == (
        f"recipients length {too_many} exceeds {too_many - 1} bytes"
    )
    padded = framed(b"{}", b"", b"abc", tail=97)
    assert refused(padded) == f"{len(padded)} bytes, the lengths inside imply {len(padded) - 1} (truncated or padded)"
    f = sealed.frame(framed(b"{}", bytes(5), b"abc"))
    assert (f.header, f.recipients, f.content) == ((12, 14), (18, 23), (27, 30)) and f.head_end == 30
    with pytest.raises(BundleError, match=r"^gallery bundle rejected at parse: header is not valid JSON"):
        sealed.verify(
            resealed(
                sealed.seal(people(1), "lobby", 1, SHA, KEY, [ensure_key_in_memory().public]), header=b"{not json"
            ),
            [KEY.public_key()],
        )


def ensure_key_in_memory() -> DeviceKey:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return DeviceKey(X25519PrivateKey.generate(), Path("device.key"))


def test_seal_refuses_no_recipient_and_the_same_one_twice() -> None:
    one = ensure_key_in_memory()
    with pytest.raises(ValueError, match=r"^a sealed bundle needs at least one recipient$"):
        sealed.seal(people(1), "lobby", 1, SHA, KEY, [])
    with pytest.raises(ValueError, match=r"^the same recipient key is given twice$"):
        sealed.seal(people(1), "lobby", 1, SHA, KEY, [one.public, one.public])
    data = sealed.seal(people(1), "lobby", 1, SHA, KEY, [one.public])
    header = data[12 : 12 + struct.unpack_from("<I", data, 8)[0]]
    assert b", " not in header and b": " not in header  # compact: the clear header says no more than it must
    assert sealed.peek(data)["signer_key_id"] == sealed.peek(data)["signer_key_id"] and sealed.recipients_of(data) == [
        one.key_id.hex()
    ]


def test_a_format_1_store_moves_with_every_removal_its_time_and_its_refusals(tmp_path: Path) -> None:
    import os

    from edge.errors import InputError
    from edge.gallery.bundle import encode, frame
    from edge.gallery.store import StoredForAnotherEmbedder, head_digest

    state = tmp_path / "door"
    key = ensure_key(state)[0]
    folder = state / "gallery"
    (folder / "removals").mkdir(parents=True)
    full = encode(people(4), "lobby", 0, SHA, KEY)
    (folder / "current.bundle").write_bytes(full)
    os.utime(folder / "current.bundle", (1_700_000_000, 1_700_000_000))
    for version, gone in ((5, "id1"), (6, "id2")):
        removal = encode(
            [Identity(gone, None, np.zeros((0, DIM), np.float32), {})], "lobby", version, SHA, KEY, kind="removal"
        )
        (folder / "removals" / f"v{version:012d}.bundle").write_bytes(removal)
    sync = sync_for(state, key)
    assert sync.load_from_disk() and sync.holder.current.gallery.identity_ids == ("id0", "id3")
    applied = sync.applied
    assert applied is not None and (applied.version, applied.removed_count) == (6, 2)
    assert applied.applied_at == "2023-11-14T22:13:20+00:00"  # when it was stored then, in UTC
    f = frame(full)
    assert applied.head == head_digest(full) == __import__("hashlib").sha256(full[: f.body_start]).digest()
    zeroed = full[: f.body_start] + bytes(len(full) - f.body_start)
    assert head_digest(zeroed) == applied.head  # format 1: blocks zeroed by removals keep the head's digest
    assert head_digest(b"neither format") is None
    # A format 1 store with nothing removed keeps its own version (0 here).
    (state / "gallery" / "current.sealed").unlink()
    (folder / "current.bundle").write_bytes(full)
    assert sync_for(state, key).load_from_disk() and sync_for(state, key).applied is None
    again = sync_for(state, key)
    assert again.load_from_disk() and again.version == 0
    # One made for another embedder is not damage; a damaged one is named.
    (state / "gallery" / "current.sealed").unlink()
    (folder / "current.bundle").write_bytes(encode(people(1), "lobby", 2, "cd" * 32, KEY))
    with pytest.raises(StoredForAnotherEmbedder) as moved:
        sync_for(state, key).store.load()
    assert moved.value.error.step == "model" and str(folder / "current.bundle") in str(moved.value)
    (folder / "current.bundle").write_bytes(full[:-3])
    with pytest.raises(InputError) as damaged:
        sync_for(state, key).store.load()
    assert str(damaged.value).startswith(f"stored gallery {folder / 'current.bundle'}: gallery bundle rejected at ")
    assert str(damaged.value).endswith("; restore it or delete it to start without")


def test_a_store_without_the_device_key_says_what_it_needs(tmp_path: Path) -> None:
    from edge.errors import InputError

    store = GalleryStore(tmp_path, Policy((KEY.public_key(),), SHA))
    with pytest.raises(InputError) as e:
        store.store_full(b"", sealed_bundle_stub())
    assert str(e.value) == "the gallery store needs the device key (it seals the gallery under it)"


def sealed_bundle_stub() -> Bundle:
    return Bundle("lobby", 1, "full", "2026-01-01T00:00:00+00:00", SHA, (), "signer")


def sealed_with_content(plain: bytes, device: DeviceKey, version: int = 6, recipients: int = 1) -> bytes:
    """A bundle sealed to ``device`` (and ``recipients - 1`` others) whose decrypted content is ``plain`` as
    given, signed by the trusted key: what a publisher with a bug could send."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    others = [ensure_key_in_memory() for _ in range(recipients - 1)]
    keys_ = [*others, device]
    header = json.dumps(
        {
            "format": 2,
            "gallery": "lobby",
            "version": version,
            "kind": "full",
            "created_at": "2026-12-06T00:00:00+00:00",
            "embedder_sha256": SHA,
            "suite": sealed.SUITE_NAME,
            "recipients": [k.key_id.hex() for k in keys_],
        },
        separators=(",", ":"),
    ).encode()
    cek = AESGCM.generate_key(bit_length=256)
    info = sealed._INFO + hashlib.sha256(header).digest()
    blocks = b"".join(k.key_id + sealed._SUITE.encrypt(cek, k.public, info=info) for k in keys_)
    nonce = bytes(sealed.NONCE_LEN)
    return resealed_parts(header, blocks, nonce + AESGCM(cek).encrypt(nonce, plain, header))


def resealed_parts(header: bytes, recipients: bytes, content: bytes) -> bytes:
    from edge.gallery.bundle import key_id

    head = sealed.MAGIC + b"".join(struct.pack("<I", len(p)) + p for p in (header, recipients, content))
    return head + key_id(KEY.public_key()) + KEY.sign(head)


def test_every_fault_of_the_decrypted_content_is_named_with_the_bundles_version(tmp_path: Path) -> None:
    from edge.gallery.bundle import BundleError

    device = ensure_key_in_memory()
    policy = Policy((KEY.public_key(),), SHA, "lobby", 1 << 20, device_key=device)
    from edge.gallery.admit import admit

    layout = json.dumps({"identities": 1, "embeddings": 1, "dim": 2, "dtype": "float32"}).encode()
    block = np.array([[0.6, 0.8]], "<f4").tobytes()
    index = json.dumps(
        [{"id": "a", "label": "A", "count": 1, "meta": {}, "sha256": __import__("hashlib").sha256(block).hexdigest()}]
    ).encode()

    def part(b: bytes) -> bytes:
        return struct.pack("<I", len(b)) + b

    good = part(layout) + part(index) + block
    (a,) = admit(sealed_with_content(good, device), policy).identities
    assert (a.id, a.label) == ("a", "A") and np.allclose(a.embeddings, [[0.6, 0.8]])
    cases = {
        b"": ("parse", "content truncated before the layout"),
        b"\x00\x00\x00": ("parse", "content truncated before the layout"),
        part(layout)[:-1]: ("parse", "content truncated inside the layout"),
        part(layout): ("parse", "content truncated before the identity index"),
        part(layout) + struct.pack("<I", 5) + b"[]": ("parse", "content truncated inside the identity index"),
        part(b"[]") + part(index) + block: ("parse", "content (top): Input should be a valid dictionary"),
        part(layout) + part(b"{}") + block: ("parse", "content (top): Input should be a valid list"),
        part(layout) + part(index) + block[:-1]: ("signature", "body is 7 bytes, the signed index implies 8"),
        part(b"{bad") + part(index): ("parse", "layout is not valid JSON"),
        part(layout) + struct.pack("<I", 0): ("parse", "identity index is not valid JSON"),  # exactly 4 bytes left
    }
    for plain, (step, words) in cases.items():
        with pytest.raises(BundleError) as e:
            admit(sealed_with_content(plain, device), policy)
        assert (e.value.step, e.value.version) == (step, 6) and e.value.reason.startswith(words), (plain, e.value)
    assert part(layout) + part(index) + block == good  # the exact edge: every length read fits


def test_every_envelope_refusal_carries_the_bundles_version_and_says_how_many_recipients(tmp_path: Path) -> None:
    from edge.gallery.admit import admit
    from edge.gallery.bundle import BundleError

    device, other = ensure_key_in_memory(), ensure_key_in_memory()
    policy = Policy((KEY.public_key(),), SHA, "lobby", 1 << 20, device_key=device)

    def refusal(data: bytes) -> BundleError:
        with pytest.raises(BundleError) as e:
            admit(data, policy)
        return e.value

    one = refusal(sealed.seal(people(1), "lobby", 8, SHA, KEY, [other.public]))
    assert (one.step, one.version) == ("recipient", 8)
    assert one.reason == (
        f"this device (key {device.short_id}) is not among the bundle's 1 recipient: it was encrypted for other devices"
    )
    three = refusal(
        sealed.seal(people(1), "lobby", 8, SHA, KEY, [other.public, *(ensure_key_in_memory().public for _ in range(2))])
    )
    assert "not among the bundle's 3 recipients: it was" in three.reason
    both = sealed.seal(people(1), "lobby", 9, SHA, KEY, [other.public, device.public])
    f = sealed.frame(both)
    blocks = both[f.recipients[0] : f.recipients[1]]
    header, content = both[f.header[0] : f.header[1]], both[f.content[0] : f.content[1]]
    cases = [
        (
            resealed_parts(header, blocks[sealed.RECIPIENT_LEN :] + blocks[: sealed.RECIPIENT_LEN], content),
            "key block 1 is not the one the header lists there (swapped or altered blocks)",
        ),
        (
            resealed_parts(header, blocks[:-1], content),
            f"{len(blocks) - 1} bytes of key blocks for 2 recipients (each is {sealed.RECIPIENT_LEN})",
        ),
        (
            resealed_parts(
                header, blocks[: sealed.RECIPIENT_LEN] + device.key_id + blocks[32 : sealed.RECIPIENT_LEN], content
            ),
            f"the key block for this device (key {device.short_id}) does not open with its private key (a block made for "
            "another key, or altered)",
        ),
        (
            resealed_parts(header, blocks, content[: sealed.NONCE_LEN + 15]),
            f"content of {sealed.NONCE_LEN + 15} bytes is too short (truncated)",
        ),
        (
            resealed_parts(header, blocks, content[:-1] + bytes([content[-1] ^ 1])),
            "the content does not decrypt with its content key (wrong tag: altered, or not the key it was sealed with)",
        ),
    ]
    for data, reason in cases:
        e = refusal(data)
        assert e.version == 9 and e.reason == reason and e.step in ("recipient", "decrypt"), (reason, e.reason)
    shortest = resealed_parts(header, blocks, content[: sealed.NONCE_LEN + 16])  # long enough to try: wrong tag
    assert refusal(shortest).reason.startswith("the content does not decrypt")
    dup_header = json.loads(header)
    dup_header["recipients"] = [device.key_id.hex()] * 2
    e = refusal(resealed_parts(json.dumps(dup_header).encode(), blocks[sealed.RECIPIENT_LEN :] * 2, content))
    assert (e.step, e.version, e.reason) == ("recipient", 9, "a recipient is listed twice")


def test_peek_reads_the_clear_header_and_names_the_signer_without_verifying() -> None:
    from edge.gallery.bundle import BundleError, key_id

    device = ensure_key_in_memory()
    data = sealed.seal(people(1), "lobby", 4, SHA, KEY, [device.public])
    head = sealed.peek(data)
    assert head["signer_key_id"] == key_id(KEY.public_key()).hex()[:16] and head["version"] == 4
    f = sealed.frame(data)
    not_object = resealed_parts(b"[1, 2]", data[f.recipients[0] : f.recipients[1]], data[f.content[0] : f.content[1]])
    with pytest.raises(BundleError) as e:
        sealed.peek(not_object)
    assert (e.value.step, e.value.reason) == ("parse", "header is not a JSON object")
    with pytest.raises(BundleError, match="header is not valid JSON"):
        sealed.peek(resealed_parts(b"{x", b"", b""))


def test_a_format_1_store_that_cannot_be_moved_is_one_line_and_stays_as_it_was(tmp_path: Path) -> None:
    from edge.errors import InputError
    from edge.gallery.bundle import encode

    state = tmp_path / "door"
    key = ensure_key(state)[0]
    folder = state / "gallery"
    folder.mkdir(parents=True)
    legacy = encode(people(2), "lobby", 4, SHA, KEY)
    (folder / "current.bundle").write_bytes(legacy)
    (folder / "current.sealed.tmp").mkdir()  # where the sealed store is written first: the write fails
    (folder / "current.sealed.tmp" / "x").write_text("")
    with pytest.raises(InputError) as e:
        sync_for(state, key).store.load()
    assert str(e.value).startswith(
        f"stored gallery {folder / 'current.bundle'} cannot be moved into {folder / 'current.sealed'}: "
    )
    assert (folder / "current.bundle").read_bytes() == legacy and not (folder / "current.sealed").exists()
    (folder / "current.sealed.tmp" / "x").unlink()
    (folder / "current.sealed.tmp").rmdir()
    assert sync_for(state, key).load_from_disk()  # the next start moves it
