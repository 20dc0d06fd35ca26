"""Home Assistant discovery on the device side: presence timing and stale entities, over a real broker.
(Home Assistant itself reads these messages in tests/ha, with its own code.)"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.delivery.events import Evidence, MatchEvent
from edge.delivery.homeassistant import HomeAssistant
from edge.delivery.mqtt import MqttLink, Topics
from edge.delivery.outbox import Outbox
from edge.demo.broker import LocalBroker
from edge.device.config import load_settings
from edge.device.settings import HomeAssistantSettings
from edge.recognition.match import Gallery, GalleryHolder, Matcher

from .support import Collector
from .test_match import CAL


@pytest.fixture()
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


def connected_link(broker: LocalBroker, tmp_path: Path, stop: threading.Event) -> MqttLink:
    s = load_settings(environ={}, overrides={"mqtt": {"host": broker.host, "port": broker.port}})
    return MqttLink(s.mqtt, Topics("edge", "door"), Outbox(tmp_path / "o.sqlite"), stop)


def event(ident: str, score: float = 0.8) -> MatchEvent:
    return MatchEvent(
        device_id="door",
        identity_id=ident,
        label=ident.title(),
        score=score,
        threshold=0.6,
        est_false_match_rate=1e-6,
        evidence=Evidence(agreed=3, seen=4),
        track_id=1,
        bbox=(0.1, 0.1, 0.2, 0.2),
        quality=0.9,
        model="m",
        gallery_version=1,
    )


def gallery(*ids: str) -> Gallery:
    eye = np.eye(192, dtype=np.float32)
    return Gallery.build([(i, i.title(), eye[k : k + 1]) for k, i in enumerate(ids)], version=1)


def discovering(
    broker: LocalBroker, tmp_path: Path, stop: threading.Event, settings: HomeAssistantSettings, include_label: bool
) -> tuple[MqttLink, GalleryHolder, HomeAssistant]:
    """A device's link with discovery attached, its gallery holding alice and carol, started."""
    link = connected_link(broker, tmp_path, stop)
    holder = GalleryHolder(Matcher(CAL, load_settings(environ={}).match))
    ha = HomeAssistant(settings, Topics("edge", "door"), link, include_label=include_label)
    ha.attach()
    holder.on_change(ha.on_gallery)
    holder.swap(gallery("alice", "carol"))
    link.start()
    return link, holder, ha


def test_presence_is_on_while_seen_and_off_after_the_timeout(broker: LocalBroker, tmp_path: Path) -> None:
    stop = threading.Event()
    link = connected_link(broker, tmp_path, stop)
    ha = HomeAssistant(
        HomeAssistantSettings(presence_timeout_s=10, per_person=True), Topics("edge", "door"), link, include_label=True
    )
    watch = Collector(broker.host, broker.port, "edge/door/presence/#")
    link.start()
    try:
        assert link.connected.wait(10)
        ha.presence.emit(event("alice"))
        on = watch.wait_for("presence/alice", lambda p: p["state"] == "ON")
        assert on["score"] == 0.8 and on["label"] == "Alice" and on["last_seen"]
        t0 = ha.presence._seen["alice"]
        ha.presence.seen({"alice"}, now=t0 + 8)  # still in view: the timeout counts from here
        ha.presence.tick(now=t0 + 12)
        ha.presence.tick(now=t0 + 17.9)
        assert [p["state"] for p in watch.on("presence/alice")] == ["ON"]
        ha.presence.tick(now=t0 + 18)
        off = watch.wait_for("presence/alice", lambda p: p["state"] == "OFF")
        assert off["score"] == 0.8 and off["last_seen"] == on["last_seen"]  # the last sight is kept
        ha.presence.seen({"alice"}, now=t0 + 20)  # a track seen after OFF does not turn it on again…
        ha.presence.tick(now=t0 + 21)
        assert [p["state"] for p in watch.on("presence/alice")] == ["ON", "OFF"]  # …only a new match does
    finally:
        stop.set()
        link.close(None)
        watch.close()


def test_entities_of_identities_no_longer_enrolled_are_removed_even_from_an_earlier_run(
    broker: LocalBroker, tmp_path: Path
) -> None:
    watch = Collector(broker.host, broker.port, "homeassistant/#", "edge/door/presence/#")
    # An earlier run published an entity for someone since removed from the gallery.
    stale = "homeassistant/binary_sensor/door/presence_bob/config"
    watch.publish(stale, json.dumps({"name": "Bob seen"}).encode(), retain=True)
    stop = threading.Event()
    link, holder, _ = discovering(broker, tmp_path, stop, HomeAssistantSettings(per_person=True), include_label=False)
    try:
        assert link.connected.wait(10)
        watch.wait_for("binary_sensor/door/presence_bob/config", lambda p: p == b"")  # removed (empty, retained)
        cfg = watch.wait_for("event/door/face_match/config")
        assert cfg["event_types"] == ["alice", "carol"]
        assert watch.wait_for("presence_carol/config")["name"] == "carol seen"  # labels stay off the wire
        holder.swap(gallery("alice"))
        watch.wait_for("event/door/face_match/config", lambda p: isinstance(p, dict) and p["event_types"] == ["alice"])
        watch.wait_for("binary_sensor/door/presence_carol/config", lambda p: p == b"")
        watch.wait_for("presence/carol", lambda p: p == b"")  # and its state topic cleared
    finally:
        stop.set()
        link.close(None)
        watch.close()


def test_a_watch_list_too_large_for_an_entity_each_gets_the_event_entity_only(
    broker: LocalBroker, tmp_path: Path
) -> None:
    watch = Collector(broker.host, broker.port, "homeassistant/#", "edge/door/presence/#")
    stop = threading.Event()
    link, holder, ha = discovering(
        broker, tmp_path, stop, HomeAssistantSettings(max_identity_entities=3, per_person=True), True
    )
    try:
        assert link.connected.wait(10)
        watch.wait_for("presence_carol/config", lambda p: isinstance(p, dict))
        holder.swap(gallery("alice", "bob", "carol", "dave"))  # one over the limit
        cfg = watch.wait_for("face_match/config", lambda p: isinstance(p, dict) and p["event_types"] == ["match"])
        assert "'match'" in cfg["value_template"]
        for who in ("alice", "carol"):  # the per-identity entities and their states are removed
            watch.wait_for(f"binary_sensor/door/presence_{who}/config", lambda p: p == b"")
            watch.wait_for(f"presence/{who}", lambda p: p == b"")
        ha.presence.emit(event("bob"))  # no entity for bob: nothing is published for him
        holder.swap(gallery("alice"))  # back within the limit: entities again
        watch.wait_for("event/door/face_match/config", lambda p: isinstance(p, dict) and p["event_types"] == ["alice"])
        watch.wait_for("presence_alice/config", lambda p: isinstance(p, dict) and p["name"] == "Alice seen")
        ha.presence.emit(event("alice"))
        watch.wait_for("presence/alice", lambda p: isinstance(p, dict) and p["state"] == "ON")
        # Messages of one client arrive in order: had bob's state been published, it would be here by now.
        seen = [t for t, _, _ in watch.messages]
        assert not [t for t in seen if t.endswith(("presence_bob/config", "presence_dave/config", "presence/bob"))]
        assert "edge/door/presence/alice" in seen
    finally:
        stop.set()
        link.close(None)
        watch.close()


def test_with_several_cameras_each_has_its_event_entity_and_presence_says_which_saw_the_person(
    broker: LocalBroker, tmp_path: Path
) -> None:
    watch = Collector(broker.host, broker.port, "homeassistant/#", "edge/door/presence/#")
    stop = threading.Event()
    link = connected_link(broker, tmp_path, stop)
    holder = GalleryHolder(Matcher(CAL, load_settings(environ={}).match))
    ha = HomeAssistant(
        HomeAssistantSettings(per_person=True), Topics("edge", "door"), link, True, cameras=["front", "yard"]
    )
    ha.attach()
    holder.on_change(ha.on_gallery)
    holder.swap(gallery("alice"))
    link.start()
    try:
        assert link.connected.wait(10)
        front = watch.wait_for("event/door/face_match_front/config")
        yard = watch.wait_for("event/door/face_match_yard/config")
        assert (
            front["name"] == "Face match front"
            and yard["state_topic"] == front["state_topic"] == "edge/door/events/match"
        )
        assert "value_json.camera == 'front'" in front["value_template"] and front["event_types"] == ["alice"]
        assert watch.wait_for("event/door/face_match/config")["name"] == "Face match"  # every camera's, as before
        ha.presence.emit(event("alice").model_copy(update={"camera": "front"}))
        assert watch.wait_for("presence/alice", lambda p: p["state"] == "ON")["camera"] == "front"
        ha.presence.seen({"alice"}, camera="front")  # the same camera: nothing new to say
        ha.presence.seen({"alice"}, camera="yard")  # now the yard camera sees her
        assert watch.wait_for("presence/alice", lambda p: p.get("camera") == "yard")["state"] == "ON"
        # OFF at connect (nobody seen yet), ON by the front camera, then the yard camera.
        assert [(p["state"], p["camera"]) for p in watch.on("presence/alice")] == [
            ("OFF", None),
            ("ON", "front"),
            ("ON", "yard"),
        ]
    finally:
        stop.set()
        link.close(None)
        watch.close()
    one = HomeAssistant(HomeAssistantSettings(per_person=True), Topics("edge", "d"), link, True, cameras=["main"])
    assert not [d for d in one.configs({"alice": None}) if "face_match_" in d.topic]  # one camera: no entity of its own
