"""The ``edge`` command. Exit codes: 0 ok, 2 bad usage or invalid config/input, 1 runtime failure.

Each module registers its own subcommands: ``service`` (run, demo, config, schema),
``gallery`` (enroll, gallery …), ``device`` (device key|wipe), ``ops`` (audit, fleet, identify).

The measuring lab (``edge_lab``: ``eval``, ``bench``, ``fleet simulate``) is another package that
imports this one and is never imported by it: its commands are found through the ``edge.lab`` entry
points and loaded only when one of them (or the whole help) is asked for, so ``edge run`` and every
operator command load nothing of it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge import __version__
from edge.cli import device, gallery, ops, service
from edge.cli.common import lab
from edge.device.logs import setup_logging
from edge.errors import EdgeError


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the device's commands; the lab's too unless ``argv`` names a device command."""
    ap = argparse.ArgumentParser(prog="edge", description="On-device face recognition appliance.")
    ap.add_argument("--version", action="version", version=f"edge {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in (service, gallery, device, ops):
        module.register(sub)
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    if command not in sub.choices:  # a lab command, the whole help, or a typo (argparse lists them all)
        register = lab("commands", required=False)
        if register is not None:
            register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except EdgeError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
