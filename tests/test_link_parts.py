"""The MQTT link's parts, each on its own: the outbox pump (in flight until PUBACK, the window, refusals,
deletes that fail), the routing of incoming topics, and the connection's reasons and back-off. The pump
publishes through a real paho client to a real Mosquitto; its rounds run on the test's own thread."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge.delivery.connection import FLAPS, SESSION_TAKEN_OVER, Connection, explain
from edge.delivery.mqtt import MqttLink
from edge.delivery.outbox import Outbox
from edge.delivery.pump import OutboxPump
from edge.delivery.routing import Router, Topics
from edge.demo.broker import LocalBroker
from edge.device.config import load_settings
from edge.device.settings import MqttSettings
from edge.device.supervisor import Supervisor

TOPIC = "edge/parts/events/match"


@pytest.fixture()
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


@pytest.fixture()
def client(broker: LocalBroker) -> Iterator[mqtt.Client]:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="parts", protocol=mqtt.MQTTv5)
    up = threading.Event()
    c.on_connect = lambda *a: up.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert up.wait(10)
    yield c
    c.loop_stop()
    c.disconnect()


def settle(pump: OutboxPump, done: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Run the pump's rounds on this thread until ``done()`` (woken by each PUBACK)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        pump._wake.wait(0.2)
        pump._wake.clear()
        pump.round()
    return True


def puback(code: int) -> ReasonCode:
    return ReasonCode(PacketTypes.PUBACK, identifier=code)


def make_pump(box: Outbox, client: mqtt.Client, max_inflight: int = 2) -> tuple[OutboxPump, threading.Event]:
    connected = threading.Event()
    connected.set()
    pump = OutboxPump(box, client, connected, threading.Event(), max_inflight)
    client.on_publish = pump.on_publish
    return pump, connected


# -- the pump ------------------------------------------------------------------------------------


def test_the_pump_hands_rows_over_in_order_and_deletes_each_only_on_its_puback(
    broker: LocalBroker, client: mqtt.Client, tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    pump, _ = make_pump(box, client)
    seqs = [box.put(TOPIC, f'{{"n": {i}}}'.encode()) for i in range(3)]
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)  # it reads nothing, acknowledges nothing
    try:
        assert pump.round() == 3 and pump.in_flight == 3
        assert [r.seq for r in box.pending()] == seqs  # handed over is not delivered
        assert pump.round() == 0  # nothing handed twice
        assert pump.health().in_flight == 3 and pump.health().published == 0
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert settle(pump, lambda: box.depth() == 0)
    assert pump.published == 3 and pump.in_flight == 0 and pump.last_error is None
    later = box.put(TOPIC, b"{}")
    assert pump.round() == 1 and settle(pump, lambda: box.depth() == 0)  # after the cursor: only the new row
    assert pump.published == 4 and later > seqs[-1]


def test_the_pump_hands_over_at_most_its_window_and_nothing_while_disconnected(
    broker: LocalBroker, client: mqtt.Client, tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    pump, connected = make_pump(box, client, max_inflight=2)
    assert pump.window == 10
    for i in range(13):
        box.put(TOPIC, f"{i}".encode())
    connected.clear()
    assert pump.round() == 0 and pump.in_flight == 0
    connected.set()
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        assert pump.round() == 10 and pump.in_flight == 10  # the window is full
        assert pump.round() == 0
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert settle(pump, lambda: box.depth() == 0) and pump.published == 13


def test_a_refused_event_stays_in_the_outbox_and_is_said_an_unknown_ack_is_ignored(
    client: mqtt.Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    pump, _ = make_pump(box, client)
    client.on_publish = None  # the acks of this test are the ones it gives
    seq = box.put(TOPIC, b"{}")
    assert pump.round() == 1
    (mid,) = pump._inflight
    pump.on_publish(None, None, mid + 1000, puback(0), None)  # no such message: nothing happens
    pump.take_acks()
    assert pump.in_flight == 1 and pump.published == 0 and pump.refused == 0
    with caplog.at_level(logging.ERROR, logger="edge.delivery.pump"):
        pump.on_publish(None, None, mid, puback(0x87), None)  # Not authorized
        pump.take_acks()
    assert pump.refused == 1 and pump.published == 0 and pump.in_flight == 0
    assert [r.seq for r in box.pending()] == [seq]
    assert pump.last_error == f"broker refused event (outbox row {seq}): Not authorized"
    assert "kept in the outbox, sent again at the next start" in caplog.text
    pump.reconnected()  # a new connection: what was said of the last one no longer holds
    assert pump.last_error is None and pump._wake.is_set()


def test_a_delete_that_fails_keeps_the_ack_and_retries_it_said_once_then_every_hundredth(
    client: mqtt.Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    pump, _ = make_pump(box, client)
    client.on_publish = None
    first, second = box.put(TOPIC, b"1"), box.put(TOPIC, b"2")
    assert pump.round() == 2
    mids = sorted(pump._inflight)
    box._db.execute("PRAGMA query_only = ON")  # every delete fails, as on a full disk
    with caplog.at_level(logging.ERROR, logger="edge.delivery.pump"):
        for mid in mids:
            pump.on_publish(None, None, mid, puback(0), None)
        for _ in range(100):
            pump.take_acks()
    said = [r for r in caplog.records if "acknowledged event(s) waiting to be removed" in r.getMessage()]
    assert pump.ack_failures == 100 and len(said) == 2  # the first failure and the hundredth
    assert "(2 acknowledged event(s) waiting" in said[0].getMessage()
    assert pump.published == 2 and "not removed" in str(pump.last_error) and box.depth() == 2
    box._db.execute("PRAGMA query_only = OFF")  # the disk recovers
    pump.take_acks()
    assert box.depth() == 0 and pump.ack_failures == 100
    assert first < second


def test_a_publish_the_client_cannot_take_is_deferred_and_the_row_handed_over_later(
    broker: LocalBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="later", protocol=mqtt.MQTTv5)
    pump, _ = make_pump(box, c)  # "connected" says yes, the client is not: the race at a disconnection
    seq = box.put(TOPIC, b"{}")
    with caplog.at_level(logging.WARNING, logger="edge.delivery.pump"):
        assert pump.round() == 0
    assert pump.in_flight == 0 and f"publish of outbox row {seq} deferred" in caplog.text
    up = threading.Event()
    c.on_connect = lambda *a: up.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        assert up.wait(10)
        assert pump.round() == 1 and settle(pump, lambda: box.depth() == 0)  # the same row, not skipped
    finally:
        c.loop_stop()


def test_the_pump_thread_ends_at_close_or_at_stop_once_disconnected_and_drains_while_connected(
    client: mqtt.Client, tmp_path: Path
) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    sup = Supervisor(10.0, lambda reason: None)
    worker = sup.register("mqtt-pump")
    connected = threading.Event()
    stop = threading.Event()
    pump = OutboxPump(box, client, connected, stop, 2, worker)
    client.on_publish = pump.on_publish
    pump.thread.start()
    stop.set()  # stopping, but connected: the pump drains what is queued
    connected.set()
    box.put(TOPIC, b"{}")
    pump.notify()
    assert pump.wait(lambda: box.depth() == 0, 10) and pump.thread.is_alive()
    connected.clear()  # stopping and disconnected: it ends
    pump.notify()
    pump.thread.join(10)
    assert not pump.thread.is_alive() and sup.check() is None
    again = OutboxPump(box, client, threading.Event(), threading.Event(), 2)
    again.thread.start()
    again.closing.set()  # closing ends it whatever else holds
    again.notify()
    again.thread.join(10)
    assert not again.thread.is_alive()
    assert again.wait(lambda: True, 0.0) and not again.wait(lambda: False, 0.05)


# -- routing -------------------------------------------------------------------------------------


class Subscriptions:
    def __init__(self) -> None:
        self.made: list[tuple[str, int]] = []

    def subscribe(self, topic: str, qos: int) -> None:
        self.made.append((topic, qos))


def test_messages_reach_every_handler_whose_filter_matches_and_one_failing_stops_no_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = Router()
    got: list[tuple[str, str, bytes, bool]] = []

    def keep(name: str) -> Callable[[str, bytes, bool], None]:
        return lambda topic, payload, retained: got.append((name, topic, payload, retained))

    def broken(topic: str, payload: bytes, retained: bool) -> None:
        raise ValueError("bad payload")

    router.add("edge/door/gallery/set", keep("exact"))
    router.add("edge/galleries/+", broken, qos=0)
    router.add("edge/galleries/#", keep("deep"))
    router.add("edge/door/status", None, qos=0)  # subscribed, no handler
    with caplog.at_level(logging.ERROR, logger="edge.delivery.routing"):
        assert router.route("edge/galleries/lobby", b"x", True) == 2
    assert got == [("deep", "edge/galleries/lobby", b"x", True)]
    assert "message on edge/galleries/lobby could not be handled" in caplog.text
    assert router.route("edge/door/gallery/set", b"y", False) == 1 and got[-1] == (
        "exact",
        "edge/door/gallery/set",
        b"y",
        False,
    )
    assert router.route("edge/other/gallery/set", b"z", False) == 0 and len(got) == 2
    made = Subscriptions()
    router.subscribe_all(made)
    assert made.made == [
        ("edge/door/gallery/set", 1),
        ("edge/galleries/+", 0),
        ("edge/galleries/#", 1),
        ("edge/door/status", 0),
    ]
    assert router.subscriptions == dict(made.made)


def test_topics_are_the_contracts_names() -> None:
    t = Topics("edge", "door")
    assert (t.match, t.status, t.gallery_state, t.gallery_set, t.gallery_fleet("lobby"), t.presence("p1")) == (
        "edge/door/events/match",
        "edge/door/status",
        "edge/door/gallery/state",
        "edge/door/gallery/set",
        "edge/galleries/lobby",
        "edge/door/presence/p1",
    )


# -- the connection ------------------------------------------------------------------------------


def opts(**kw: Any) -> MqttSettings:
    return load_settings(environ={}, overrides={"mqtt": {"host": "127.0.0.1", "port": 1, **kw}}).mqtt


def test_a_refusal_is_said_once_with_its_hint_then_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    conn = Connection(opts(reconnect_max_s=30), "door", ("edge/door/status", b"{}"))
    with caplog.at_level(logging.WARNING, logger="edge.delivery.connection"):
        for _ in range(5):
            conn.refused("Bad user name or password")
    assert (
        conn.last_error
        == "broker refused the connection: Bad user name or password; check mqtt.username and the password"
    )
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert caplog.records[0].getMessage() == (
        "mqtt: 127.0.0.1:1: broker refused the connection: Bad user name or password; check mqtt.username and "
        "the password; retrying, at least every 30s"
    )
    conn._logged_at -= 60  # a minute later: said again, as a warning
    with caplog.at_level(logging.WARNING, logger="edge.delivery.connection"):
        conn.refused("Bad user name or password")
        conn.refused("Bad user name or password")
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING]
    assert "still refused" in caplog.records[1].getMessage()
    conn.refused("Not authorized")
    assert (
        conn.last_error
        == "broker refused the connection: Not authorized; check the broker's access rules for this user"
    )
    conn.refused("Client identifier not valid")
    assert str(conn.last_error).endswith("; check device.id")
    conn.refused("Server unavailable")
    assert conn.last_error == "broker refused the connection: Server unavailable"
    assert conn.health().problem == conn.last_error and not conn.health().connected


def test_a_failed_attempt_is_said_once_then_every_minute_and_waits_its_delay(caplog: pytest.LogCaptureFixture) -> None:
    conn = Connection(opts(), "door", ("edge/door/status", b"{}"))
    with caplog.at_level(logging.WARNING, logger="edge.delivery.connection"):
        conn.failed("broker 127.0.0.1:1 refused the connection", 0.0)
        conn.failed("broker 127.0.0.1:1 refused the connection", 0.0)
    assert [r.getMessage() for r in caplog.records] == [
        "mqtt: broker 127.0.0.1:1 refused the connection; retrying in 0s"
    ]
    conn._logged_at -= 59.5  # not yet a minute
    conn.failed("broker 127.0.0.1:1 refused the connection", 0.0)
    assert len(caplog.records) == 1
    conn._logged_at -= 0.5
    with caplog.at_level(logging.WARNING, logger="edge.delivery.connection"):
        conn.failed("broker 127.0.0.1:1 refused the connection", 0.0)
    assert caplog.records[-1].getMessage() == (
        "mqtt: still failing: broker 127.0.0.1:1 refused the connection; retrying in 0s"
    )
    closing = threading.Event()
    conn.closing = closing
    closing.set()
    conn.failed("another reason", 3600.0)  # closing: the wait ends at once
    assert conn.last_error == "another reason"


def test_connections_dropped_moments_after_acceptance_are_taken_for_a_shared_device_id() -> None:
    conn = Connection(opts(), "door", ("edge/door/status", b"{}"))
    for _ in range(FLAPS - 1):
        conn.note_flap(19.9)
    assert conn.last_error is None
    conn.note_flap(20.0)  # a connection that lasted the limit is no flap: the count starts again
    for _ in range(FLAPS - 1):
        conn.note_flap(1.0)
    assert conn.last_error is None
    conn.note_flap(1.0)
    assert conn.last_error is not None and conn.last_error.startswith(
        f"the broker dropped {FLAPS} connections in a row moments after accepting them: another client is "
        "probably connected as 'door'"
    )
    conn.last_error = None
    for _ in range(16):
        conn.note_flap(1.0)
    assert conn.last_error is None  # not said at every flap
    conn.note_flap(1.0)
    assert f"dropped {FLAPS + 17} connections" in str(conn.last_error)  # every twentieth


def test_a_disconnection_says_why_and_a_taken_over_session_names_the_shared_id() -> None:
    conn = Connection(opts(), "door", ("edge/door/status", b"{}"))
    conn._on_disconnect(conn.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
    assert conn.last_error is None  # not connected before: nothing lost
    conn.connected.set()
    conn._on_disconnect(conn.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
    assert conn.last_error == "disconnected: Unspecified error" and not conn.connected.is_set()
    conn._on_disconnect(
        conn.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=SESSION_TAKEN_OVER), None
    )
    assert str(conn.last_error).startswith("another client connected as 'door' and took this session over")
    assert conn._flaps == FLAPS
    conn.closing.set()
    conn.last_error = None
    conn.connected.set()
    conn._on_disconnect(conn.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
    assert conn.last_error is None and not conn.connected.is_set()  # closing: a disconnection is expected


def test_an_accepted_connection_runs_its_actions_in_order_and_one_failing_stops_no_other(
    broker: LocalBroker,
) -> None:
    conn = Connection(opts(port=broker.port), "door", ("edge/door/status", b"{}"))
    ran: list[str] = []
    conn.last_error = "from before"
    conn.when_connected(lambda: ran.append("first"))
    conn.when_connected(lambda: (_ for _ in ()).throw(RuntimeError("broken action")))
    done = threading.Event()

    def third() -> None:
        ran.append("third")
        done.set()

    conn.when_connected(third)
    conn.thread.start()
    try:
        assert conn.connected.wait(10) and done.wait(10)
        assert conn.health().connected and conn.health().problem is None
        assert ran == ["first", "third"]
    finally:
        conn.close(5)
    assert not conn.thread.is_alive()


def test_each_kind_of_connection_failure_is_one_line_with_its_fix() -> None:
    import socket
    import ssl

    cases: list[tuple[BaseException, bool, str]] = [
        (ConnectionRefusedError(), False, "broker h:1 refused the connection (nothing listening there?)"),
        (TimeoutError(), False, "broker h:1 did not answer in time (unreachable or filtered)"),
        (
            socket.gaierror(-2, "Name or service not known"),
            False,
            "cannot resolve broker host 'h': Name or service not known",
        ),
        (OSError(113, "No route to host"), False, "cannot reach broker h:1: No route to host"),
        (
            ConnectionResetError(),
            True,
            "TLS: h:1 dropped the TLS handshake (plain MQTT port?); set mqtt.tls = false or use the TLS port",
        ),
        (ValueError("bad"), False, "connecting to h:1 failed: ValueError: bad"),
        (
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            True,
            "TLS: h:1 does not speak TLS (plain MQTT port?); set mqtt.tls = false or use the TLS port",
        ),
    ]
    for exc, tls, said in cases:
        assert explain(exc, "h", 1, tls) == said
    assert explain(ConnectionResetError(), "h", 1, False).startswith("cannot reach broker h:1")


def test_the_link_reports_the_connections_problem_before_the_pumps(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    link = MqttLink(opts(), Topics("edge", "door"), box, threading.Event())
    link.pump.last_error = "broker refused event (outbox row 1): Not authorized"
    assert link.health().problem == link.pump.last_error == link.last_error
    link.connection.last_error = "broker 127.0.0.1:1 refused the connection (nothing listening there?)"
    health = link.health()
    assert health.problem == link.connection.last_error and not health.connected
    assert (health.published, health.refused, health.ack_failures, health.in_flight) == (0, 0, 0, 0)
    link.close(None, timeout=1)
