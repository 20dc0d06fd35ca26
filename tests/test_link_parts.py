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
    assert [r.getMessage() for r in caplog.records] == [
        f"mqtt: broker refused event (outbox row {seq}): Not authorized; kept in the outbox, sent again at the next start"
    ]
    again = box.put(TOPIC, b"{}")
    assert pump.round() == 1
    (mid2,) = pump._inflight
    pump.on_publish(None, None, 99_999, puback(0), None)  # an unknown ack first in the batch: skipped, not the end
    pump.on_publish(None, None, mid2, puback(0x87), None)
    pump.take_acks()
    assert pump.refused == 2 and [r.seq for r in box.pending()] == [seq, again]
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
        pump.take_acks()
        assert len(caplog.records) == 1  # said at the first failure
        for _ in range(99):
            pump.take_acks()
    said = [r.getMessage() for r in caplog.records]
    assert pump.ack_failures == 100 and len(said) == 2  # the first failure and the hundredth
    assert said[0] == f"{pump.last_error} (2 acknowledged event(s) waiting to be removed)"
    assert said[0].startswith(f"outbox {box.path}: acknowledged event {first} not removed: ")
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
    assert pump.in_flight == 0 and [r.getMessage() for r in caplog.records] == [
        f"publish of outbox row {seq} deferred: The client is not currently connected."
    ]
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


def test_connections_dropped_moments_after_acceptance_are_taken_for_a_shared_device_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = Connection(opts(), "door", ("edge/door/status", b"{}"))
    for _ in range(FLAPS - 1):
        conn.note_flap(19.9)
    assert conn.last_error is None
    conn.note_flap(20.0)  # a connection that lasted the limit is no flap: the count starts again
    for _ in range(FLAPS - 1):
        conn.note_flap(1.0)
    assert conn.last_error is None
    with caplog.at_level(logging.ERROR, logger="edge.delivery.connection"):
        conn.note_flap(1.0)
    assert conn.last_error == (
        f"the broker dropped {FLAPS} connections in a row moments after accepting them: another client is "
        "probably connected as 'door' (two devices share device.id, or a second instance is running); give each "
        "device its own device.id"
    )
    assert [r.getMessage() for r in caplog.records] == [f"mqtt: {conn.last_error}"]
    conn.last_error = None
    for _ in range(16):
        conn.note_flap(1.0)
    assert conn.last_error is None  # not said at every flap
    conn.note_flap(1.0)
    assert f"dropped {FLAPS + 17} connections" in str(conn.last_error)  # every twentieth


def test_a_disconnection_says_why_and_a_taken_over_session_names_the_shared_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = Connection(opts(), "door", ("edge/door/status", b"{}"))
    conn._on_disconnect(conn.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
    assert conn.last_error is None  # not connected before: nothing lost
    conn.connected.set()
    with caplog.at_level(logging.WARNING, logger="edge.delivery.connection"):
        conn._on_disconnect(conn.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=0x80), None)
        assert conn.last_error == "disconnected: Unspecified error" and not conn.connected.is_set()
        conn._on_disconnect(
            conn.client, None, None, ReasonCode(PacketTypes.DISCONNECT, identifier=SESSION_TAKEN_OVER), None
        )
    assert conn.last_error == (
        "another client connected as 'door' and took this session over: two devices share device.id (give each "
        "its own), or a second instance is running"
    )
    assert [r.getMessage() for r in caplog.records] == [
        "mqtt disconnected (Unspecified error); reconnecting with back-off",
        f"mqtt: {conn.last_error}",
    ]
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


# -- the connection, one attempt at a time (on the test's thread) ---------------------------------


def test_an_attempt_on_a_closed_port_says_why_and_doubles_the_back_off_up_to_its_ceiling() -> None:
    from edge.demo.broker import free_port
    from edge.device.supervisor import Worker

    port = free_port()
    worker = Worker("mqtt-network", 10.0)
    conn = Connection(opts(port=port, reconnect_min_s=0.5, reconnect_max_s=3.0), "door", ("s", b"{}"), worker=worker)
    conn.closing.set()  # the waits end at once; the attempt is made all the same
    before = worker.last_beat
    assert conn.attempt(0.5) == 1.0 and conn.attempt(2.0) == 3.0  # doubled, then the ceiling
    assert conn.last_error == f"broker 127.0.0.1:{port} refused the connection (nothing listening there?)"
    assert worker.last_beat > before  # it beat on the way
    assert conn.next_delay(1.25) == 2.5 and conn.next_delay(3.0) == 3.0
    conn.run()  # closing: no attempt, and the worker is told it ended normally
    assert worker.finished and worker.note == "stopped"


def test_a_port_that_closes_before_any_connack_is_said_to_be_the_wrong_protocol() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def close_each() -> None:
            client_sock, _ = server.accept()
            client_sock.close()

        closer = threading.Thread(target=close_each)
        closer.start()
        conn = Connection(opts(port=port, reconnect_min_s=0.001), "door", ("s", b"{}"))
        assert conn.attempt(0.0) == 0.0
        closer.join(10)
    assert (
        conn.last_error == f"broker 127.0.0.1:{port}: it closed the connection before accepting it (is the port TLS?)"
    )
    assert not conn.connected.is_set()


def test_an_accepted_connection_that_ends_starts_the_back_off_over(broker: LocalBroker) -> None:
    conn = Connection(opts(port=broker.port, reconnect_min_s=0.25, reconnect_max_s=8.0), "door", ("s", b"{}"))
    conn.when_connected(lambda: conn.client.disconnect())  # accepted, then gone at once
    assert conn.attempt(4.0) == 0.5  # the wait after an accepted connection is reconnect_min_s, then doubled
    assert conn.last_error == "disconnected: Normal disconnection" and not conn.connected.is_set()
    assert conn._flaps == 1  # dropped moments after it was accepted: one flap
    conn.closing.set()
    assert conn.attempt(4.0) == 4.0  # closing: the connection ends and nothing more is waited for


def test_a_callback_that_fails_inside_the_loop_is_said_and_ends_that_connection(
    broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    conn = Connection(opts(port=broker.port, reconnect_min_s=0.001), "door", ("s", b"{}"))

    def broken(*args: Any) -> None:
        raise RuntimeError("callback bug")

    conn.client.on_subscribe = broken
    conn.when_connected(lambda: conn.client.subscribe("edge/x", 1))
    with caplog.at_level(logging.ERROR, logger="edge.delivery.connection"):
        conn.attempt(0.0)
    assert conn.last_error == "mqtt loop failed: RuntimeError: callback bug"
    assert "mqtt loop failed" in caplog.text and not conn.connected.is_set()


def test_the_connection_thread_and_its_connect_packet() -> None:
    conn = Connection(opts(max_inflight=7), "door", ("edge/door/status", b"gone"), max_message_bytes=1 << 20)
    assert conn.thread.name == "mqtt-network" and conn.thread.daemon
    assert conn.connect_properties.MaximumPacketSize == (1 << 20) + (64 << 10)  # type: ignore[attr-defined]
    huge = Connection(opts(), "door", ("s", b"{}"), max_message_bytes=1 << 40)
    assert huge.connect_properties.MaximumPacketSize == 268_435_455  # type: ignore[attr-defined]  # MQTT's own ceiling
    assert conn.client._max_inflight_messages == 7 and conn.client._max_queued_messages == 0
    assert conn.client._will_topic == b"edge/door/status" and conn.client._will_payload == b"gone"
    assert conn.client._will_qos == 1 and conn.client._will_retain and not conn.tls


# -- the link put together --------------------------------------------------------------------


def test_the_link_sends_status_and_retained_state_only_while_connected_and_routes_what_arrives(
    broker: LocalBroker, tmp_path: Path
) -> None:
    from .support import Collector

    box = Outbox(tmp_path / "o.sqlite")
    stop = threading.Event()
    link = MqttLink(opts(port=broker.port), Topics("edge", "door"), box, stop)
    got: list[tuple[str, bytes, bool]] = []
    arrived = threading.Event()

    def handler(topic: str, payload: bytes, retained: bool) -> None:
        got.append((topic, payload, retained))
        arrived.set()

    link.listen("edge/door/gallery/set", handler)
    link.subscribe("edge/door/other", qos=0)
    assert link.router.subscriptions == {"edge/door/gallery/set": 1, "edge/door/other": 0}
    from edge.delivery.events import Status

    link.publish_status(Status(device_id="door", state="online", version="t"))  # not connected: not sent
    link.publish_retained("edge/door/gallery/state", b"early")
    sub = Collector(broker.host, broker.port, "edge/door/#")
    try:
        connected = threading.Event()
        link.when_connected(connected.set)
        link.start()
        assert link.connected.wait(10) and connected.wait(10)
        assert link.threads == (link.connection.thread, link.pump.thread)
        link.publish_status(Status(device_id="door", state="online", version="t"))
        link.publish_retained("edge/door/gallery/state", b"now")
        link.publish("edge/door/presence/x", b"p", qos=1)
        assert sub.wait_until(lambda: len(sub.on("presence/x")) == 1, 10)
        assert sub.on("presence/x") == [b"p"]  # the payload as given
        assert [m["state"] for m in sub.on("status")] == ["online"]
        assert sub.on("gallery/state") == [b"now"] or sub.on("gallery/state") == ["now"]
        sub.client.publish("edge/door/gallery/set", b"bundle", qos=1, retain=False)
        assert arrived.wait(10) and got == [("edge/door/gallery/set", b"bundle", False)]
        box.put("edge/door/events/match", b'{"n": 1}')
        link.notify()
        assert link.drain(10) and link.published == 1 and link.in_flight == 0 and link.ack_failures == 0
        assert link.health().connected and link.health().published == 1
    finally:
        stop.set()
        link.close(Status(device_id="door", state="offline", version="t"), timeout=5)
        said_offline = sub.wait_until(lambda: sub.on("status")[-1]["state"] == "offline", 10)
        sub.close()
    assert said_offline  # the final status, before the clean disconnect
    late = Collector(broker.host, broker.port, "edge/door/status")
    retained = late.wait_for("status")  # and retained: what a subscriber arriving later is told
    late.close()
    assert retained["state"] == "offline" and "lost" not in retained
    assert not link.connection.thread.is_alive() and not link.pump.thread.is_alive()
    assert not box.depth()


def test_an_incoming_message_from_the_client_reaches_its_handler_as_bytes() -> None:
    router = Router()
    got: list[tuple[str, bytes, bool]] = []
    router.add("edge/#", lambda t, p, r: got.append((t, p, r)))
    msg = mqtt.MQTTMessage(topic=b"edge/door/gallery/set")
    msg.payload = bytearray(b"abc")
    msg.retain = True
    router.on_message(None, None, msg)  # type: ignore[arg-type]
    assert got == [("edge/door/gallery/set", b"abc", True)] and type(got[0][1]) is bytes


def test_the_pump_fills_its_window_to_the_last_row_and_sends_each_payload_as_stored(
    broker: LocalBroker, client: mqtt.Client, tmp_path: Path
) -> None:
    from .support import Collector

    sub = Collector(broker.host, broker.port, TOPIC)
    box = Outbox(tmp_path / "o.sqlite")
    pump, _ = make_pump(box, client, max_inflight=2)
    for i in range(11):
        box.put(TOPIC, f'{{"n": {i}}}'.encode())
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)
    try:
        assert pump.round() == 10
        pump._inflight.popitem()  # one slot free in the window: exactly one more row goes
        assert pump.round() == 1 and pump.in_flight == 10
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert sub.wait_until(lambda: len(sub.on("events/match")) >= 11, 10)
    assert sorted(m["n"] for m in sub.on("events/match")) == list(range(11))
    sub.close()


def test_an_acknowledgement_without_a_reason_code_is_a_delivery(client: mqtt.Client, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    pump, _ = make_pump(box, client)
    client.on_publish = None
    box.put(TOPIC, b"{}")
    assert pump.round() == 1
    (mid,) = pump._inflight
    pump.on_publish(None, None, mid, 0, None)  # MQTT 3.1.1 has no reason code: a PUBACK is a delivery
    pump.take_acks()
    assert pump.published == 1 and pump.refused == 0 and box.depth() == 0


def test_a_round_that_fails_is_said_and_the_pump_goes_on_until_closed(
    client: mqtt.Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edge.device.supervisor import Worker

    box = Outbox(tmp_path / "o.sqlite")
    worker = Worker("mqtt-pump", 10.0)
    connected, stop = threading.Event(), threading.Event()
    connected.set()
    stop.set()  # its wait after a failure ends at once
    pump = OutboxPump(box, client, connected, stop, 2, worker)
    assert pump.thread.name == "mqtt-pump" and pump.thread.daemon
    box._db.close()  # reading the outbox now fails
    pump.closing.set()  # one round, then the loop ends
    with caplog.at_level(logging.ERROR, logger="edge.delivery.pump"):
        pump.run()  # on this thread
    assert str(pump.last_error).startswith("outbox pump: Cannot operate on a closed database")
    assert caplog.records[0].getMessage().startswith("mqtt pump: Cannot operate on a closed database")
    assert worker.finished and worker.note == "stopped"


# -- credentials and TLS, against a broker that requires them -------------------------------------


@pytest.fixture()
def secure(tmp_path: Path) -> Iterator[tuple[LocalBroker, Path]]:
    """A TLS-only broker that requires a client certificate of its CA and a password ('door' / 'open-sesame')."""
    from .support import certificates

    pki = certificates(tmp_path / "pki")
    with LocalBroker(tls=(pki / "ca.pem", pki / "server.pem", pki / "server.key"), users={"door": "open-sesame"},
                     require_certificate=True) as b:  # fmt: skip
        yield b, pki


def test_the_devices_credentials_and_certificates_reach_a_broker_that_requires_them(
    secure: tuple[LocalBroker, Path], tmp_path: Path
) -> None:
    from edge.delivery.connection import password_of, tool_client
    from edge.errors import EdgeError, InputError

    b, pki = secure
    secret = tmp_path / "password"
    secret.write_text("open-sesame\n")  # a systemd credential: the line, its newline stripped
    mutual = {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key")}
    for how in ({"password_file": str(secret)}, {"password": "open-sesame"}):
        settings = opts(port=b.port, username="door", **mutual, **how)  # ca_file alone turns TLS on
        assert password_of(settings) == "open-sesame"
        client = tool_client(settings, "parts-tool")
        assert client.is_connected()
        client.loop_stop()
        client.disconnect()
    conn = Connection(opts(port=b.port, username="door", password="open-sesame", **mutual), "door", ("s", b"{}"))
    assert conn.tls
    conn.when_connected(lambda: conn.client.disconnect())
    conn.attempt(0.001)
    assert conn._flaps == 1  # it was accepted: over TLS, with its certificate and password
    wrong = opts(port=b.port, username="door", password="not-it", **mutual)
    with pytest.raises(EdgeError, match=rf"^broker 127\.0\.0\.1:{b.port} refused the connection: Not authorized$"):
        tool_client(wrong, "parts-tool")
    no_cert = opts(port=b.port, username="door", password="open-sesame", ca_file=str(pki / "ca.pem"))
    with pytest.raises(
        EdgeError, match=r"it closed the connection before accepting it \(does it require a client cert"
    ):
        tool_client(no_cert, "parts-tool")  # the broker requires a certificate: one line, at once
    plain = opts(port=b.port)  # no TLS against a TLS port
    plain_conn = Connection(plain, "door", ("s", b"{}"))
    assert not plain_conn.tls
    plain_conn.attempt(0.001)
    assert (
        plain_conn.last_error
        == f"broker 127.0.0.1:{b.port}: it closed the connection before accepting it (is the port TLS?)"
    )
    gone = opts(password_file=str(secret), username="door")
    secret.unlink()  # the file went after the settings were read
    with pytest.raises(InputError, match=r"^mqtt\.password_file .*password cannot be read: No such file or directory$"):
        password_of(gone)
    assert password_of(opts()) is None


def test_tls_files_that_cannot_be_used_are_one_line(tmp_path: Path) -> None:
    from edge.errors import InputError

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(InputError, match=r"^mqtt TLS files cannot be used: "):
        Connection(opts(ca_file=str(junk)), "door", ("s", b"{}"))


def test_a_tls_connection_closed_before_any_connack_is_the_wrong_port_or_protocol(
    secure: tuple[LocalBroker, Path],
) -> None:
    import socket
    import ssl

    _, pki = secure
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def handshake_then_close() -> None:
            raw, _ = server.accept()
            with context.wrap_socket(raw, server_side=True):
                pass  # TLS done, then closed without a word of MQTT

        closer = threading.Thread(target=handshake_then_close)
        closer.start()
        conn = Connection(opts(port=port, ca_file=str(pki / "ca.pem")), "door", ("s", b"{}"))
        conn.attempt(0.001)
        closer.join(10)
    assert (
        conn.last_error
        == f"broker 127.0.0.1:{port}: it closed the connection before accepting it (does it require a client "
        "certificate (mqtt.cert_file)? wrong port or protocol?)"
    )


def test_ssl_failures_are_named_by_their_kind() -> None:
    import ssl

    lower = ssl.SSLError(1, "[SSL] wrong version number (_ssl.c:1000)")
    assert explain(lower, "h", 1, True).startswith("TLS: h:1 does not speak TLS (plain MQTT port?)")
    other = ssl.SSLError(1, "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure")
    assert explain(other, "h", 1, True) == f"TLS handshake with h:1 failed: {other}"
    other.reason = "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert explain(other, "h", 1, True) == "TLS handshake with h:1 failed: SSLV3_ALERT_HANDSHAKE_FAILURE"


def test_a_connection_refused_or_accepted_is_said_with_its_broker_and_id(
    secure: tuple[LocalBroker, Path], caplog: pytest.LogCaptureFixture
) -> None:
    b, pki = secure
    mutual = {"ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key")}
    refused = Connection(opts(port=b.port, username="door", password="not-it", reconnect_max_s=7, **mutual), "door",
                         ("s", b"{}"))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="edge.delivery.connection"):
        refused.attempt(0.001)
    assert (
        refused.last_error
        == "broker refused the connection: Not authorized; check the broker's access rules for this user"
    )
    assert refused._got_connack and not refused.connected.is_set()
    assert [r.getMessage() for r in caplog.records] == [
        f"mqtt: 127.0.0.1:{b.port}: {refused.last_error}; retrying, at least every 7s"
    ]
    caplog.clear()
    ok = Connection(opts(port=b.port, username="door", password="open-sesame", **mutual), "door", ("s", b"{}"))
    ok.last_error = "from before"

    def broken() -> None:
        raise RuntimeError("broken action")

    ok.when_connected(broken)
    ok.when_connected(lambda: ok.client.disconnect())
    with caplog.at_level(logging.INFO, logger="edge.delivery.connection"):
        ok.attempt(0.001)
    said = [r.getMessage() for r in caplog.records]
    assert said[:2] == [f"mqtt connected to 127.0.0.1:{b.port} as door", "mqtt: an on-connect action failed"]
    assert ok._flaps == 1 and ok._got_connack
    import re

    # As the broker saw it: MQTT v5, this client id, a clean start, the keepalive of the settings, the user.
    assert re.search(r" as door \(p5, c1, k30, u'door'\)", b.log.read_text()), b.log.read_text()[-500:]


def test_what_the_link_retains_its_last_will_and_its_workers(tmp_path: Path) -> None:
    """Status and state are retained (a subscriber arriving later gets them), presence published with
    publish() is not; a late subscription is made at once with its QoS; the workers beat and end; and a
    link that vanishes without a DISCONNECT leaves its last will: offline, lost, retained."""
    import re

    from edge.delivery.events import Status
    from edge.device.supervisor import Worker

    from .support import Collector

    with LocalBroker(extra="log_type all\n") as b:
        box = Outbox(tmp_path / "o.sqlite")
        stop = threading.Event()
        net, pump = Worker("mqtt-network", 10.0), Worker("mqtt-pump", 10.0)
        link = MqttLink(opts(port=b.port), Topics("edge", "door"), box, stop, network=net, pump=pump)
        link.pump.last_error = "broker refused event (outbox row 1): Not authorized"  # said of an earlier connection
        link.start()
        try:
            assert link.connected.wait(10)
            live = Collector(b.host, b.port, "edge/door/#")  # sees each as it arrives: then the broker has it
            live.publish("edge/door/presence/z", b"z")  # its own marker back: its subscription is in place
            assert live.wait_until(lambda: bool(live.on("presence/z")), 10)
            link.publish_status(Status(device_id="door", state="online", version="t"))
            link.publish_retained("edge/door/gallery/state", b"state", qos=1)
            link.publish("edge/door/presence/x", b"here", qos=1)
            link.listen("edge/door/late", lambda *a: None, qos=0)  # connected: subscribed now, at its QoS
            assert link.router.subscriptions["edge/door/late"] == 0  # and again at it after a reconnection
            link.subscribe("edge/door/later", qos=1)
            assert live.wait_until(
                lambda: (
                    {t for t, _, _ in live.messages}
                    >= {"edge/door/status", "edge/door/gallery/state", "edge/door/presence/x"}
                ),
                10,
            )
            assert live.on("presence/x") == [b"here"]
            live.close()
            first = Collector(b.host, b.port, "edge/door/#")  # arrives later: told only what is retained
            first.publish("edge/door/presence/y", b"x")  # a marker: what the broker retains has arrived before
            assert first.wait_until(lambda: bool(first.on("presence/y")), 10)
            retained = {t for t, _, r in first.messages if r}
            assert retained == {"edge/door/status", "edge/door/gallery/state"}, first.messages
            first.close()
            log = b.log.read_text()
            assert re.search(r"Received SUBSCRIBE from door\n\d+: \s*edge/door/late \(QoS 0\)", log), log[-800:]
            assert re.search(r"Received SUBSCRIBE from door\n\d+: \s*edge/door/later \(QoS 1\)", log), log[-800:]
            assert net.last_beat > 0 and pump.last_beat > 0 and not net.finished
            assert link.pump.last_error is None  # a new connection: what was said of the last one is cleared
            # Gone without a word: the broker publishes the will.
            watcher = Collector(b.host, b.port, "edge/door/status")
            sock = link.connection.client.socket()
            assert sock is not None
            sock.shutdown(2)
            will = watcher.wait_for("status", lambda s: s["state"] == "offline")
            assert will["lost"] is True and "ts" not in will and will["device_id"] == "door"  # no time: it is stale
            from edge import __version__

            assert will["version"] == __version__
            watcher.close()
        finally:
            stop.set()
            link.close(None, timeout=5)
        assert net.finished and net.note == "stopped" and pump.finished and pump.note == "stopped"


def test_a_subscription_added_while_the_network_thread_subscribes_breaks_nothing() -> None:
    """Found by the link test under load: listen() from the service's thread while the network thread made
    the subscriptions of a new connection raised 'dictionary changed size during iteration'. Here the
    interleaving is made certain: the other thread's addition lands in the middle of subscribe_all."""
    router = Router()
    router.add("edge/a", None)
    router.add("edge/b", None)

    class Interleaved(Subscriptions):
        def subscribe(self, topic: str, qos: int) -> None:
            super().subscribe(topic, qos)
            if topic == "edge/a":
                router.add("edge/c", lambda *a: None)  # what listen() on another thread does, just then

    made = Interleaved()
    router.subscribe_all(made)
    assert made.made == [("edge/a", 1), ("edge/b", 1)]  # the subscriptions as they were when it began
    assert router.subscriptions == {"edge/a": 1, "edge/b": 1, "edge/c": 1}  # the new one: made by listen itself


def test_a_tools_connection_is_named_as_the_broker_sees_it_and_its_failures_are_one_line(tmp_path: Path) -> None:
    import logging as logging_module
    import re

    from edge.delivery.connection import password_of, tool_client
    from edge.demo.broker import free_port
    from edge.device.logs import ScrubbingFormatter
    from edge.errors import EdgeError

    port = free_port()
    with pytest.raises(
        EdgeError, match=rf"^broker 127\.0\.0\.1:{port} refused the connection \(nothing listening there\?\)$"
    ):
        tool_client(opts(port=port), "parts-tool")
    with LocalBroker() as b:
        client = tool_client(opts(port=b.port), "parts-tool")
        client.loop_stop()
        client.disconnect()
        # MQTT v5, an id of its own (name, process, a unique suffix), a clean start, a 30 s keepalive.
        assert re.search(rf" as parts-tool-{os.getpid()}-\d+ \(p5, c1, k30\)", b.log.read_text()), b.log.read_text()
    secret = tmp_path / "password"
    secret.write_text("a-password-from-a-file\n")
    assert password_of(opts(password_file=str(secret), username="door")) == "a-password-from-a-file"
    record = logging_module.LogRecord(
        "t", logging_module.WARNING, __file__, 1, "with a-password-from-a-file", None, None
    )
    said = ScrubbingFormatter(logging_module.Formatter("%(message)s")).format(record)
    assert said.startswith("with ") and "a-password-from-a-file" not in said  # read, then kept out of every log line


def test_the_final_status_goes_out_at_qos_1_retained_before_a_clean_disconnect(tmp_path: Path) -> None:
    import re

    from edge.delivery.events import Status

    with LocalBroker(extra="log_type all\n") as b:
        link = MqttLink(opts(port=b.port), Topics("edge", "door"), Outbox(tmp_path / "o.sqlite"), threading.Event())
        link.start()
        assert link.connected.wait(10)
        link.publish_status(Status(device_id="door", state="online", version="t"))
        link.close(Status(device_id="door", state="offline", version="t"), timeout=5)
        log = b.log.read_text()
    # Both the status and the final one: QoS 1, retained.
    assert len(re.findall(r"Received PUBLISH from door \(d0, q1, r1, m\d+, 'edge/door/status'", log)) == 2, log[-900:]
    assert "Received DISCONNECT from door" in log  # clean: the broker does not publish the will


def test_a_port_that_never_answers_as_mqtt_is_waited_for_and_said_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from edge.delivery.connection import tool_client
    from edge.errors import EdgeError

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="edge.delivery.connection"), pytest.raises(EdgeError) as info:
            tool_client(opts(port=port), "parts-tool", answer_within=0.5)
    assert [r.getMessage() for r in caplog.records] == [
        f"waiting for 127.0.0.1:{port} to answer as an MQTT broker (up to 0.5 s)…"
    ]
    assert str(info.value) == (
        f"broker 127.0.0.1:{port} refused the connection: no MQTT answer (CONNACK) within 0.5 s: "
        "is it an MQTT broker, and TLS or not?"
    )


def test_run_makes_its_attempts_from_the_shortest_back_off() -> None:
    import ssl

    from edge.demo.broker import free_port
    from edge.device.supervisor import Worker

    conn = Connection(opts(port=free_port(), reconnect_min_s=0.25), "door", ("s", b"{}"))

    class Once(Worker):
        def beat(self) -> None:
            super().beat()
            conn.closing.set()  # the first attempt's beat: this attempt is the last

    conn.worker = Once("mqtt-network", 10.0)
    conn.run()
    assert "refused the connection" in str(conn.last_error) and conn.worker.finished
    upper = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] (_ssl.c:1000)")
    assert explain(upper, "h", 1, True).startswith("TLS: h:1 does not speak TLS")
