"""Helpers shared by the command modules: settings from flags, progress, argument parsers."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.device.config import load_settings
from edge.device.settings import Settings
from edge.errors import InputError


def counted(n: int, one: str, many: str | None = None) -> str:
    """'1 identity', '2 identities': a count with its noun in the right number."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def progress_bar(label: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None
    start = time.monotonic()

    def show(done: int, total: int) -> None:
        if done != total and done % 20:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.monotonic() - start, 1e-6)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.0f}/s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def settings_from(args: argparse.Namespace, **models: Any) -> Settings:
    """Settings from ``--config`` (and the environment), with the model flags given on the command line."""
    overrides: dict[str, Any] = {}
    model_over = {k: v for k, v in models.items() if v is not None}
    if model_over:
        overrides["models"] = model_over
    return load_settings(getattr(args, "config", None), overrides=overrides)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--threads", type=int, help="interpreter threads")
    p.add_argument("--detector", choices=["short", "full"], help="BlazeFace variant")
    p.add_argument(
        "--embedder", metavar="NAME", help="embedder: an entry of models/manifest.json (default: the settings')"
    )


def parse_broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--broker {value!r}: expected HOST:PORT")
    return host, int(port)


def parse_size(value: str) -> tuple[int, int]:
    """``1280x720`` → (1280, 720)."""
    w, sep, h = value.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or not (8 <= int(w) <= 8192 and 8 <= int(h) <= 8192):
        raise InputError(f"--size {value!r}: expected WIDTHxHEIGHT, e.g. 1280x720 (8–8192 px each)")
    return int(w), int(h)


def parse_distances(value: str) -> list[float]:
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        out = []
    if not out or any(not 0.2 <= d <= 50 for d in out):
        raise InputError(f"--distances {value!r}: expected metres separated by commas, e.g. 1,2,3,4,5,6")
    return out


def lab(name: str, required: bool = True) -> Any:
    """An entry of the measuring lab (``edge_lab``, entry point group ``edge.lab``), loaded now. None, or
    with ``required`` an InputError, when the lab is not installed beside the device package."""
    from importlib.metadata import entry_points

    found = entry_points(group="edge.lab", name=name)
    if not found:
        if required:
            raise InputError(
                f"the measuring lab is not installed ({name}): install the package with its lab "
                "(pip install -e . from a checkout)"
            )
        return None
    return next(iter(found)).load()
