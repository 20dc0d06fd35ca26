"""The ``edge`` command. Exit codes: 0 ok, 2 bad usage or invalid config/input, 1 runtime failure.

Each module registers its own subcommands: ``service`` (run, demo, config, schema),
``gallery`` (enroll, gallery …), ``device`` (device key|wipe), ``measure`` (eval, bench), ``ops`` (audit, fleet, identify).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge import __version__
from edge.cli import device, gallery, measure, ops, service
from edge.device.logs import setup_logging
from edge.errors import EdgeError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge", description="On-device face recognition appliance.")
    ap.add_argument("--version", action="version", version=f"edge {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)
    for module in (service, gallery, device, measure, ops):
        module.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
