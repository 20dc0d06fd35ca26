"""Commands of the device itself: ``run``, ``demo``, ``config check``, ``schema``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from edge.cli.common import parse_broker
from edge.device.config import load_settings
from edge.device.settings import Settings
from edge.errors import InputError


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = load_settings(args.path)
    models = models_report(settings)  # the embedder must be in the manifest, with its own tables
    print(f"{args.path}: ok")
    if args.show:
        print(json.dumps({**settings.model_dump(mode="json"), "models_in_use": models}, indent=2))
    return 0


def models_report(settings: Settings) -> dict[str, Any]:
    """The embedder the settings name and the calibration file bound to it; a ModelError (start-up's own
    words) when the manifest has no such embedder or its tables were measured for another file."""
    from edge.device.runtime import load_manifest
    from edge.recognition.calibration import calibration_file, checked_gate
    from edge.recognition.pipeline import pipeline_id

    manifest = load_manifest(settings.models.dir)
    name = settings.models.embedder
    manifest.embedder(name)
    sha = manifest.spec(name).sha256
    found = calibration_file(manifest, sha)
    path, measured_for = found.path, found.header.get("embedder_sha256")
    # Each gate as start-up checks it: faces smaller or more turned than the tables measured are refused.
    pipeline = pipeline_id(settings.models)
    gate = checked_gate(manifest, sha, pipeline, settings.quality)
    single = len(settings.camera_list()) == 1
    for cam in settings.camera_list():
        checked_gate(manifest, sha, pipeline, cam.quality, "quality" if single else f"cameras.{cam.id}.quality")
    return {
        "embedder": name,
        "sha256": sha,
        "calibration": str(path),
        "calibration_embedder_sha256": measured_for,
        "quality_max_yaw": gate.max_yaw,
    }


def cmd_schema(args: argparse.Namespace) -> int:
    from edge.delivery.events import schemas

    out = {"settings": Settings.model_json_schema()} if args.config_schema else schemas()
    print(json.dumps(out, indent=2))
    return 0


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            over.setdefault(section, {})[key] = value

    put("source", "uri", args.source)
    put("source", "rate", args.rate)
    put("source", "at_end", "exit" if args.exit_at_end else "loop" if args.loop else None)
    put("gallery", "path", str(args.gallery) if args.gallery else None)
    put("gallery", "name", args.gallery_name)
    put("gallery", "trusted_keys", [str(k) for k in args.trusted_key] if args.trusted_key else None)
    put("device", "id", args.device_id)
    put("device", "state_dir", str(args.state_dir) if args.state_dir else None)
    if args.broker:
        host, port = parse_broker(args.broker)
        put("mqtt", "host", host)
        put("mqtt", "port", port)
    return over


def cmd_run(args: argparse.Namespace) -> int:
    from edge.service.app import App

    settings = load_settings(args.config, overrides=run_overrides(args))
    app = App(settings)
    app.install_signals()
    result = app.run()
    if result.error:
        print(f"edge: {result.error}", file=sys.stderr)
    if result.exit_code:
        return result.exit_code
    if settings.source.at_end == "exit" and not result.drained:
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo.assets import Subscriber, build_assets, checkout_faces, workdir
    from edge.demo.broker import LocalBroker
    from edge.service.app import App

    faces = args.faces or checkout_faces()
    if faces is None:
        raise InputError("demo needs the face fixtures of a source checkout (tests/fixtures/faces) or --faces DIR")
    work = workdir()
    try:
        assets = build_assets(faces, work)
        print(
            f"demo: {len(assets.enrolled)} enrolled ({', '.join(assets.enrolled)}), "
            f"{len(assets.strangers)} not enrolled, clip of {assets.frames} frames at 30 fps",
            flush=True,
        )
        with LocalBroker() as broker:
            print(f"demo: mosquitto on {broker.host}:{broker.port}; subscriber on edge/+/events/match", flush=True)
            sub = Subscriber(broker.host, broker.port, "edge/+/events/match", echo=True)
            sub.ready.wait(5)
            settings = load_settings(
                args.config,
                overrides={
                    "source": {"uri": str(assets.clip), "rate": "native", "at_end": "exit"},
                    "gallery": {"path": str(assets.gallery)},
                    "device": {"id": "demo-device", "state_dir": str(work / "state")},
                    "mqtt": {"host": broker.host, "port": broker.port, "heartbeat_s": 5},
                },
            )
            app = App(settings)
            app.install_signals()
            result = app.run()
            time_limit = 3.0
            deadline = time.monotonic() + time_limit
            while len(sub.received()) < result.events and time.monotonic() < deadline:
                time.sleep(0.05)
            sub.close()
        got = sorted({str(e["identity_id"]) for e in sub.received()})
        print(
            f"demo: {len(sub.received())} match event(s) received for {', '.join(got) or 'nobody'}; "
            f"strangers matched: {', '.join(sorted(set(got) - set(assets.enrolled))) or 'none'}"
        )
        return 0 if result.drained else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cfg = sub.add_parser("config", help="settings tools").add_subparsers(dest="config_command", required=True)
    check = cfg.add_parser("check", help="validate a settings file")
    check.add_argument("path", type=Path)
    check.add_argument("--show", action="store_true", help="print the effective settings")
    check.set_defaults(func=cmd_config_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of the MQTT payloads (or of the settings)")
    schema.add_argument(
        "--config", dest="config_schema", action="store_true", help="the settings file's schema instead"
    )
    schema.set_defaults(func=cmd_schema)

    run = sub.add_parser("run", help="run the device service")
    run.add_argument("--config", type=Path, help="TOML settings file")
    run.add_argument("--source", help="camera index, /dev/videoN, file, URL, image folder or 'picamera2'")
    run.add_argument(
        "--gallery",
        type=Path,
        metavar="DIR|BUNDLE",
        help="a folder of <identity_id>/*.jpg|png enrolled at start-up, or a signed bundle (checked with --trusted-key)",
    )
    run.add_argument("--gallery-name", help="gallery this device follows")
    run.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        help="Ed25519 public key (PEM) trusted to sign galleries; repeatable",
    )
    run.add_argument("--broker", help="HOST:PORT of the MQTT broker")
    run.add_argument("--device-id", help="device id (MQTT client id and topic level)")
    run.add_argument("--state-dir", type=Path, help="writable folder for the outbox")
    run.add_argument("--rate", choices=["native", "fast"], help="files: native rate or as fast as processed")
    end = run.add_mutually_exclusive_group()
    end.add_argument("--exit-at-end", action="store_true", help="a file source ends the run when exhausted")
    end.add_argument("--loop", action="store_true", help="replay a file source forever")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="broker + sample gallery + clip + subscriber, on this machine; ends by itself")
    demo.add_argument("--config", type=Path, help="TOML settings file (source, gallery, broker are set by the demo)")
    demo.add_argument("--faces", type=Path, help="face folder (default: the checkout's tests/fixtures/faces)")
    demo.set_defaults(func=cmd_demo)
