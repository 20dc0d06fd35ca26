"""A Mosquitto broker on a free loopback port, for ``edge demo`` and the tests.

It runs the real ``mosquitto`` binary with a private config (anonymous, loopback
only, persistence in a private folder, optionally a bridge to another one), can be stopped
and restarted on the same port, and is always killed on exit.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from edge.errors import EdgeError


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    def __init__(
        self,
        port: int | None = None,
        message_size_limit: int = 0,
        tls: tuple[Path, Path, Path] | None = None,
        users: dict[str, str] | None = None,
        require_certificate: bool = False,
        extra: str = "",
        config: str | None = None,
    ) -> None:
        """``tls``: (CA certificate, server certificate, server key) for a TLS listener;
        ``users``: name → password (anonymous clients are then refused);
        ``require_certificate``: clients must present a certificate signed by the CA (mutual TLS);
        ``extra``: more configuration, appended (a bridge to another broker: ``edge.delivery.bridge``);
        ``config``: a whole configuration of one's own instead (its listener on ``port``), to which only the
        log file, the user and persistence in a private folder are added."""
        binary = find_mosquitto()
        if binary is None:
            raise EdgeError("mosquitto not found: install it (Debian/Raspberry Pi OS: apt install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="edge-broker-"))
        self.log = self._dir / "mosquitto.log"
        conf = self._dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            f"log_dest file {self.log}",
            # Started as root, mosquitto would switch to user 'mosquitto', who cannot
            # write in this private folder: run it as whoever runs the tests or demo.
            f"user {getpass.getuser()}",
            # Persistence keeps durable subscribers' queued messages across a restart.
            "persistence true",
            f"persistence_location {self._dir}/",
            "autosave_interval 1",
        ]
        if tls is not None:
            ca, cert, key = tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}", "tls_version tlsv1.2"]
            if require_certificate:
                lines.append("require_certificate true")
        if users:
            passwd = self._dir / "passwd"
            tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(
                    [tool, "-b", *(["-c"] if i == 0 else []), str(passwd), user, password],
                    check=True,
                    capture_output=True,
                )
            lines.append(f"password_file {passwd}")
        if message_size_limit:
            lines.append(f"message_size_limit {message_size_limit}")
        if config is not None:
            lines = [*lines[2:], config]
        conf.write_text("\n".join(lines) + "\n" + extra)
        self.conf = conf
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> LocalBroker:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise EdgeError(f"mosquitto exited at start: {err.strip() or self.log.read_text()[-300:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise EdgeError(f"mosquitto did not listen on port {self.port} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
