"""Signed gallery bundles: format, signature, the device's checks, enrolment CLI."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cli import main
from edge.gallery.admit import to_gallery, verify_bundle
from edge.gallery.bundle import BundleError, Identity, encode, generate_key, load_private_key, load_public_key
from edge.recognition.pipeline import Recognizer

from .conftest import FACES
from .support import sealed_for

SHA = "ab" * 32


def identities(n: int, per: int = 2, seed: int = 0) -> list[Identity]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        v = rng.normal(size=(per, 192)).astype(np.float32)
        out.append(Identity(f"id{i}", f"Person {i}", v / np.linalg.norm(v, axis=1, keepdims=True), {}))
    return out


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_round_trip_keeps_embeddings_and_metadata(key: Ed25519PrivateKey) -> None:
    ids = identities(3)
    ids[1] = Identity("id1", None, ids[1].embeddings, {"purpose": "access", "expires_at": "2099-01-01T00:00:00+00:00"})
    data = encode(ids, "lobby", 7, SHA, key)
    b = verify_bundle(data, [key.public_key()], SHA)
    assert (b.gallery, b.version, b.kind) == ("lobby", 7, "full")
    assert [i.id for i in b.identities] == ["id0", "id1", "id2"] and b.identities[1].meta["purpose"] == "access"
    for a, c in zip(ids, b.identities, strict=True):
        assert (a.embeddings * c.embeddings).sum(axis=1).min() > 0.9999  # float16 storage
    g = to_gallery(b)
    assert g.version == 7 and len(g) == 3


@pytest.mark.parametrize(
    ("mutate", "step"),
    [
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "signature"),
        (lambda d: d[: len(d) // 2], "signature"),
        (lambda d: b"garbage" * 50, "parse"),
        (lambda d: b"", "parse"),
    ],
    ids=["flipped-byte", "truncated", "garbage", "empty"],
)
def test_damaged_bundles_are_rejected_naming_the_step(key: Ed25519PrivateKey, mutate: object, step: str) -> None:
    data = encode(identities(2), "lobby", 2, SHA, key)
    with pytest.raises(BundleError) as exc:
        verify_bundle(mutate(data), [key.public_key()], SHA)  # type: ignore[operator]
    assert exc.value.step == step


def test_untrusted_key_replay_and_other_model_are_rejected(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(BundleError, match="not trusted") as e1:
        verify_bundle(encode(identities(1), "g", 3, SHA, other), [key.public_key()], SHA)
    assert e1.value.step == "signature"
    v1 = encode(identities(1), "g", 1, SHA, key)
    with pytest.raises(BundleError, match="not above the applied version 2") as e2:
        verify_bundle(v1, [key.public_key()], SHA, current_version=2)
    assert e2.value.step == "version"
    rollback = encode(identities(1), "g", 1, SHA, key, kind="rollback")
    assert verify_bundle(rollback, [key.public_key()], SHA, current_version=2).version == 1
    with pytest.raises(BundleError, match="made for embedder") as e3:
        verify_bundle(encode(identities(1), "g", 3, "cd" * 32, key), [key.public_key()], SHA)
    assert e3.value.step == "model"
    with pytest.raises(BundleError) as e4:
        verify_bundle(v1, [key.public_key()], SHA, max_bytes=1024)
    assert e4.value.step == "size"


def test_expired_identities_do_not_match(key: Ed25519PrivateKey) -> None:
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    ids = identities(2)
    ids[0] = Identity("id0", None, ids[0].embeddings, {"expires_at": past})
    g = to_gallery(verify_bundle(encode(ids, "g", 1, SHA, key), [key.public_key()], SHA))
    assert g.identity_ids == ("id1",)


def test_ten_thousand_identities_fit_and_apply(key: Ed25519PrivateKey) -> None:
    """How long applying takes is measured by ``edge bench --bundle`` (docs/performance.md)."""
    ids = identities(10_000, per=5)
    data = encode(ids, "fleet", 1, SHA, key, dtype="int8")
    assert len(data) <= 20 * 1024 * 1024
    g = to_gallery(verify_bundle(data, [key.public_key()], SHA))
    assert len(g) == 10_000 and g.embeddings.shape == (50_000, 192)
    probe = ids[1234].embeddings[2]
    assert g.identity_ids[int(np.argmax(g.scores(probe[None])[0]))] == "id1234"


def test_keygen_enroll_verify_inspect_and_run_with_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keyfile = tmp_path / "signing.pem"
    assert main(["gallery", "keygen", "--out", str(keyfile)]) == 0
    assert (os.stat(keyfile).st_mode & 0o777) == 0o600
    assert main(["gallery", "keygen", "--out", str(keyfile)]) == 2  # never overwritten
    photos = tmp_path / "photos"
    for name in ("Colin_Powell", "Venus_Williams"):
        (photos / name).mkdir(parents=True)
        for p in sorted((FACES / name).glob("*.jpg"))[:3]:
            (photos / name / p.name).write_bytes(p.read_bytes())
    (photos / "Colin_Powell" / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "Colin_Powell" / "identity.toml").write_text('label = "Colin Powell"\npurpose = "demo"\n')
    out = tmp_path / "g.bundle"
    capsys.readouterr()
    # The device's key, printed as one line on the device; the operator seals the gallery to it.
    assert main(["device", "key", "--state-dir", str(tmp_path / "door")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("x25519:") and (os.stat(tmp_path / "door" / "device.key").st_mode & 0o777) == 0o600
    assert (os.stat(tmp_path / "door").st_mode & 0o777) == 0o700
    assert main(["device", "key", "--state-dir", str(tmp_path / "door")]) == 0
    assert capsys.readouterr().out.strip() == line  # the same key, not a new one
    enroll = [
        "enroll",
        str(photos),
        "--out",
        str(out),
        "--key",
        str(keyfile),
        "--gallery-name",
        "lobby",
        "--version",
        "4",
        "--json",
    ]
    assert main(enroll) == 2  # no recipient: refused, saying how
    assert "--recipient KEY" in capsys.readouterr().err and not out.exists()
    assert main([*enroll, "--recipient", line]) == 0
    report = json.loads(capsys.readouterr().out)
    colin = next(r for r in report["identities"] if r["identity_id"] == "Colin_Powell")
    assert "broken.jpg" in colin["rejected"] and colin["label"] == "Colin Powell" and len(colin["accepted"]) >= 2
    data = out.read_bytes()
    assert b"JFIF" not in data  # no photo in the bundle
    assert b"Colin" not in data and b"Venus" not in data  # nor a name: sealed
    assert main(["gallery", "verify", str(out), "--trusted-key", f"{keyfile}.pub"]) == 0
    assert "gallery lobby v4 (full), sealed to 1 device; contents not opened" in capsys.readouterr().out
    device_key = str(tmp_path / "door" / "device.key")
    assert main(["gallery", "verify", str(out), "--trusted-key", f"{keyfile}.pub", "--device-key", device_key]) == 0
    assert "gallery lobby v4, sealed to 1 device, 2 identities, " in capsys.readouterr().out
    assert main(["gallery", "inspect", str(out)]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["version"] == 4 and header["gallery"] == "lobby" and header["embedder"] == "sface_int8"
    assert "Colin" not in json.dumps(header) and len(header["recipients"]) == 1
    # Another device's key does not open it: one line naming the step.
    assert main(["device", "key", "--state-dir", str(tmp_path / "yard")]) == 0
    yard = str(tmp_path / "yard" / "device.key")
    capsys.readouterr()
    assert main(["gallery", "verify", str(out), "--trusted-key", f"{keyfile}.pub", "--device-key", yard]) == 2
    err = capsys.readouterr().err
    assert "rejected at recipient: this device (key " in err and len(err.strip().splitlines()) == 1
    # In the clear only when asked for, and said.
    clear = tmp_path / "clear.bundle"
    assert main([*enroll[:2], "--out", str(clear), *enroll[4:], "--plaintext"]) == 0
    assert b"Colin" in clear.read_bytes() and "in the clear" in capsys.readouterr().err
    assert main([*enroll, "--recipient", line, "--plaintext"]) == 2
    # Without --gallery-name it is said which name the gallery gets; one identity is "1 identity".
    single = tmp_path / "one"
    (single / "Colin_Powell").mkdir(parents=True)
    for p in sorted((FACES / "Colin_Powell").glob("*.jpg"))[:3]:
        (single / "Colin_Powell" / p.name).write_bytes(p.read_bytes())
    one = ["enroll", str(single), "--out", str(tmp_path / "one.bundle"), "--key", str(keyfile)]
    assert main([*one, "--recipient", str(tmp_path / "door" / "missing.pub")]) == 2  # neither a line nor a file
    assert "neither a key line" in capsys.readouterr().err
    (tmp_path / "door.pub").write_text(line + "\n")
    assert main([*one, "--recipient", str(tmp_path / "door.pub")]) == 0
    said = capsys.readouterr()
    assert "no --gallery-name: the gallery is named 'default'" in said.err
    assert "gallery default v1, 1 identity, " in said.out
    other = tmp_path / "other.pem"
    generate_key(other)
    assert main(["gallery", "verify", str(out), "--pubkey", f"{other}.pub"]) == 2
    assert load_public_key(Path(f"{keyfile}.pub")) and load_private_key(keyfile)


def test_parts_reassemble_in_any_order_and_corruption_is_named() -> None:
    from edge.gallery.chunks import Assembler, base_topic, split

    data = bytes(range(256)) * 100  # 25,600 bytes
    msgs = split(data, 4096)
    assert len(msgs) > 2 and msgs[-1][0] == "" and all(m[0].startswith("/part/") for m in msgs[:-1])
    asm = Assembler(max_bytes=1 << 20)
    out = [asm.feed(p) for _, p in reversed(msgs)]  # pointer first, then parts backwards
    assert out[-1] == data and all(o is None for o in out[:-1])
    assert split(data, 1 << 20) == [("", data)] and Assembler(1 << 20).feed(data) == data
    assert (
        base_topic("edge/galleries/x/part/3") == "edge/galleries/x"
        and base_topic("edge/galleries/x") == "edge/galleries/x"
    )
    bad = [(t, p[:-1] + bytes([p[-1] ^ 1])) if t == "/part/1" else (t, p) for t, p in msgs]
    asm2 = Assembler(max_bytes=1 << 20)
    with pytest.raises(BundleError, match="do not match their sha256"):
        for _, p in bad:
            asm2.feed(p)


def test_enroll_fails_on_an_identity_without_usable_photo_unless_skipped(tmp_path: Path) -> None:
    keyfile = tmp_path / "k.pem"
    generate_key(keyfile)
    photos = tmp_path / "photos"
    (photos / "Laura_Bush").mkdir(parents=True)
    (photos / "Laura_Bush" / "a.jpg").write_bytes((FACES / "Laura_Bush" / "Laura_Bush_0016.jpg").read_bytes())
    (photos / "Nobody").mkdir()
    (photos / "Nobody" / "blank.jpg").write_bytes(b"\xff\xd8 not really")
    out = tmp_path / "g.bundle"
    enroll = ["enroll", str(photos), "--out", str(out), "--key", str(keyfile), "--plaintext"]
    assert main(enroll) == 2
    assert not out.exists()  # nothing half-written
    assert main([*enroll, "--skip-failed"]) == 0
    assert out.is_file()


def test_damaged_stored_gallery_is_named_at_start_up(tmp_path: Path, recognizer: Recognizer) -> None:
    from edge.device.keys import DeviceKey, ensure_key
    from edge.device.settings import GallerySettings
    from edge.errors import InputError
    from edge.gallery.admit import Policy
    from edge.gallery.store import SEALED, GalleryStore
    from edge.gallery.sync import GallerySync
    from edge.recognition.match import GalleryHolder

    key = Ed25519PrivateKey.generate()
    mine = ensure_key(tmp_path / "state")[0]

    def sync(device: DeviceKey = mine) -> GallerySync:
        policy = Policy((key.public_key(),), recognizer.embedder_sha256, "g", 1 << 20, device_key=device)
        return GallerySync(
            GalleryHolder(recognizer.matcher), GalleryStore(tmp_path, policy), policy, GallerySettings(), lambda b: None
        )

    first = sync()
    assert first.apply(sealed_for([tmp_path / "state"], identities(2), "g", 3, recognizer.embedder_sha256, key))
    assert first.version == 3 and sync().load_from_disk()  # it opens again
    other = ensure_key(tmp_path / "other")[0]  # a key put in place of the device's
    with pytest.raises(InputError, match=r"stored gallery .*current\.sealed does not open with this device's key"):
        sync(other).load_from_disk()
    stored = tmp_path / SEALED
    stored.write_bytes(stored.read_bytes()[:-10])  # damaged on disk
    with pytest.raises(InputError, match=r"stored gallery .*current\.sealed does not open with this device's key"):
        sync().load_from_disk()


def test_a_bundle_path_that_is_no_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe.bundle"
    os.mkfifo(fifo)  # reading it would block forever
    (tmp_path / "folder.bundle").mkdir()
    (tmp_path / "empty.bundle").write_bytes(b"")
    for name, why in [
        ("pipe.bundle", "is not a regular file"),
        ("folder.bundle", "is a folder, not a file"),
        ("empty.bundle", "is empty"),
        ("missing.bundle", "does not exist"),
    ]:
        assert main(["gallery", "inspect", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"edge: gallery bundle {tmp_path / name} {why}", err


def test_a_bundle_for_another_embedder_is_refused_naming_both(key: Ed25519PrivateKey) -> None:
    from edge.gallery.admit import Policy, admit

    sface, mfn = "11" * 32, "22" * 32
    policy = Policy(
        (key.public_key(),),
        sface,
        None,
        1 << 20,
        {sface: "sface_int8", mfn: "mobilefacenet_int8"},
        allow_plaintext=True,
    )
    old = encode(identities(1), "g", 3, mfn, key)  # made before bundles named their embedder: the sha says which
    with pytest.raises(
        BundleError, match=r"made for embedder mobilefacenet_int8 \(sha256 222222.*this device runs sface_int8"
    ) as e:
        admit(old, policy)
    assert e.value.step == "model"
    named = encode(identities(1), "g", 3, "33" * 32, key, embedder="someone_elses")
    with pytest.raises(BundleError, match=r"made for embedder someone_elses \(sha256 333333.*runs sface_int8"):
        admit(named, policy)
    assert admit(encode(identities(1), "g", 3, sface, key, embedder="sface_int8"), policy).embedder_sha256 == sface


def test_a_bundle_for_this_embedder_but_of_another_dimension_is_refused(key: Ed25519PrivateKey) -> None:
    from edge.gallery.admit import Policy, admit

    policy = Policy((key.public_key(),), SHA, None, 1 << 20, {}, 128, allow_plaintext=True)
    with pytest.raises(BundleError, match="templates of 192 dimensions, this device's embedder gives 128") as e:
        admit(encode(identities(1), "g", 3, SHA, key), policy)  # signed, the right sha, 192-d rows
    assert e.value.step == "model"
    assert admit(encode(identities(0), "g", 4, SHA, key), policy).identities == ()  # an empty gallery has no rows


def test_keygen_refuses_a_private_key_inside_a_git_work_tree_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / "sub").mkdir()
    assert main(["gallery", "keygen", "--out", str(checkout / "sub" / "owner.pem")]) == 2
    err = capsys.readouterr().err
    assert "inside the git work tree" in err and str(checkout) in err and "--force" in err
    assert not (checkout / "sub" / "owner.pem").exists()
    assert main(["gallery", "keygen", "--out", str(checkout / "owner.pem"), "--force"]) == 0
    assert (checkout / "owner.pem").stat().st_mode & 0o777 == 0o600
    assert main(["gallery", "keygen", "--out", str(tmp_path / "owner.pem")]) == 0  # outside: as before
