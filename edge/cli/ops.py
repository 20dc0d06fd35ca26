"""Operator commands: ``audit verify|show`` (and ``fleet status``, ``identify``)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from edge.cli.common import counted
from edge.device.config import load_settings
from edge.errors import InputError


def audit_folder(args: argparse.Namespace) -> Path:
    """The audit log of --state-dir, or of the state dir in --config (default settings otherwise)."""
    state: Path = args.state_dir or load_settings(args.config).device.state_dir
    return state / "audit"


def cmd_audit(args: argparse.Namespace) -> int:
    from edge.delivery import audit

    folder = audit_folder(args)
    if args.audit_command == "verify":
        v = audit.verify(folder, args.head)
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": v.ok,
                        "records": v.records,
                        "first_seq": v.first_seq,
                        "head": v.head.hash,
                        "last_seq": v.head.records,
                        "torn_tail": v.torn_tail,
                        "message": v.message,
                    }
                )
            )
        else:
            print(v.message if v.ok else f"audit log {folder}: {v.message}")
        return 0 if v.ok else 1
    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            raise InputError(f"--since {args.since!r}: expected an ISO time such as 2026-11-24T08:00") from None
        since = since if since.tzinfo else since.replace(tzinfo=timezone.utc)
    if not folder.is_dir():
        raise InputError(f"no audit log under {folder}")
    for record in audit.records_since(folder, since):
        if args.json:
            print(json.dumps(record))
        else:
            data = " ".join(f"{k}={v}" for k, v in record["data"].items())
            print(f"{record['seq']:>7} {record['ts']}  {record['kind']:<17} {data}")
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from edge.device.keys import load_key_file
    from edge.gallery.admit import load_trusted
    from edge.recognition.pipeline import Recognizer
    from edge.service.identify import identify, load_gallery, photos

    recognizer = Recognizer(load_settings(args.config))
    device_key = load_key_file(args.device_key) if args.device_key else None
    gallery = load_gallery(recognizer, args.gallery, load_trusted(args.trusted_key or []), device_key)
    snapshot = recognizer.matcher.snapshot(gallery)
    files = list(photos(args.images))
    if not files:
        raise InputError("no photo to identify (JPEG, PNG, BMP, WebP) among the paths given")
    unreadable = 0
    if not args.json:
        print(
            f"gallery {args.gallery}: {counted(len(snapshot), 'identity', 'identities')}, at most "
            f"{recognizer.settings.match.max_false_match_rate:g} false matches per stranger; each face's threshold is that of "
            "its size and of the identity's photos"
        )
        print(f"{'file':<40} {'face':>4} {'box':<22} {'identity':<24} {'score':>6} {'thresh':>6}  note")
    for path in files:
        for v in identify(recognizer, snapshot, path, recognizer.settings.events.include_label):
            unreadable += v.face is None and v.reason != "no face found"
            if args.json:
                print(json.dumps(v.as_json()), flush=True)
                continue
            box = "-" if v.bbox is None else ",".join(str(c) for c in v.bbox)
            who = v.identity_id or ("-" if v.face is None or not v.quality_ok else "unknown")
            score = "-" if v.score is None else f"{v.score:.3f}"
            thr = "-" if v.threshold is None else f"{v.threshold:.3f}"
            note = v.reason or (f"est. false-match rate {v.est_false_match_rate:.1e}" if v.identity_id else "")
            name = v.file if len(v.file) <= 40 else "…" + v.file[-39:]
            print(f"{name:<40} {'-' if v.face is None else v.face:>4} {box:<22} {who:<24} {score:>6} {thr:>6}  {note}")
    return 2 if unreadable else 0


def cmd_fleet(args: argparse.Namespace) -> int:
    import sys
    import threading

    from edge.cli.common import parse_broker
    from edge.delivery.fleet import Fleet, table

    opts = load_settings(args.config).mqtt
    if args.broker:
        host, port = parse_broker(args.broker)
        opts = opts.model_copy(update={"host": host, "port": port})
    prefix = args.prefix or opts.topic_prefix
    fleet = Fleet(opts, prefix)
    fleet.connect()
    try:
        fleet.wait_synced()

        def draw(rows: list[dict[str, object]]) -> None:
            if args.json:
                print(json.dumps(rows), flush=True)
            else:
                if args.watch and sys.stdout.isatty():
                    print("\033[H\033[J", end="")
                print(table(rows), flush=True)

        draw(fleet.rows(args.stale_after))
        if args.watch:
            stop = threading.Event()
            try:
                fleet.watch(draw, args.stale_after, stop)
            except KeyboardInterrupt:
                stop.set()
    finally:
        fleet.close()
    return 0


def cmd_fleet_simulate(args: argparse.Namespace) -> int:
    from edge.cli.common import lab

    return int(lab("fleet_simulate")(args))  # the measuring lab's; loaded only when called


def cmd_fleet_bridge_config(args: argparse.Namespace) -> int:
    from edge.cli.common import parse_broker
    from edge.delivery.bridge import bridge_config

    host, port = parse_broker(args.central)
    print(bridge_config(args.site, host, port, args.prefix, args.discovery_prefix, args.cafile), end="")
    return 0


def cmd_fleet_acl(args: argparse.Namespace) -> int:
    from edge.delivery.acl import acl, parse_devices

    text = acl(
        parse_devices(args.device), args.publisher, args.reader or ["homeassistant"], args.prefix, args.discovery_prefix
    )
    if args.out is None:
        print(text, end="")
        return 0
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(
        f"wrote {args.out}: {len(parse_devices(args.device))} devices; point the broker's acl_file at it and "
        "reload it (docs/broker.md)"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fl = sub.add_parser("fleet", help="every device under a prefix, from the broker").add_subparsers(
        dest="fleet_command", required=True
    )
    st = fl.add_parser("status", help="one row per device: online, gallery, camera, outbox, last heartbeat")
    st.add_argument("--broker", help="HOST:PORT (default: [mqtt] of --config)")
    st.add_argument("--config", type=Path, help="settings whose [mqtt] section (TLS, credentials) is used")
    st.add_argument("--prefix", help="topic prefix (default: [mqtt] topic_prefix, 'edge')")
    st.add_argument("--json", action="store_true", help="one JSON array, an object per device")
    st.add_argument("--watch", action="store_true", help="keep listening and redraw as messages come")
    st.add_argument("--stale-after", type=float, default=120.0, help="an online device silent this long is 'stale'")
    st.set_defaults(func=cmd_fleet)
    sim = fl.add_parser("simulate", help="N simulated devices on a local Mosquitto: what a fleet costs")
    sim.add_argument("--devices", type=int, default=500)
    sim.add_argument(
        "--processes",
        type=int,
        help="simulator processes the devices are spread over (default: one per 150 devices, at least 2)",
    )
    sim.add_argument("--heartbeat", type=float, default=10.0, help="status heartbeat of the simulated devices, s")
    sim.add_argument("--identities", type=int, default=100, help="identities in the bundle published")
    sim.add_argument("--sites", type=int, default=0, help="site brokers bridged to a central one (0: one broker)")
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(func=cmd_fleet_simulate)
    br = fl.add_parser("bridge-config", help="a site broker's Mosquitto bridge to the central one (conf.d file)")
    br.add_argument("--central", required=True, help="HOST:PORT of the central broker")
    br.add_argument("--site", required=True, help="this site's name, unique in the fleet")
    br.add_argument("--prefix", default="edge", help="topic prefix of the devices")
    br.add_argument("--discovery-prefix", default="homeassistant", help="Home Assistant's discovery prefix")
    br.add_argument("--cafile", help="CA certificate of the central broker's TLS listener")
    br.set_defaults(func=cmd_fleet_bridge_config)
    acl = fl.add_parser("acl", help="a Mosquitto ACL that keeps devices apart (docs/broker.md)")
    acl.add_argument(
        "--device",
        action="append",
        required=True,
        metavar="ID=GALLERY",
        help="a device (its MQTT user name is its device id) and the gallery it follows; repeatable",
    )
    acl.add_argument("--publisher", default="publisher", help="the account that publishes galleries")
    acl.add_argument("--reader", action="append", help="an account that reads events (default: homeassistant)")
    acl.add_argument("--prefix", default="edge", help="topic prefix of the devices")
    acl.add_argument("--discovery-prefix", default="homeassistant", help="Home Assistant's discovery prefix")
    acl.add_argument("--out", type=Path, help="write the file here (default: print it)")
    acl.set_defaults(func=cmd_fleet_acl)

    idf = sub.add_parser("identify", help="every face in photos, matched against a gallery as a device would")
    idf.add_argument("images", type=Path, nargs="+", help="photos or folders of photos")
    idf.add_argument("--gallery", type=Path, required=True, help="folder of <identity_id>/*.jpg, or a signed bundle")
    idf.add_argument(
        "--device-key", type=Path, help="a sealed bundle: the private key of a device it was made for (device.key)"
    )
    idf.add_argument("--trusted-key", type=Path, action="append", help="public key that signed the bundle; repeatable")
    idf.add_argument("--config", type=Path, help="the devices' settings (models, quality gate, match rate)")
    idf.add_argument("--json", action="store_true", help="one JSON object per face and line")
    idf.set_defaults(func=cmd_identify)

    au = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="audit_command", required=True
    )
    ver = au.add_parser("verify", help="check every record's hash and link; exit 1 naming the first broken one")
    ver.add_argument("--head", help="a head (audit_head of a status message) that must still be in the chain")
    show = au.add_parser("show", help="the records, readable")
    show.add_argument("--since", help="only records from this time on (ISO, UTC unless it says otherwise)")
    for p in (ver, show):
        p.add_argument("--state-dir", type=Path, help="the device's state dir (default: from --config)")
        p.add_argument("--config", type=Path, help="TOML settings file (for device.state_dir)")
        p.add_argument("--json", action="store_true", help="JSON output")
        p.set_defaults(func=cmd_audit)
