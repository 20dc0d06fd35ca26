"""The appliance in Home Assistant, tested with Home Assistant's own MQTT discovery code.

The messages are the exact ones a real device published against a real Mosquitto
(tests/ha/capture.py, file given in EDGE_HA_CAPTURE), delivered into Home
Assistant 2024.3's MQTT integration as a broker delivers them to its MQTT 3.1.1
client: live messages without the retain flag; and, for a Home Assistant that
starts later, the broker's store of retained messages with it. Invalid discovery
payloads are only logged by Home Assistant, so the tests also assert that the MQTT
integration logged no warning or error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import async_fire_mqtt_message

CAPTURE = json.loads(Path(os.environ.get("EDGE_HA_CAPTURE", "build/ha-capture.json")).read_text())
DEVICE = CAPTURE["device_id"]
MESSAGES: list[dict[str, Any]] = CAPTURE["messages"]


def entity(hass: HomeAssistant, domain: str, object_id: str) -> str | None:
    return er.async_get(hass).async_get_entity_id(domain, "mqtt", f"edge_{DEVICE}_{object_id}")


async def replay(hass: HomeAssistant, until: int) -> None:
    """Feed messages [0, until) in order as a broker delivers them: live, without the retain flag;
    and when a discovered entity subscribes to its topics, their retained messages, with it."""
    for i in range(replay.done, until):  # type: ignore[attr-defined]
        m = MESSAGES[i]
        async_fire_mqtt_message(hass, m["topic"], m["payload"], qos=1, retain=False)
        await hass.async_block_till_done()
        if m["topic"].startswith("homeassistant/") and m["payload"]:
            config = json.loads(m["payload"])
            store = retained_store(i + 1)
            topics = [a["topic"] for a in config.get("availability", [])]
            topics += [config[k] for k in ("state_topic", "json_attributes_topic") if k in config]
            for topic in dict.fromkeys(topics):
                if topic in store:
                    async_fire_mqtt_message(hass, topic, store[topic], qos=1, retain=True)
                    await hass.async_block_till_done()
    replay.done = until  # type: ignore[attr-defined]


def retained_store(until: int) -> dict[str, str]:
    """What the broker keeps after messages [0, until): the last retained payload of each topic."""
    store: dict[str, str] = {}
    for m in MESSAGES[:until]:
        if m["retain"]:
            if m["payload"]:
                store[m["topic"]] = m["payload"]
            else:
                store.pop(m["topic"], None)  # an empty retained message clears the topic
    return store


def no_mqtt_warnings(caplog: pytest.LogCaptureFixture) -> None:
    problems = [
        r for r in caplog.records if r.name.startswith("homeassistant.components.mqtt") and r.levelno >= logging.WARNING
    ]
    assert not problems, [r.getMessage() for r in problems]


def index(pred: Any, start: int = 0) -> int:
    """Position just after the first message (from ``start``) that satisfies ``pred``."""
    for i in range(start, len(MESSAGES)):
        if pred(MESSAGES[i]):
            return i + 1
    raise AssertionError("the capture lacks an expected message")


async def test_the_appliance_in_home_assistant(
    hass: HomeAssistant, mqtt_mock_entry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="homeassistant.components.mqtt")
    await mqtt_mock_entry()
    replay.done = 0  # type: ignore[attr-defined]
    enrolled = sorted(CAPTURE["enrolled"])

    # Discovery of gallery v1: one device, the event entity with an event type per identity,
    # a presence sensor per identity, the diagnostic sensors.
    first_event = index(lambda m: m["topic"].endswith("/events/match"))
    first_on = index(lambda m: "/presence/" in m["topic"] and '"state": "ON"' in m["payload"])
    await replay(hass, first_on - 1)  # discovery done, nobody seen yet
    event_id = entity(hass, "event", "face_match")
    assert event_id is not None
    state = hass.states.get(event_id)
    assert state is not None and sorted(state.attributes["event_types"]) == enrolled
    device = dr.async_get(hass).async_get_device(identifiers={("mqtt", f"edge_{DEVICE}")})
    assert device is not None and device.name == "Front door" and device.model == "edge-recognizer"
    assert device.sw_version and device.manufacturer
    presence = {i: entity(hass, "binary_sensor", f"presence_{i}") for i in enrolled}
    assert all(presence.values()), presence
    for i, ent in presence.items():
        s = hass.states.get(ent)  # type: ignore[arg-type]
        assert s is not None and s.state == "off" and s.attributes["device_class"] == "presence"
        assert s.attributes["friendly_name"] == f"Front door {i.replace('_', ' ')} seen"
    sensors = {
        k: entity(hass, "sensor", k)
        for k in (
            "fps",
            "faces_per_min",
            "outbox_depth",
            "camera",
            "gallery_version",
            "gallery_identities",
            "cpu_temperature",
            "last_error",
        )
    }
    assert all(sensors.values()), sensors
    assert er.async_get(hass).async_get(sensors["fps"]).entity_category == "diagnostic"  # type: ignore[arg-type, union-attr]

    # A match: the event entity fires with the payload's fields as attributes (never an image).
    await replay(hass, first_event)
    event = json.loads(MESSAGES[first_event - 1]["payload"])
    state = hass.states.get(event_id)
    assert state is not None and state.state not in ("unknown", "unavailable")
    assert state.attributes["event_type"] == event["identity_id"]
    for field in ("score", "threshold", "est_false_match_rate", "evidence", "track_id", "gallery_version", "event_id"):
        assert state.attributes[field] == event[field], field
    assert not {"image", "crop", "embedding"} & set(state.attributes)
    # Two cameras: each its own event entity; the camera that saw the person fired, the other did not.
    assert CAPTURE["cameras"] == ["door", "yard"] and event["camera"] == "door"
    door, yard = entity(hass, "event", "face_match_door"), entity(hass, "event", "face_match_yard")
    assert door is not None and yard is not None
    fired = hass.states.get(door)
    assert fired is not None and fired.attributes["event_type"] == event["identity_id"]
    assert fired.attributes["event_id"] == event["event_id"] and fired.attributes["camera"] == "door"
    quiet = hass.states.get(yard)
    assert quiet is not None and quiet.state == "unknown" and sorted(quiet.attributes["event_types"]) == enrolled

    # Presence: on at the match, with score and time, off after the timeout.
    on = index(lambda m: "/presence/" in m["topic"] and '"state": "ON"' in m["payload"])
    await replay(hass, on)
    who = MESSAGES[on - 1]["topic"].rsplit("/", 1)[1]
    s = hass.states.get(presence[who])  # type: ignore[arg-type]
    assert s is not None and s.state == "on" and s.attributes["score"] > 0.5 and s.attributes["last_seen"]
    assert s.attributes["camera"] == "door"  # which camera saw them
    off = index(lambda m: m["topic"].endswith(f"/presence/{who}") and '"state": "OFF"' in m["payload"], on)
    await replay(hass, off)
    s = hass.states.get(presence[who])  # type: ignore[arg-type]
    assert s is not None and s.state == "off" and s.attributes["last_seen"]

    # The heartbeat feeds the diagnostic sensors.
    beat = index(lambda m: m["topic"].endswith("/status") and '"state":"online"' in m["payload"], off)
    await replay(hass, beat)
    status = json.loads(MESSAGES[beat - 1]["payload"])
    assert float(hass.states.get(sensors["fps"]).state) == pytest.approx(status["fps"])  # type: ignore[arg-type, union-attr]
    assert hass.states.get(sensors["camera"]).state == status["camera"]  # type: ignore[arg-type, union-attr]
    assert int(hass.states.get(sensors["gallery_identities"]).state) == len(enrolled)  # type: ignore[arg-type, union-attr]

    # Gallery v2 without one person: the event types shrink, that person's entity is removed.
    removed = CAPTURE["removed"]
    gone = index(lambda m: m["topic"].endswith(f"presence_{removed}/config") and m["payload"] == "")
    v2_event_config = index(
        lambda m: m["topic"].endswith("face_match/config") and removed not in m["payload"], first_event
    )
    await replay(hass, max(gone, v2_event_config))
    assert entity(hass, "binary_sensor", f"presence_{removed}") is None
    assert hass.states.get(presence[removed]) is None  # type: ignore[arg-type]
    state = hass.states.get(event_id)
    assert state is not None and sorted(state.attributes["event_types"]) == [i for i in enrolled if i != removed]

    # A clean stop: the device's entities become unavailable.
    await replay(hass, len(MESSAGES))
    for ent in [event_id, *(v for k, v in presence.items() if k != removed), *sensors.values()]:
        s = hass.states.get(ent)  # type: ignore[arg-type]
        assert s is not None and s.state == "unavailable", (ent, s)

    no_mqtt_warnings(caplog)


async def test_a_home_assistant_started_later_gets_the_same_picture_from_retained_messages(
    hass: HomeAssistant, mqtt_mock_entry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="homeassistant.components.mqtt")
    await mqtt_mock_entry()
    removed = CAPTURE["removed"]
    remaining = sorted(i for i in CAPTURE["enrolled"] if i != removed)
    # Home Assistant subscribes after gallery v2 was applied, the device still running.
    before_stop = next(i for i, m in enumerate(MESSAGES) if m["phase"] == "stop")
    store = retained_store(before_stop)
    assert not any(f"presence_{removed}/config" in t for t in store)  # the broker forgot the removed entity
    for topic in sorted(store, key=lambda t: (not t.startswith("homeassistant/"), t)):  # discovery first
        async_fire_mqtt_message(hass, topic, store[topic], qos=1, retain=True)
        await hass.async_block_till_done()
    event = hass.states.get(entity(hass, "event", "face_match"))  # type: ignore[arg-type]
    assert event is not None and event.state == "unknown" and sorted(event.attributes["event_types"]) == remaining
    for ident in remaining:
        s = hass.states.get(entity(hass, "binary_sensor", f"presence_{ident}"))  # type: ignore[arg-type]
        assert s is not None and s.state == "off" and s.attributes["last_seen"]  # seen in the clip, gone since
    assert entity(hass, "binary_sensor", f"presence_{removed}") is None
    ids = hass.states.get(entity(hass, "sensor", "gallery_identities"))  # type: ignore[arg-type]
    assert ids is not None and int(ids.state) == len(remaining)
    no_mqtt_warnings(caplog)
