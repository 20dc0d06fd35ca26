"""Over-the-air gallery sync against a real Mosquitto: apply, reject, expire, restart."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cli import main
from edge.device.keys import DeviceKey, public_line
from edge.device.runtime import load_manifest
from edge.device.settings import Settings
from edge.gallery import sealed
from edge.gallery.admit import Policy
from edge.gallery.bundle import Identity, encode, load_private_key, load_public_key
from edge.gallery.store import GalleryStore

from .support import Collector, certificates, device_key
from .test_service_e2e import DemoAssets, LocalBroker, assets, service  # noqa: F401

pytestmark = pytest.mark.slow
DIM = load_manifest().embedder(Settings().models.embedder).dim  # the default device's template size


class Watch(Collector):
    """Gallery state and match events of cam1, as any consumer sees them."""

    def __init__(self, b: LocalBroker, ca: Path) -> None:
        super().__init__(b.host, b.port, "edge/cam1/gallery/state", "edge/cam1/events/match", client_id="watch", ca=ca)

    @property
    def states(self) -> list[dict[str, object]]:
        return list(self.on("gallery/state"))

    @property
    def events(self) -> list[dict[str, object]]:
        return list(self.on("events/match"))

    def state_where(
        self,
        pred: Callable[[dict[str, object]], bool],
        timeout: float = 20,
        since: int = 0,
        context: Callable[[], str] = lambda: "",
    ) -> dict[str, object]:
        """The latest state message at position >= ``since`` that satisfies ``pred``; on failure
        the last states and ``context()`` (e.g. the service's log) are shown."""
        found: list[dict[str, object]] = []

        def check() -> bool:
            found[:] = [s for s in self.states[since:] if pred(s)]
            return bool(found)

        assert self.wait_until(check, timeout), (self.states[-3:], context())
        return found[-1]


@pytest.fixture()
def limited_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalBroker, Path]]:
    """A TLS broker (and its CA, which every client here pins) that refuses messages over 1 MiB, as many
    production brokers do."""
    certs = certificates(tmp_path_factory.mktemp("pki"))
    tls = (certs / "ca.pem", certs / "server.pem", certs / "server.key")
    with LocalBroker(message_size_limit=1 << 20, tls=tls) as b:
        yield b, certs / "ca.pem"


def retained(b: LocalBroker, ca: Path) -> bytes:
    """Every retained message on the broker, topics and payloads: what anyone allowed to subscribe reads."""
    grab = Collector(b.host, b.port, "#", client_id="everything", ca=ca)
    grab.wait_until(lambda: any(t.endswith("/status") for t, _, _ in grab.messages), 10)
    out = b"".join(t.encode() + (p if isinstance(p, bytes) else repr(p).encode()) for t, p, r in grab.messages if r)
    grab.close()
    return out


def state_files(state: Path) -> bytes:
    """Every file of a device's state directory but its audit log (which names matches by identity id)."""
    return b"".join(p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file() and "audit" not in p.parts)


def test_ota_gallery_lifecycle(
    limited_broker: tuple[LocalBroker, Path],
    assets: DemoAssets,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Over TLS with the CA pinned, as a device should run."""
    broker, ca = limited_broker
    keyfile = tmp_path / "owner.pem"
    assert main(["gallery", "keygen", "--out", str(keyfile)]) == 0
    key = load_private_key(keyfile)
    device = device_key(tmp_path)  # made as the device's first start would: its state directory is tmp_path
    v2_file = tmp_path / "v2.bundle"
    enroll = [
        "enroll",
        str(assets.gallery),
        "--out",
        str(v2_file),
        "--key",
        str(keyfile),
        "--gallery-name",
        "demo",
        "--version",
        "2",
        "--recipient",
        public_line(device.public),
    ]
    assert main(enroll) == 0
    v2 = v2_file.read_bytes()
    people = sealed.open_content(sealed.verify(v2, [load_public_key(Path(f"{keyfile}.pub"))]), device)
    sha = str(sealed.peek(v2)["embedder_sha256"])  # the devices' embedder, as enrolment used it
    names = [n.encode() for p in people for n in (p.id, p.label) if n] + [b"Colin", b"Venus"]

    def seal(
        ids: list[Identity],
        version: int,
        kind: str = "full",
        signer: Ed25519PrivateKey = key,
        to: list[Path] | None = None,
        embedder_sha: str = sha,
        dtype: str = "float16",
    ) -> bytes:
        recipients = [device.public] if to is None else [device_key(d).public for d in to]
        return sealed.seal(ids, "demo", version, embedder_sha, signer, recipients, kind, dtype)  # type: ignore[arg-type]

    v1 = seal([p for p in people if p.id in ("Colin_Powell", "Venus_Williams")], 1)
    w = Watch(broker, ca)
    w.publish("edge/galleries/demo", v1, retain=True)
    env = {"EDGE_TRACKING__COOLDOWN_S": "0", "EDGE_GALLERY__EXPIRY_CHECK_S": "1", "EDGE_MQTT__CA_FILE": str(ca)}
    args = [
        "--source",
        str(assets.clip),
        "--loop",
        "--gallery-name",
        "demo",
        "--trusted-key",
        f"{keyfile}.pub",
        "--broker",
        f"{broker.host}:{broker.port}",
    ]
    proc = service(args, tmp_path, env)
    try:
        s = w.state_where(lambda s: s.get("version") == 1)
        assert s["identities"] == 2 and s["gallery"] == "demo" and "error" not in s and s["sealed"] is True
        assert "waiting for gallery 'demo' over MQTT" in proc.text() and "no gallery configured" not in proc.text()

        w.publish("edge/galleries/demo", v2, retain=True)
        w.state_where(lambda s: s.get("version") == 2 and "error" not in s)
        w.wait_for("events/match", lambda e: e["gallery_version"] == 2 and e["identity_id"] == "Laura_Bush", 30)

        other_key = Ed25519PrivateKey.generate()
        end = sealed.frame(v2).head_end
        rejections = {
            "version": v1,  # replay
            "signature": v2[:200] + bytes([v2[200] ^ 1]) + v2[201:],
            "signature ": seal(list(people), 9, signer=other_key),  # untrusted signer
            "model": seal(list(people), 9, embedder_sha="0" * 64),
            "parse ": seal(list(people), 9)[:-100],  # truncated (a newer version)
            "signature  ": v2[:end] + bytes(96),  # unsigned
            "parse": b"\x00garbage" * 30,
            "recipient": seal(list(people), 9, to=[tmp_path / "another-device"]),  # for another device only
            "plaintext": encode(list(people), "demo", 9, sha, key),  # in the clear
        }
        for step, data in rejections.items():
            before = len(w.states)
            w.publish("edge/cam1/gallery/set", data)
            s = w.state_where(lambda s: "error" in s, since=before)
            assert s["error"]["step"] == step.strip(), (step, w.states[before - 1 :])  # type: ignore[index]
            assert s["version"] == 2 and s["identities"] == 4  # v2 still in force
        assert load_gallery_version(tmp_path, device, sha) == 2

        soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
        v3_people = [
            Identity(p.id, p.label, p.embeddings, {"expires_at": soon} if p.id == "Jean_Chretien" else p.meta)
            for p in people
        ]
        w.publish("edge/galleries/demo", seal(v3_people, 3), retain=True)
        w.state_where(lambda s: s.get("version") == 3 and s.get("identities") == 4)
        s = w.state_where(lambda s: s.get("version") == 3 and s.get("expired_count") == 1)
        assert s["identities"] == 3 and s["expired"] == []  # counted, not named: ids stay off the broker

        # A signed removal drops Venus Williams from matching and from disk at once.
        removal = seal([Identity("Venus_Williams", None, np.zeros((0, DIM), "float32"), {})], 4, kind="removal")
        w.publish("edge/cam1/gallery/set", removal)
        s = w.state_where(lambda s: s.get("version") == 4)
        assert s["removed_count"] == 1 and s["removed"] == [] and s["identities"] == 2 and "error" not in s
    finally:
        rc = proc.stop()
    assert rc == 0, proc.text()[-2000:]
    # Nothing names anyone enrolled: not a retained message on the broker, not a file of the device (its
    # audit log, which records matches by identity id, aside); the removed person not even for someone
    # holding the device's key.
    on_broker, on_disk = retained(broker, ca), state_files(tmp_path / "gallery") + state_files_outbox(tmp_path)
    assert [n for n in names if n in on_broker] == [] and [n for n in names if n in on_disk] == []
    store = GalleryStore(tmp_path / "gallery", Policy((), sha, device_key=device))
    kept = store._open(store.current_path.read_bytes())
    assert b"Venus_Williams" not in kept and b"Colin_Powell" in kept  # the key opens it: the removed are gone

    # A restart loads v4 from disk (opened with the device key) before anything arrives.
    before = len(w.states)
    again = service(
        [
            "--source",
            "/dev/video99",
            "--gallery-name",
            "demo",
            "--trusted-key",
            f"{keyfile}.pub",
            "--broker",
            f"{broker.host}:{broker.port}",
        ],
        tmp_path,
        env,
    )
    try:
        s = w.state_where(lambda s: s.get("version") == 4, since=before)
        assert "error" not in s and s["removed_count"] == 1 and s["identities"] == 2
        # A 10,000 × 5 bundle over MQTT.
        rng = np.random.default_rng(0)
        big = [
            Identity(
                f"p{i:05d}",
                None,
                (v := rng.normal(size=(5, DIM)).astype("float32")) / np.linalg.norm(v, axis=1, keepdims=True),
                {},
            )
            for i in range(10_000)
        ]
        big_file = tmp_path / "big.bundle"
        big_file.write_bytes(seal(big, 5, dtype="int8"))
        assert big_file.stat().st_size > 1 << 20  # too large for one message on this broker
        admin = tmp_path / "admin.toml"
        admin.write_text(f'[mqtt]\nca_file = "{ca}"\n')  # the publisher pins the CA too
        rc = main(
            [
                "gallery",
                "publish",
                str(big_file),
                "--config",
                str(admin),
                "--broker",
                f"{broker.host}:{broker.port}",
                "--device",
                "cam1",
                "--max-message",
                str(1 << 20),
            ]
        )
        assert rc == 0
        s = w.state_where(lambda s: s.get("version") == 5, timeout=60, context=lambda: again.text()[-4000:])
        assert s["identities"] == 10_000 and s["embeddings"] == 50_000 and s["removed_count"] == 0
    finally:
        again.stop()
    w.close()
    assert re.search(r"gallery demo v5 applied in [0-9.]+s", again.text()), again.text()[-2000:]
    # Home Assistant's per-person entities are opt-in ([homeassistant] per_person): nothing per identity here.
    assert "a presence sensor per identity" not in again.text()


def state_files_outbox(state: Path) -> bytes:
    return b"".join(p.read_bytes() for p in state.glob("outbox.sqlite*") if p.is_file())


def load_gallery_version(state: Path, device: DeviceKey, sha: str) -> int:
    applied = GalleryStore(state / "gallery", Policy((), sha, device_key=device)).load()
    assert applied is not None
    return applied.version


@pytest.fixture()
def plain_broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


def test_a_bundle_sealed_to_one_device_is_applied_there_and_refused_by_the_other_both_running(
    plain_broker: LocalBroker,
    assets: DemoAssets,  # noqa: F811
    tmp_path: Path,
) -> None:
    broker = plain_broker
    keyfile = tmp_path / "owner.pem"
    assert main(["gallery", "keygen", "--out", str(keyfile)]) == 0
    door = device_key(tmp_path / "door")
    bundle = tmp_path / "lobby.bundle"
    assert (
        main(
            [
                "enroll",
                str(assets.gallery),
                "--out",
                str(bundle),
                "--key",
                str(keyfile),
                "--gallery-name",
                "lobby",
                "--recipient",
                public_line(door.public),
            ]
        )
        == 0
    )
    states = Collector(broker.host, broker.port, "edge/+/gallery/state", "edge/+/status")
    states.publish("edge/galleries/lobby", bundle.read_bytes(), retain=True)
    args = [
        "--source",
        "/dev/video99",
        "--gallery-name",
        "lobby",
        "--trusted-key",
        f"{keyfile}.pub",
        "--broker",
        f"{broker.host}:{broker.port}",
    ]
    procs = {name: service(args, tmp_path / name, device=name) for name in ("door", "yard")}
    try:
        applied = states.wait_for("door/gallery/state", lambda s: s.get("version") == 1)
        assert applied["identities"] == 4 and applied["sealed"] is True and "error" not in applied
        refused = states.wait_for("yard/gallery/state", lambda s: "error" in s)
        assert refused["error"]["step"] == "recipient" and refused["identities"] == 0
        assert "is not among the bundle's 1 recipient" in refused["error"]["reason"]
        # Both still running, online, after the one applied and the other refused.
        assert all(p.proc.poll() is None for p in procs.values())
        for name in procs:
            states.wait_for(f"{name}/status", lambda s: s.get("state") == "online")
    finally:
        for p in procs.values():
            assert p.stop() == 0, p.text()[-2000:]
        states.close()
