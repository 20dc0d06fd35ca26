"""No part of the service dies or stalls alone.

Every worker (the frame loop, the camera reader, the MQTT pump and network thread,
the gallery sync) registers here and beats while it makes progress, idle waits
included. The supervisor's own thread checks them every second: a worker whose
thread ended without saying it was done, or that has not beaten for its stall
limit, is a fatal fault. Then the service stops pinging systemd's watchdog, logs
the cause, publishes it in the final status, and exits non-zero (systemd restarts
it). A frame loop that is itself wedged cannot shut down in order, so after a grace
period the process is ended hard, still with a non-zero code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """A worker's handle: ``beat`` while making progress, ``done`` when it ends normally. Workers of
    one ``group`` (the cameras' readers) stand in for each other: one that dies or stalls is reported
    in ``trouble`` while another of its group still works; only the whole group down is a fault."""

    name: str
    stall_after: float
    thread: threading.Thread | None = None
    last_beat: float = field(default_factory=time.monotonic)
    finished: bool = False
    note: str = ""
    group: str | None = None
    trouble: str | None = None  # why it is out while its group goes on (None: fine)

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def done(self, note: str = "") -> None:
        self.finished, self.note = True, note


@dataclass(frozen=True, slots=True)
class SupervisorHealth:
    """A snapshot of the supervisor's own health: the fault that ends the run, if one was found, and the
    workers out while their group goes on (as of the last check)."""

    problem: str | None
    trouble: tuple[tuple[str, str], ...]  # (worker, why)


class Supervisor:
    def __init__(
        self,
        stall_timeout: float,
        on_fatal: Callable[[str], None],
        interval: float = 1.0,
    ) -> None:
        self.stall_timeout = stall_timeout
        self.on_fatal = on_fatal
        self.interval = interval
        self._workers: list[Worker] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.fault: str | None = None
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    def register(
        self,
        name: str,
        thread: threading.Thread | None = None,
        stall_after: float | None = None,
        group: str | None = None,
    ) -> Worker:
        worker = Worker(name, stall_after or self.stall_timeout, thread, group=group)
        with self._lock:
            self._workers.append(worker)
        return worker

    def attach(self, worker: Worker, thread: threading.Thread) -> None:
        """The thread a registered worker runs on (known only once it is created)."""
        worker.thread = thread
        worker.beat()

    def check(self, now: float | None = None) -> str | None:
        """The fault found, or None while every worker is alive and making progress. A worker that
        ended comes first; of several stalled ones, the one silent longest (the others are most
        likely waiting for what it holds), the rest named after it."""
        if self.fault is not None:
            return self.fault
        now = time.monotonic() if now is None else now
        with self._lock:
            workers = list(self._workers)
        stalled: list[tuple[float, Worker]] = []
        down: dict[int, str] = {}  # id(worker) → why it is out
        for w in workers:
            if w.finished:
                continue
            if w.thread is not None and w.thread.ident is not None and not w.thread.is_alive():
                down[id(w)] = f"worker '{w.name}' ended unexpectedly{': ' + w.note if w.note else ''}"
                continue
            idle = now - w.last_beat
            if idle > w.stall_after:
                stalled.append((idle, w))
                down[id(w)] = f"worker '{w.name}' stalled: no progress for {idle:.0f}s (limit {w.stall_after:.0f}s)"
        # A worker whose group still has one that works is trouble, not a fault.
        working = {w.group for w in workers if w.group is not None and id(w) not in down and not w.finished}
        for w in workers:
            excused = w.group is not None and w.group in working and id(w) in down
            w.trouble = down[id(w)] if excused else None
        fatal = [w for w in workers if id(w) in down and not (w.group is not None and w.group in working)]
        ended = [w for w in fatal if not any(s is w for _, s in stalled)]
        if ended:
            return down[id(ended[0])]
        stalled = [(i, w) for i, w in stalled if any(f is w for f in fatal)]
        if not stalled:
            return None
        stalled.sort(key=lambda s: -s[0])
        idle, first = stalled[0]
        reason = f"worker '{first.name}' stalled: no progress for {idle:.0f}s (limit {first.stall_after:.0f}s)"
        if len(stalled) > 1:
            reason += "; also stalled: " + ", ".join(f"'{w.name}' ({i:.0f}s)" for i, w in stalled[1:])
        return reason

    def health(self) -> SupervisorHealth:
        """Read-only: what the last check found (checking is the supervisor thread's and the loop's job)."""
        with self._lock:
            trouble = tuple((w.name, w.trouble) for w in self._workers if w.trouble)
        return SupervisorHealth(self.fault, trouble)

    @property
    def healthy(self) -> bool:
        return self.check() is None

    def fail(self, reason: str) -> None:
        """Declare a fault found elsewhere (a worker that caught what it cannot survive)."""
        if self.fault is None:
            self.fault = reason
            log.critical("fatal: %s; stopping (systemd restarts the service)", reason)
            self.on_fatal(reason)

    def start(self) -> None:
        """Begin checking; every worker's stall clock starts now (start-up work is not a stall)."""
        with self._lock:
            for w in self._workers:
                w.beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval * 2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            reason = self.check()
            if reason is not None:
                self.fail(reason)
                return
