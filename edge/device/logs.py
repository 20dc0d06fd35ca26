"""Logging set-up: journald priorities, and no secret in any record.

Under systemd, stderr goes to the journal, which reads a leading ``<N>`` as the
syslog priority (0 emerg … 7 debug), so ``journalctl -p warning`` works. The journal
is recognised as systemd documents it (``JOURNAL_STREAM`` names the device and inode
of stderr); anywhere else (a terminal, a pipe, a file) plain timestamps and level names.

Secrets are typed as secrets in the settings and URLs are printed redacted; as a
last line of defence every record's final text is scrubbed of the secret values
registered with ``protect`` (the MQTT password, a camera URL's password), whichever
library wrote it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping

from edge.device.redact import scrub

SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

_secrets: list[str] = []
_lock = threading.Lock()


def syslog_priority(levelno: int) -> int:
    """The syslog priority for a logging level (levels between the named ones round down)."""
    for level in sorted(SYSLOG_PRIORITY, reverse=True):
        if levelno >= level:
            return SYSLOG_PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>name: message`` with N the syslog priority, which journald reads as the level."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\n".join(f"<{syslog_priority(record.levelno)}>{line}" for line in text.splitlines() or [""])


class ScrubbingFormatter(logging.Formatter):
    """Wraps another formatter and masks every registered secret in its output."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        with _lock:
            secrets = list(_secrets)
        return scrub(self.inner.format(record), secrets)


def protect(*values: str | None) -> None:
    """Register secret values that must never appear in a log line."""
    with _lock:
        for v in values:
            if v and len(v) >= 3 and v not in _secrets:  # too short a value would mask ordinary text
                _secrets.append(v)


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is the journal's stream: ``JOURNAL_STREAM`` (set by systemd) is its device:inode."""
    dev, _, ino = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(verbose: bool = False, journal: bool | None = None) -> None:
    """Root handler on stderr: journald format when stderr is the journal (``journal`` overrides)."""
    use_journal = stderr_is_journal() if journal is None else journal
    inner = (
        JournalFormatter("%(name)s: %(message)s")
        if use_journal
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ScrubbingFormatter(inner))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
