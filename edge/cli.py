"""The ``edge`` command. Exit codes: 0 ok, 2 bad usage or invalid config/input, 1 runtime failure."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge import __version__
from edge.config import Settings, load_settings
from edge.errors import EdgeError, InputError
from edge.logs import setup_logging

log = logging.getLogger("edge")


def repo_fixture_faces() -> Path | None:
    """Face images of a source checkout's test fixtures (used by bench when no --faces)."""
    path = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "faces"
    return path if path.is_dir() else None


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
    overrides: dict[str, Any] = {}
    model_over = {k: v for k, v in models.items() if v is not None}
    if model_over:
        overrides["models"] = model_over
    return load_settings(getattr(args, "config", None), overrides=overrides)


def cmd_config_check(args: argparse.Namespace) -> int:
    settings = load_settings(args.path)
    print(f"{args.path}: ok")
    if args.show:
        print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from edge.events import schemas

    out = {"settings": Settings.model_json_schema()} if args.config_schema else schemas()
    print(json.dumps(out, indent=2))
    return 0


def parse_broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--broker {value!r}: expected HOST:PORT")
    return host, int(port)


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
    from edge.app import App

    settings = load_settings(args.config, overrides=run_overrides(args))
    app = App(settings)
    app.install_signals()
    result = app.run()
    if settings.source.at_end == "exit" and not result.drained:
        return 1
    return 0


def cmd_enroll(args: argparse.Namespace) -> int:
    from edge.gallery.bundle import Identity, encode, load_private_key
    from edge.gallery.enroll import enroll_directory
    from edge.pipeline import Recognizer

    key = load_private_key(args.key)
    rec = Recognizer(load_settings(args.config))
    reports = enroll_directory(rec, args.photos, skip_failed=args.skip_failed)
    identities = [Identity(r.identity_id, r.label, r.embeddings, r.meta) for r in reports if r.embeddings is not None]
    data = encode(identities, args.gallery_name, args.version, rec.embedder_sha256, key, dtype=args.dtype)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    rows = [{"identity_id": r.identity_id, "label": r.label, "accepted": r.accepted, "rejected": r.rejected,
             "spread": r.spread} for r in reports]  # fmt: skip
    if args.json:
        print(json.dumps({"bundle": str(args.out), "bytes": len(data), "gallery": args.gallery_name,
                          "version": args.version, "identities": rows}))  # fmt: skip
    else:
        print(f"{'identity':<24} {'accepted':>8} {'rejected':>8} {'spread':>7}  reasons")
        for r in reports:
            reasons = "; ".join(f"{k}: {v}" for k, v in r.rejected.items())
            print(f"{r.identity_id:<24} {len(r.accepted):>8} {len(r.rejected):>8} {r.spread:>7.3f}  {reasons}")
        print(
            f"wrote {args.out}: gallery {args.gallery_name} v{args.version}, {len(identities)} identities, {len(data)} bytes"
        )
    return 0


def publish_bundle(args: argparse.Namespace) -> int:
    """Publish a bundle retained (fleet topic, or one device's set topic), in parts if large."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edge.gallery.bundle import read_header
    from edge.gallery.chunks import split
    from edge.mqtt import Topics

    try:
        data = args.bundle.read_bytes()
    except OSError as exc:
        raise InputError(f"gallery bundle {args.bundle} cannot be read: {exc.strerror or exc}") from None
    header = read_header(data)
    host, port = parse_broker(args.broker)
    topics = Topics(args.prefix, args.device or "-")
    topic = topics.gallery_set if args.device else topics.gallery_fleet(args.gallery_name or str(header["gallery"]))
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"edge-publish-{id(args)}")
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise EdgeError(f"broker {host}:{port} unreachable: {exc}") from None
    client.loop_start()
    messages = split(data, args.max_message)
    for suffix, payload in messages:
        info = client.publish(topic + suffix, payload, qos=1, retain=not args.device)
        info.wait_for_publish(60)
        if not info.is_published():
            raise EdgeError(f"publishing to {topic + suffix} was not acknowledged")
    client.disconnect()
    client.loop_stop()
    print(f"published {args.bundle} (gallery {header['gallery']} v{header['version']}, {len(data)} bytes) to {topic}"
          f"{f' in {len(messages) - 1} parts' if len(messages) > 1 else ''}")  # fmt: skip
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from edge.gallery import bundle as b
    from edge.gallery.store import verify_bundle

    if args.gallery_command == "keygen":
        pub = b.generate_key(args.out)
        print(Path(f"{args.out}.pub").read_text(), end="")
        print(
            f"private key {args.out} (mode 0600); public key above, also in {args.out}.pub (key id {b.key_id(pub).hex()[:16]})"
        )
        return 0
    if args.gallery_command == "publish":
        return publish_bundle(args)
    data = args.bundle.read_bytes() if args.bundle.is_file() else b""
    if not data:
        raise InputError(f"gallery bundle {args.bundle} does not exist or is empty")
    if args.gallery_command == "inspect":
        header = b.read_header(data)
        header["bytes"] = len(data)
        header["signer_key_id"] = data[-b.KEYID_LEN - b.SIG_LEN : -b.SIG_LEN].hex()[:16]
        print(json.dumps(header, indent=2))
        return 0
    pub = b.load_public_key(args.pubkey)
    header = b.read_header(data)
    bundle = verify_bundle(data, [pub], str(header.get("embedder_sha256")))
    print(f"{args.bundle}: signature ok (key {bundle.signer}); gallery {bundle.gallery} v{bundle.version}, "
          f"{len(bundle.identities)} identities, {sum(len(i.embeddings) for i in bundle.identities)} embeddings")  # fmt: skip
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.app import App
    from edge.broker import LocalBroker
    from edge.demo import Subscriber, build_assets, workdir

    faces = args.faces or repo_fixture_faces()
    if faces is None:
        raise InputError("demo needs the face fixtures of a source checkout (tests/fixtures/faces) or --faces DIR")
    work = workdir()
    try:
        assets = build_assets(faces, work)
        print(f"demo: {len(assets.enrolled)} enrolled ({', '.join(assets.enrolled)}), "
              f"{len(assets.strangers)} not enrolled, clip of {assets.frames} frames at 30 fps", flush=True)  # fmt: skip
        with LocalBroker() as broker:
            print(f"demo: mosquitto on {broker.host}:{broker.port}; subscriber on edge/+/events/match", flush=True)
            sub = Subscriber(broker.host, broker.port, "edge/+/events/match", echo=True)
            sub.ready.wait(5)
            settings = load_settings(args.config, overrides={
                "source": {"uri": str(assets.clip), "rate": "native", "at_end": "exit"},
                "gallery": {"path": str(assets.gallery)},
                "device": {"id": "demo-device", "state_dir": str(work / "state")},
                "mqtt": {"host": broker.host, "port": broker.port, "heartbeat_s": 5},
            })  # fmt: skip
            app = App(settings)
            app.install_signals()
            result = app.run()
            time_limit = 3.0
            deadline = time.monotonic() + time_limit
            while len(sub.received()) < result.events and time.monotonic() < deadline:
                time.sleep(0.05)
            sub.close()
        got = sorted({str(e["identity_id"]) for e in sub.received()})
        print(f"demo: {len(sub.received())} match event(s) received for {', '.join(got) or 'nobody'}; "
              f"strangers matched: {', '.join(sorted(set(got) - set(assets.enrolled))) or 'none'}")  # fmt: skip
        return 0 if result.drained else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cmd_eval_lfw(args: argparse.Namespace) -> int:
    from edge.eval import lfw
    from edge.imageio import read_image
    from edge.match import Gallery
    from edge.pipeline import Recognizer

    root: Path = args.root
    image_root = root / "images" if (root / "images").is_dir() else root
    pairs_path: Path = args.pairs or next(
        (p for p in (root / "pairs.txt", root / "pairsDevTest.txt") if p.is_file()), root / "pairs.txt"
    )
    pairs = lfw.parse_pairs(pairs_path)
    settings = settings_from(
        args, detector=args.detector, embedder=args.embedder, threads=args.threads, fallback_detector=True
    )
    rec = Recognizer(settings)

    face_times: list[float] = []

    def embed_image(path: Path) -> tuple[Any, str]:
        image = read_image(path)
        t0 = time.perf_counter()
        res = rec.still(image, centre_fallback=True)
        assert res.aligned is not None  # centre_fallback always gives a face
        vec = rec.embed([res.aligned])[0]
        face_times.append(time.perf_counter() - t0)  # detect + align + embed: the whole per-face cost
        return vec, res.fallback

    data = lfw.embed_pairs_images(image_root, pairs, embed_image, progress_bar("embedding"))
    matcher = rec.matcher
    report = lfw.evaluate(pairs, data, matcher.snapshot(Gallery.empty()).threshold, matcher.per_identity_fmr(0))
    out = {
        "pairs_file": str(pairs_path),
        "pairs": report.pairs,
        "skipped": report.skipped,
        "images": len(data.keys),
        "missing_images": len(data.missing),
        "no_face": report.no_face,
        "no_face_handling": report.fallbacks,
        "folds": report.folds,
        "split": report.split,
        "accuracy_mean": round(report.accuracy_mean, 4),
        "accuracy_std": round(report.accuracy_std, 4),
        "tar_at_fmr_1e-3": round(report.tar_at_fmr["1e-3"], 4),
        "tar_at_fmr_1e-4": round(report.tar_at_fmr["1e-4"], 4),
        "default_threshold": round(report.default_threshold, 4),
        "stated_fmr": report.stated_fmr,
        "observed_fmr": report.observed_fmr,
        "impostor_pairs": report.impostor_pairs,
        "model_sha256": rec.embedder_sha256,
        "pipeline": rec.pipeline_id,
        "detector": rec.detector.kind,
        "ms_per_image_p50": round(float(np.median(face_times)) * 1000, 2) if face_times else None,
    }
    if args.compare_dlib:
        from edge.eval.dlib_compare import compare

        out.update(compare(image_root, pairs, report, float(np.median(face_times)) * 1000))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"LFW {pairs_path.name}: {report.pairs} pairs ({report.skipped} skipped), {len(data.keys)} images")
        print(f"  accuracy        {report.accuracy_mean * 100:.2f}% ± {report.accuracy_std * 100:.2f} ({report.split})")
        print(f"  TAR @ FMR 1e-3  {report.tar_at_fmr['1e-3'] * 100:.2f}%")
        print(f"  TAR @ FMR 1e-4  {report.tar_at_fmr['1e-4'] * 100:.2f}%")
        print(f"  no face         {report.no_face} {report.fallbacks or ''}")
        print(
            f"  calibration     threshold {report.default_threshold:.4f} promises FMR {report.stated_fmr:g}; "
            f"observed {report.observed_fmr:.2e} over {report.impostor_pairs} impostor pairs"
        )
        print(f"  model           {rec.embedder_sha256[:16]} ({rec.pipeline_id}, detector {rec.detector.kind})")
        if args.compare_dlib:
            for key in [k for k in out if k.startswith(("dlib_", "edge_", "speedup"))]:
                print(f"  {key:<28} {out[key]}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from edge.eval.bench import bench, peak_rss_mb
    from edge.pipeline import Recognizer

    settings = settings_from(args, detector=args.detector, embedder=args.embedder, threads=args.threads)
    rec = Recognizer(settings)
    rss_loaded = round(peak_rss_mb(), 1)
    faces = args.faces or repo_fixture_faces()
    if args.source is None and faces is None:
        raise InputError("bench needs --source FILE|DIR or --faces DIR (no test fixtures found beside the package)")
    result = bench(rec, args.source, faces, frames=args.frames, gallery_size=args.gallery_size)
    result["rss_after_loading_models_mb"] = rss_loaded
    if args.source is None and faces is not None:
        from edge.demo import build_assets, workdir
        from edge.eval.bench import service_bench

        work = workdir()
        try:
            assets = build_assets(faces, work)
            result.update(service_bench(rec, assets.clip, assets.gallery, settings.tracking))
            result["service_source"] = "the demo clip: 640x480, one person in view at a time, 4 enrolled + 4 not"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result["peak_rss_mb_after_service"] = round(peak_rss_mb(), 1)
    if args.bundle:
        from edge.eval.bench import bundle_bench, synthetic_stream
        from edge.eval.bench import portraits as load_portraits

        frame = next(synthetic_stream(load_portraits(faces), 1)) if faces else np.zeros((480, 640, 3), np.uint8)
        result.update(bundle_bench(rec, frame))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML settings file")
    p.add_argument("--threads", type=int, help="interpreter threads")
    p.add_argument("--detector", choices=["short", "full"], help="BlazeFace variant")
    p.add_argument("--embedder", choices=["fp32", "int8"], help="embedder file")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge", description="On-device face recognition appliance.")
    ap.add_argument("--version", action="version", version=f"edge {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True)

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
    run.add_argument("--gallery", type=Path, help="folder of <identity_id>/*.jpg|png enrolled at start-up")
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

    en = sub.add_parser("enroll", help="photos → signed gallery bundle (embeddings and metadata only)")
    en.add_argument("photos", type=Path, help="folder of <identity_id>/*.jpg|png (+ optional identity.toml)")
    en.add_argument("--out", type=Path, required=True, help="bundle file to write")
    en.add_argument("--key", type=Path, required=True, help="Ed25519 private key (edge gallery keygen)")
    en.add_argument("--gallery-name", default="default", help="gallery name")
    en.add_argument("--version", type=int, default=1, help="gallery version (must increase with every publication)")
    en.add_argument(
        "--dtype", choices=["float16", "int8"], default="int8", help="embedding storage (int8: half the size)"
    )
    en.add_argument("--skip-failed", action="store_true", help="leave out identities with no usable photo")
    en.add_argument("--config", type=Path, help="settings (models, quality gate) — use the devices' own")
    en.add_argument("--json", action="store_true", help="print the report as JSON")
    en.set_defaults(func=cmd_enroll)

    gal = sub.add_parser("gallery", help="signing keys and bundles").add_subparsers(
        dest="gallery_command", required=True
    )
    kg = gal.add_parser("keygen", help="new Ed25519 signing key (private 0600, public beside it)")
    kg.add_argument("--out", type=Path, required=True)
    ins = gal.add_parser("inspect", help="print a bundle's header (not verified)")
    ins.add_argument("bundle", type=Path)
    ver = gal.add_parser("verify", help="verify a bundle's signature and structure")
    ver.add_argument("bundle", type=Path)
    ver.add_argument("--pubkey", type=Path, required=True)
    pub = gal.add_parser("publish", help="publish a bundle (retained on the fleet topic, or to one device)")
    pub.add_argument("bundle", type=Path)
    pub.add_argument("--broker", required=True, help="HOST:PORT")
    pub.add_argument("--gallery-name", help="fleet topic name (default: the bundle's gallery)")
    pub.add_argument("--device", help="send to this device's gallery/set topic instead (not retained)")
    pub.add_argument("--prefix", default="edge", help="topic prefix")
    pub.add_argument(
        "--max-message",
        type=int,
        default=1 << 20,
        help="split into parts above this size (the broker's message_size_limit)",
    )
    for p in (kg, ins, ver, pub):
        p.set_defaults(func=cmd_gallery)

    demo = sub.add_parser("demo", help="broker + sample gallery + clip + subscriber, on this machine; ends by itself")
    demo.add_argument("--config", type=Path, help="TOML settings file (source, gallery, broker are set by the demo)")
    demo.add_argument("--faces", type=Path, help="face folder (default: the checkout's tests/fixtures/faces)")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="accuracy measurements").add_subparsers(dest="eval_command", required=True)
    lfw_p = ev.add_parser("lfw", help="the LFW verification protocol on a pairs.txt-format file")
    lfw_p.add_argument("--root", type=Path, required=True, help="LFW folder (name/name_NNNN.jpg, or with images/)")
    lfw_p.add_argument("--pairs", type=Path, help="pairs file (default: ROOT/pairs.txt or ROOT/pairsDevTest.txt)")
    lfw_p.add_argument("--json", action="store_true", help="print one JSON object")
    lfw_p.add_argument("--compare-dlib", action="store_true", help="also run face_recognition (dlib) on the same pairs")
    add_model_flags(lfw_p)
    lfw_p.set_defaults(func=cmd_eval_lfw)

    b = sub.add_parser("bench", help="per-stage latency, frames per second, peak RSS")
    b.add_argument("--source", type=Path, help="video file or image folder (default: a synthetic 640x480 stream)")
    b.add_argument("--faces", type=Path, help="face images to compose the synthetic stream from")
    b.add_argument("--frames", type=int, default=300)
    b.add_argument("--gallery-size", type=int, default=10_000)
    b.add_argument("--bundle", action="store_true", help="also time applying a 10,000 x 5 signed gallery bundle")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_flags(b)
    b.set_defaults(func=cmd_bench)
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


if __name__ == "__main__":
    sys.exit(main())
