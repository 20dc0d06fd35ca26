"""No part of the service dies or stalls alone; outside input is bounded and named
(issue 12: findings 3, 4, 8, 10 and the supervision rule), with real parts: a real
Mosquitto, real SQLite failures, real threads killed or wedged."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture.imageio import read_image
from edge.capture.reader import CaptureThread, LatestFrame
from edge.capture.sources import ImageDirSource
from edge.delivery.mqtt import MqttLink, Topics
from edge.delivery.outbox import Outbox
from edge.demo.broker import LocalBroker
from edge.device.config import load_settings
from edge.device.settings import Settings
from edge.device.supervisor import Supervisor
from edge.errors import EdgeError, ImageError
from edge.recognition.pipeline import Recognizer
from edge.types import ImageArray

from .conftest import FACES
from .support import Collector, watching_logs, write_png


@pytest.fixture()
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as b:
        yield b


# -- images (finding 4) -------------------------------------------------------------------
def test_a_decompression_bomb_is_refused_by_its_header_naming_the_file(tmp_path: Path) -> None:
    bomb = write_png(tmp_path / "bomb.png", 50_000, 50_000)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageError, match=r"bomb\.png declares 50000x50000 pixels \(PNG\), over the limit"):
        read_image(bomb)
    tiny = write_png(tmp_path / "tiny.png", 4, 4)
    with pytest.raises(ImageError, match=r"tiny\.png is 4x4 pixels: too small to hold a face"):
        read_image(tiny)
    fifo = tmp_path / "pipe.png"
    import os

    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(fifo)  # would block forever if opened


def test_enrolment_names_bad_photos_and_enrols_the_rest(tmp_path: Path, recognizer: Recognizer) -> None:
    from edge.gallery.enroll import enroll_directory

    person = tmp_path / "photos" / "Laura_Bush"
    person.mkdir(parents=True)
    (person / "a.jpg").write_bytes((FACES / "Laura_Bush" / "Laura_Bush_0016.jpg").read_bytes())
    write_png(person / "bomb.png", 60_000, 60_000)
    write_png(person / "tiny.png", 5, 5)
    (report,) = enroll_directory(recognizer, tmp_path / "photos")
    assert report.accepted == ["a.jpg"]
    assert "declares 60000x60000" in report.rejected["bomb.png"] and "bomb.png" in report.rejected["bomb.png"]
    assert "too small" in report.rejected["tiny.png"]


def test_the_capture_thread_survives_bad_files_and_keeps_reading(tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    good = cv2.imencode(".png", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    (folder / "a.png").write_bytes(good)
    write_png(folder / "b_bomb.png", 50_000, 50_000)
    (folder / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    (folder / "d.png").write_bytes(good)
    slot, stop = LatestFrame(), threading.Event()
    sup = Supervisor(5.0, lambda reason: None)
    worker = sup.register("capture")
    cap = CaptureThread(ImageDirSource(folder), slot, stop, realtime=False, at_end="exit", worker=worker)
    sup.attach(worker, cap)
    with watching_logs() as logs:
        cap.start()
        frames = []
        while (f := slot.take(timeout=10)) is not None:
            frames.append(f)
        cap.join(10)
    assert len(frames) == 2 and cap.status.state == "exhausted"
    assert sup.check() is None and worker.finished  # ended normally, not a fault
    assert "b_bomb.png declares 50000x50000" in logs.text() and "c_broken.png" in logs.text()


def test_a_file_played_as_fast_as_processed_keeps_its_own_time_over_a_replay(tmp_path: Path) -> None:
    """Tracking counts seconds: frames of a file read faster than its rate are stamped n / fps apart,
    so the device does what it would at the native rate, on any machine."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.png").write_bytes(cv2.imencode(".png", np.full((48, 64, 3), 90, np.uint8))[1].tobytes())
    slot, stop = LatestFrame(), threading.Event()
    cap = CaptureThread(ImageDirSource(folder, fps=10.0), slot, stop, realtime=False, at_end="loop")
    cap.start()
    frames = []
    while len(frames) < 7 and (f := slot.take(timeout=10)) is not None:
        frames.append(f)
    stop.set()
    slot.close()
    cap.join(10)
    gaps = np.diff([f.ts for f in frames])
    assert len(frames) == 7 and np.allclose(gaps, 0.1)  # over the replay too
    assert [f.seq for f in frames] == list(range(1, 8))


def test_a_file_that_cannot_be_opened_ends_an_exit_at_end_run(tmp_path: Path) -> None:
    from edge.capture.sources import open_source

    slot, stop = LatestFrame(), threading.Event()
    cap = CaptureThread(open_source(str(tmp_path / "missing.mp4")), slot, stop, at_end="exit")
    cap.start()
    assert cap.exhausted.wait(10)
    assert cap.status.state == "failed" and cap.failure is not None and "missing.mp4: no such file" in cap.failure
    assert slot.take(timeout=1) is None  # the loop is released


# -- outbox (findings 3 and 10) -------------------------------------------------------------
def test_outbox_age_does_not_follow_wall_clock_jumps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_events=100, max_age_s=3600)
    for i in range(5):
        box.put("t", f"e{i}".encode())
    # NTP corrects a Pi's clock by years after boot, in either direction.
    real = time.time
    for jump in (10 * 365 * 86400, -10 * 365 * 86400):
        monkeypatch.setattr(time, "time", lambda jump=jump: real() + jump)
        box.put("t", b"after the jump")
    assert box.depth() == 7 and box.dropped() == 0
    # The service clock goes on across restarts, from where it was saved.
    t = box.service_time()
    box.close()
    again = Outbox(tmp_path / "o.sqlite", max_events=100, max_age_s=3600)
    assert again.service_time() >= t and again.depth() == 7
    # Age still counts, in service time: rows older than max_age_s are dropped and counted.
    again.put("t", b"much later", now=again.service_time() + 7200)
    assert again.depth() == 1 and again.dropped() == 7


def test_an_outbox_from_before_the_service_clock_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
        " created REAL NOT NULL); CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        " INSERT INTO outbox (topic, payload, created) VALUES ('t', X'6F6C64', 1700000000.0);"
    )
    con.commit()
    con.close()
    box = Outbox(db, max_age_s=60)
    box.put("t", b"new")
    assert [p.payload for p in box.pending()] == [b"old", b"new"]  # wall-clock times no longer age anything


def test_the_pump_survives_an_outbox_that_cannot_delete_and_catches_up(broker: LocalBroker, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    stop = threading.Event()
    sup = Supervisor(10.0, lambda reason: None)
    net, pump = sup.register("mqtt-network"), sup.register("mqtt-pump")
    settings = load_settings(environ={}, overrides={"mqtt": {"host": broker.host, "port": broker.port}})
    link = MqttLink(settings.mqtt, Topics("edge", "pumptest"), box, stop, network=net, pump=pump)
    sup.attach(net, link.threads[0])
    sup.attach(pump, link.threads[1])
    sub = Collector(broker.host, broker.port, "edge/pumptest/events/match")
    box._db.execute("PRAGMA query_only = ON")  # every write now fails, as on a full or read-only disk
    with pytest.raises(EdgeError):
        box.put("edge/pumptest/events/match", b"{}")
    box._db.execute("PRAGMA query_only = OFF")
    for i in range(3):
        box.put("edge/pumptest/events/match", f'{{"n": {i}}}'.encode())
    box._db.execute("PRAGMA query_only = ON")  # the events are stored; their deletes will fail
    link.start()
    try:
        assert sub.wait_until(lambda: len(sub.on("events/match")) == 3, 20)  # published, PUBACKs in
        assert link.wait(lambda: link.ack_failures > 0, 20)
        assert "acknowledged event" in str(link.last_error) and "not removed" in str(link.last_error)
        assert link.threads[1].is_alive() and sup.check() is None  # the pump lives on, and beats
        assert box.depth() == 3
        box._db.execute("PRAGMA query_only = OFF")  # the disk recovers
        assert link.wait(lambda: box.depth() == 0, 20)
        assert link.published == 3
    finally:
        stop.set()
        link.close(None)
        sub.close()


def test_of_several_stalled_workers_the_one_silent_longest_is_named_first() -> None:
    sup = Supervisor(2.0, lambda reason: None)
    loop, net, pump = sup.register("frame-loop"), sup.register("mqtt-network"), sup.register("mqtt-pump")
    t0 = time.monotonic()
    loop.last_beat, net.last_beat, pump.last_beat = t0 - 5.0, t0 - 3.0, t0
    assert sup.check(now=t0) == (
        "worker 'frame-loop' stalled: no progress for 5s (limit 2s); also stalled: 'mqtt-network' (3s)"
    )
    loop.last_beat = t0
    assert sup.check(now=t0) == "worker 'mqtt-network' stalled: no progress for 3s (limit 2s)"
    net.last_beat = t0
    assert sup.check(now=t0) is None


# -- supervision: killed and wedged workers end the service non-zero -------------------------
def _raise_in(thread: threading.Thread) -> None:
    """Kill a thread from outside: raise SystemExit in it (a real thread death, no mock)."""
    assert thread.ident is not None
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
    assert n == 1


class RunningApp:
    """An App running in a thread of this process, its hard exit recorded instead of performed."""

    def __init__(self, settings: Settings, recognizer: Recognizer) -> None:
        from edge.service.app import App, RunResult

        self.exits: list[int] = []
        self.exited = threading.Event()
        self.finished = threading.Event()  # either way

        def hard_exit(code: int) -> None:
            self.exits.append(code)
            self.exited.set()
            self.finished.set()

        self.app = App(settings, recognizer, hard_exit=hard_exit)
        self.result: RunResult | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.app.run()
        finally:
            self.done.set()
            self.finished.set()

    def ended(self, timeout: float) -> bool:
        """The run ended, in order (``result``) or by the hard exit (``exits``)."""
        return self.finished.wait(timeout)

    def __enter__(self) -> RunningApp:
        assert self.app.ready.wait(30), "the app did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.app.stop.set()
        self.done.wait(30)


def app_settings(broker: LocalBroker, tmp_path: Path, **extra: dict[str, object]) -> Settings:
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    for i in range(3):
        cv2.imwrite(str(frames / f"{i}.png"), np.full((120, 160, 3), 80 + i, np.uint8))
    over: dict[str, dict[str, object]] = {
        "source": {"uri": str(frames), "at_end": "loop", "rate": "native", "fps": 30},
        "device": {"id": "supervised", "state_dir": str(tmp_path / "state")},
        "mqtt": {"host": broker.host, "port": broker.port, "heartbeat_s": 600},
        "health": {"stall_timeout_s": 2, "exit_grace_s": 4},
    }
    for section, values in extra.items():
        over.setdefault(section, {}).update(values)
    return load_settings(environ={}, overrides=over)


# The bound: the unit's WatchdogSec. Expected here: stall 2 s + check 1 s + grace 4 s; the rest
# is headroom for a loaded CI machine (the waits return as soon as the run ends).
WITHIN_WATCHDOG = 30.0


def online(broker: LocalBroker) -> None:
    """The device has said it is online: what runs on the network thread at connect is done."""
    status = Collector(broker.host, broker.port, "edge/supervised/status")
    status.wait_for("status", lambda s: s["state"] == "online")
    status.close()


WORKERS = ["capture", "mqtt-network", "mqtt-pump", "frame-loop"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # killed on purpose
@pytest.mark.parametrize("name", WORKERS)
def test_a_killed_worker_ends_the_run_non_zero_saying_why(
    name: str, broker: LocalBroker, tmp_path: Path, recognizer: Recognizer
) -> None:
    status = Collector(broker.host, broker.port, "edge/supervised/status")
    with RunningApp(app_settings(broker, tmp_path), recognizer) as running:
        status.wait_for("status", lambda s: s["state"] == "online")
        app = running.app
        thread = {
            "capture": app.cameras[0].capture,
            "mqtt-network": app.link.threads[0],
            "mqtt-pump": app.link.threads[1],
            "frame-loop": running.thread,
        }[name]
        _raise_in(thread)
        assert running.ended(WITHIN_WATCHDOG), "the run did not end"
        assert app.fault is not None and f"worker '{name}'" in app.fault
        assert running.result is not None and running.result.exit_code == 1
        final = status.wait_for("status", lambda s: s["state"] == "offline" and "last_error" in s)
        assert name in final["last_error"]
    status.close()


@pytest.mark.slow
def test_a_wedged_gallery_sync_ends_the_run(broker: LocalBroker, tmp_path: Path, recognizer: Recognizer) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.gallery.bundle import Identity, generate_key, load_private_key

    from .support import sealed_for

    keyfile = tmp_path / "k.pem"
    generate_key(keyfile)
    key: Ed25519PrivateKey = load_private_key(keyfile)
    settings = app_settings(broker, tmp_path, gallery={"name": "lobby", "trusted_keys": [f"{keyfile}.pub"]})
    bundle = sealed_for(
        [settings.device.state_dir],
        [Identity("a", None, np.eye(recognizer.embedder.dim, dtype=np.float32)[:2], {})],
        "lobby",
        1,
        recognizer.embedder_sha256,
        key,
    )
    status = Collector(broker.host, broker.port, "edge/supervised/status")
    with RunningApp(settings, recognizer) as running:
        app = running.app
        assert app.sync is not None
        app.gallery._lock.acquire()  # the sync will wait for it forever: a wedge, not a crash
        try:
            # Retained: the device gets it whether or not it has subscribed yet.
            status.publish("edge/galleries/lobby", bundle, retain=True)
            assert running.ended(WITHIN_WATCHDOG)
            assert app.fault is not None and "worker 'gallery-sync' stalled" in app.fault
        finally:
            app.gallery._lock.release()
    status.close()


@pytest.mark.slow
def test_a_wedged_frame_loop_is_ended_hard(broker: LocalBroker, tmp_path: Path, recognizer: Recognizer) -> None:
    with RunningApp(app_settings(broker, tmp_path), recognizer) as running:
        app = running.app
        online(broker)  # the connect callback (status: statistics, outbox depth) is behind us
        app.stats._lock.acquire()  # the frame loop blocks on its next statistic: wedged
        try:
            assert running.exited.wait(WITHIN_WATCHDOG), "no hard exit"
            assert running.exits == [1]
            assert app.fault is not None and "worker 'frame-loop' stalled" in app.fault
        finally:
            app.stats._lock.release()


@pytest.mark.slow
def test_a_wedged_outbox_stalls_the_pump_and_ends_the_run(
    broker: LocalBroker, tmp_path: Path, recognizer: Recognizer
) -> None:
    with RunningApp(app_settings(broker, tmp_path), recognizer) as running:
        app = running.app
        online(broker)
        app.outbox._lock.acquire()  # the pump waits for the outbox forever
        try:
            assert running.ended(WITHIN_WATCHDOG)
            assert app.fault is not None and "worker 'mqtt-pump' stalled" in app.fault
        finally:
            app.outbox._lock.release()


class Wedged:
    """A camera whose driver hangs in read() (the FrameSource protocol; a stand-in for a stuck USB camera)."""

    name, live, fps, stills = "wedged-camera", True, 30.0, False

    def __init__(self) -> None:
        self.release = threading.Event()

    def open(self) -> None:
        pass

    def read(self) -> ImageArray | None:
        self.release.wait()
        return None

    def close(self) -> None:
        pass


@pytest.mark.slow
def test_a_hung_camera_ends_the_run(broker: LocalBroker, tmp_path: Path, recognizer: Recognizer) -> None:
    from edge.service.app import App

    exits: list[int] = []
    app = App(app_settings(broker, tmp_path), recognizer, hard_exit=exits.append)
    source = Wedged()
    app.cameras[0].capture.source = source
    try:
        result = app.run()
    finally:
        source.release.set()
    assert result.exit_code == 1 and app.fault is not None and "worker 'capture' stalled" in app.fault
    assert exits == []  # an orderly shutdown: the frame loop was alive


class FlakyCamera:
    """A live camera serving frames from memory that drops out once, mid-stream, and refuses the
    first reopen (a USB camera unplugged and plugged back in)."""

    name, live, fps, stills = "flaky-camera", True, 30.0, False

    def __init__(self, frames: int, drop_after: int) -> None:
        from edge.capture.sources import SourceError

        self.error = SourceError
        self.frames, self.drop_after = frames, drop_after
        self.served = self.opens = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens == 2:
            raise self.error("source flaky-camera: cannot be opened (not plugged back yet)")

    def read(self) -> ImageArray | None:
        if self.served == self.drop_after and self.opens == 1:
            raise self.error("source flaky-camera: no frame (device gone or stream dropped)")
        if self.served >= self.frames:
            return None
        self.served += 1
        return np.full((48, 64, 3), self.served % 250, np.uint8)

    def close(self) -> None:
        pass


def test_a_camera_lost_mid_stream_is_reopened_and_frames_flow_again() -> None:
    slot, stop = LatestFrame(), threading.Event()
    camera = FlakyCamera(frames=20, drop_after=5)
    cap = CaptureThread(camera, slot, stop, realtime=False, at_end="exit", retry_initial_s=0.01, retry_max_s=0.05)
    states: list[str] = []
    with watching_logs() as logs:
        cap.start()
        seen = []
        while (f := slot.take(timeout=10)) is not None:
            seen.append(f)
            states.append(cap.status.state)
        cap.join(10)
    # Every frame was delivered or (live camera, slow reader) dropped as stale, across the loss and the
    # failed reopen; the newest one came through.
    assert camera.opens == 3 and len(seen) + slot.dropped == 20
    assert int(seen[-1].image[0, 0, 0]) == 20 and any(int(f.image[0, 0, 0]) > 5 for f in seen)
    assert "(device gone or stream dropped); retrying" in logs.text()
    assert "(not plugged back yet); retrying" in logs.text()
    assert cap.status.state == "exhausted" and cap.status.error is None


def test_one_camera_of_several_stalled_is_that_cameras_trouble_all_of_them_a_fault() -> None:
    faults: list[str] = []
    sup = Supervisor(5.0, faults.append)
    door, yard = sup.register("capture:door", group="cameras"), sup.register("capture:yard", group="cameras")
    loop = sup.register("frame-loop")
    now = time.monotonic()
    for w in (door, yard, loop):
        w.last_beat = now
    yard.last_beat = now - 10  # stuck in its driver
    assert sup.check(now) is None  # the door camera still works: no fault
    assert yard.trouble is not None and "capture:yard' stalled" in yard.trouble and door.trouble is None
    assert sup.health() == sup.health() and sup.health().problem is None
    assert sup.health().trouble == (("capture:yard", yard.trouble),)  # what the last check found, read-only
    yard.last_beat = now  # it came back
    assert sup.check(now) is None and yard.trouble is None
    door.last_beat = yard.last_beat = now - 10
    reason = sup.check(now)
    assert reason is not None and "stalled" in reason and "capture:" in reason  # every camera down: a fault
    loop.last_beat = now - 10
    assert "frame-loop" in (sup.check(now) or "")  # a worker outside the group is a fault on its own
    sup.fail("worker 'frame-loop' stalled")
    assert sup.health().problem == "worker 'frame-loop' stalled" and faults == ["worker 'frame-loop' stalled"]
