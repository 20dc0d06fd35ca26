"""Gallery commands: ``enroll`` and ``gallery keygen|inspect|verify|publish``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.cli.common import counted, parse_broker
from edge.device.config import load_settings
from edge.device.settings import MqttSettings
from edge.errors import EdgeError, InputError, read_input_file
from edge.gallery.bundle import BundleError, Identity, Kind

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    from edge.device.keys import DeviceKey

# A bundle file on the admin's machine: well above what a device accepts (gallery.max_bundle_bytes, 64 MiB).
MAX_BUNDLE_FILE_BYTES = 1 << 30


def cmd_enroll(args: argparse.Namespace) -> int:
    from edge.gallery.build import gallery_of
    from edge.gallery.bundle import load_private_key
    from edge.gallery.enroll import IDENTITY_ID, enroll_directory, enroll_identity
    from edge.gallery.report import check_gallery
    from edge.recognition.pipeline import Recognizer

    if args.photos is None and args.video is None:
        raise InputError("enroll needs a folder of <identity_id>/ photos, or --video FILE --identity ID")
    if (args.video is None) != (args.identity is None):
        raise InputError("--video and --identity go together: the clip's one person and their identity id")
    if args.identity is not None and not IDENTITY_ID.match(args.identity):
        raise InputError(f"--identity {args.identity!r} is not a valid identity id (letters, digits, _ . -)")
    if args.video is not None and not args.video.is_file():
        raise InputError(f"--video {args.video}: no such file")
    key = load_private_key(args.key)
    if args.gallery_name is None:
        args.gallery_name = "default"
        print(
            "enroll: no --gallery-name: the gallery is named 'default' (devices follow it by that name)",
            file=sys.stderr,
        )
    recognizer = Recognizer(load_settings(args.config))
    reports = enroll_directory(recognizer, args.photos, skip_failed=args.skip_failed) if args.photos is not None else []
    if args.video is not None:
        folder = (args.photos / args.identity) if args.photos is not None else Path(args.identity)
        clip = enroll_identity(recognizer, folder if folder.is_dir() else Path(args.identity), clips=[args.video])
        if args.label:
            clip.label = args.label
        if clip.embeddings is None and not args.skip_failed:
            reasons = "; ".join(f"{k}: {v}" for k, v in clip.rejected.items())
            raise InputError(f"identity {args.identity} has no usable photo or clip ({reasons})")
        reports = [r for r in reports if r.identity_id != args.identity] + [clip]
    identities = [Identity(r.identity_id, r.label, r.embeddings, r.meta) for r in reports if r.embeddings is not None]
    if not identities:
        raise InputError("no identity could be enrolled")
    data = make_bundle(args, identities, "full", key, recognizer.embedder_sha256, recognizer.embedder_name)
    write_bundle(args.out, data)
    snapshot = recognizer.matcher.snapshot(gallery_of(reports))
    names = {r.identity_id: r.accepted for r in reports}
    checks = {c.identity_id: c for c in check_gallery(snapshot, [names[i.id] for i in identities])}
    rows = [
        {
            "identity_id": r.identity_id,
            "label": r.label,
            "accepted": r.accepted,
            "rejected": r.rejected,
            "spread": r.spread,
            **(
                {k: v for k, v in checks[r.identity_id].as_json().items() if k != "identity_id"}
                if r.identity_id in checks
                else {"templates": 0, "warnings": ["not enrolled"]}
            ),
        }
        for r in reports
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "bundle": str(args.out),
                    "bytes": len(data),
                    "gallery": args.gallery_name,
                    "version": args.version,
                    "identities": rows,
                }
            )
        )
        return 0
    print(f"{'identity':<24} {'templates':>9} {'rejected':>8} {'match each other':>17}  reasons")
    for r in reports:
        c = checks.get(r.identity_id)
        mutual = "-" if c is None or c.templates == 1 else f"{c.self_matched} of {c.templates}"
        reasons = "; ".join(f"{k}: {v}" for k, v in r.rejected.items())
        print(f"{r.identity_id:<24} {len(r.accepted):>9} {len(r.rejected):>8} {mutual:>17}  {reasons}")
    for c in checks.values():
        for w in c.warnings:
            print(f"warning: {c.identity_id}: {w}")
    for r in reports:
        if r.embeddings is None:
            print(f"warning: {r.identity_id}: not enrolled (no photo or clip passed)")
    print(
        f"wrote {args.out}: gallery {args.gallery_name} v{args.version}, "
        f"{counted(len(identities), 'identity', 'identities')}, {len(data)} bytes"
    )
    return 0


def recipients_of(args: argparse.Namespace) -> list[X25519PublicKey]:
    """The devices a bundle is sealed to: every --recipient and the lines of every --recipients file; none
    only with --plaintext (said: such a bundle is readable by anyone who gets it)."""
    from edge.device import keys

    found = [keys.read_recipient(v) for v in args.recipient or []]
    for path in args.recipients or []:
        found += keys.read_recipients_file(path)
    unique = list({keys.key_id(k): k for k in found}.values())  # a device named twice is one recipient
    if args.plaintext and unique:
        raise InputError("--plaintext and --recipient/--recipients together: a bundle is sealed or in the clear")
    if not unique and not args.plaintext:
        raise InputError(
            "name the devices the gallery is for: --recipient KEY (the line 'edge device key' prints "
            "on each, or a file with it; repeatable) or --recipients FILE (one a line); --plaintext "
            "writes it in the clear instead (devices with gallery.allow_plaintext only)"
        )
    return unique


def make_bundle(
    args: argparse.Namespace, identities: list[Identity], kind: Kind, key: Ed25519PrivateKey, sha: str, name: str | None
) -> bytes:
    """A bundle sealed to the recipients named, or in the clear with --plaintext; said on stderr which."""
    from edge.gallery.bundle import encode
    from edge.gallery.sealed import seal

    recipients = recipients_of(args)
    if not recipients:
        print(
            "enroll: --plaintext: the bundle is in the clear (names and templates readable by anyone who gets "
            "it); devices refuse it unless gallery.allow_plaintext = true",
            file=sys.stderr,
        )
        return encode(identities, args.gallery_name, args.version, sha, key, kind, args.dtype, name)
    return seal(identities, args.gallery_name, args.version, sha, key, recipients, kind, args.dtype, name)


def write_bundle(out: Path, data: bytes) -> None:
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"--out {out} cannot be written: {exc.strerror or exc}") from None


def cmd_remove(args: argparse.Namespace) -> int:
    """A signed removal: the identities named leave every device that opens it, from matching and from disk."""
    import numpy as np

    from edge.device.runtime import load_manifest
    from edge.gallery.bundle import Identity, load_private_key

    key = load_private_key(args.key)
    settings = load_settings(args.config)
    manifest = load_manifest(settings.models.dir)
    spec = manifest.spec(settings.models.embedder)
    dim = manifest.embedder(settings.models.embedder).dim
    gone = [Identity(i, None, np.zeros((0, dim), np.float32), {}) for i in dict.fromkeys(args.identity)]
    data = make_bundle(args, gone, "removal", key, spec.sha256, settings.models.embedder)
    write_bundle(args.out, data)
    print(
        f"wrote {args.out}: removal of {counted(len(gone), 'identity', 'identities')} from gallery "
        f"{args.gallery_name} as v{args.version} (publish it like a gallery)"
    )
    return 0


def read_bundle_file(path: Path) -> bytes:
    data = read_input_file(path, "gallery bundle", MAX_BUNDLE_FILE_BYTES)
    if not data:
        raise InputError(f"gallery bundle {path} is empty")
    return data


def publish_bundle(args: argparse.Namespace) -> int:
    """Publish a bundle retained (fleet topic, or one device's set topic), in parts if large."""
    from edge.delivery.connection import tool_client
    from edge.delivery.routing import Topics
    from edge.gallery.chunks import split

    data = read_bundle_file(args.bundle)
    try:
        header = header_of(data)
    except BundleError as exc:
        raise InputError(f"{args.bundle}: {exc}") from None
    opts = broker_settings(args)
    topics = Topics(args.prefix, args.device or "-")
    topic = topics.gallery_set if args.device else topics.gallery_fleet(args.gallery_name or str(header.get("gallery")))
    client = tool_client(opts, "edge-publish")
    try:
        messages = split(data, args.max_message)
        for suffix, payload in messages:
            info = client.publish(topic + suffix, payload, qos=1, retain=not args.device)
            info.wait_for_publish(60)
            if not info.is_published():
                raise EdgeError(f"publishing to {topic + suffix} was not acknowledged within 60 s")
    finally:
        client.disconnect()
        client.loop_stop()
    print(
        f"published {args.bundle} (gallery {header.get('gallery')} v{header.get('version')}, {len(data)} bytes) "
        f"to {topic}{f' in {len(messages) - 1} parts' if len(messages) > 1 else ''}"
    )
    return 0


def broker_settings(args: argparse.Namespace) -> MqttSettings:
    """The [mqtt] section of --config (TLS, credentials), with --broker HOST:PORT over it."""
    settings = load_settings(getattr(args, "config", None))
    if args.broker:
        host, port = parse_broker(args.broker)
        return settings.mqtt.model_copy(update={"host": host, "port": port})
    return settings.mqtt


def work_tree_of(path: Path) -> Path | None:
    """The git work tree a path would be written into, if any."""
    for folder in path.expanduser().resolve().parents:
        if (folder / ".git").exists():
            return folder
    return None


def refuse_in_work_tree(out: Path, force: bool) -> None:
    top = work_tree_of(out)
    if top is not None and not force:
        raise InputError(
            f"--out {out}: inside the git work tree {top}, a private signing key is one 'git add' away from being "
            "published; write it outside (e.g. ~/.config/edge/owner.pem) or pass --force"
        )


def cmd_gallery(args: argparse.Namespace) -> int:
    from edge.gallery import bundle as b

    if args.gallery_command == "keygen":
        refuse_in_work_tree(args.out, args.force)
        pub = b.generate_key(args.out)
        print(Path(f"{args.out}.pub").read_text(), end="")
        print(
            f"private key {args.out} (mode 0600); public key above, also in {args.out}.pub (key id {b.key_id(pub).hex()[:16]})"
        )
        return 0
    if args.gallery_command == "publish":
        return publish_bundle(args)
    data = read_bundle_file(args.bundle)
    try:
        if args.gallery_command == "inspect":
            return inspect_bundle(args, data)
        return verify_file(args, data)
    except BundleError as exc:
        raise InputError(f"{args.bundle}: {exc}") from None


def device_key_of(args: argparse.Namespace) -> DeviceKey | None:
    from edge.device.keys import load_key_file

    return load_key_file(args.device_key) if getattr(args, "device_key", None) else None


def header_of(data: bytes) -> dict[str, Any]:
    """The header as written (either format), NOT verified."""
    from edge.gallery import sealed
    from edge.gallery.bundle import peek_header

    return sealed.peek(data) if sealed.is_sealed(data) else peek_header(data)


def verify_file(args: argparse.Namespace, data: bytes) -> int:
    from edge.gallery import sealed
    from edge.gallery.admit import verify_bundle
    from edge.gallery.bundle import load_public_key

    pub = load_public_key(args.pubkey)
    header = header_of(data)
    if sealed.is_sealed(data) and args.device_key is None:
        v = sealed.verify(data, [pub])
        print(
            f"{args.bundle}: signature ok (key {v.signer}); gallery {v.header.gallery} v{v.header.version} "
            f"({v.header.kind}), sealed to {counted(len(v.header.recipients), 'device')}; contents not opened "
            "(--device-key opens them)"
        )
        return 0
    bundle = verify_bundle(
        data, [pub], str(header.get("embedder_sha256")), max_bytes=len(data), device_key=device_key_of(args)
    )
    sealed_to = f", sealed to {counted(len(bundle.recipients), 'device')}" if bundle.recipients else ", in the clear"
    print(
        f"{args.bundle}: signature ok (key {bundle.signer}); gallery {bundle.gallery} v{bundle.version}{sealed_to}, "
        f"{counted(len(bundle.identities), 'identity', 'identities')}, "
        f"{counted(sum(len(i.embeddings) for i in bundle.identities), 'embedding')}"
    )
    return 0


def inspect_bundle(args: argparse.Namespace, data: bytes) -> int:
    """The header as written (a sealed bundle's clear one); with --trusted-key, verified, and the enrolment
    report of its identities (a sealed bundle's only with --device-key: without it, nothing else is readable)."""
    from edge.gallery import bundle as b
    from edge.gallery import sealed
    from edge.gallery.admit import to_gallery, verify_bundle
    from edge.gallery.report import check_gallery, format_checks
    from edge.recognition.pipeline import Recognizer

    header = header_of(data)
    header["bytes"] = len(data)
    header["verified"] = False
    closed = sealed.is_sealed(data) and args.device_key is None
    if args.pubkey is None or closed:
        if args.pubkey is not None:
            sealed.verify(data, [b.load_public_key(args.pubkey)])
            header["verified"] = True
        print(json.dumps(header, indent=2))
        if not args.json:
            print(
                "(a sealed bundle: its names and templates open only with --device-key, the key of a device it is for)"
                if closed
                else "(give --trusted-key for the signature check and the report on each identity's templates)",
                file=sys.stderr,
            )
        return 0
    bundle = verify_bundle(
        data,
        [b.load_public_key(args.pubkey)],
        str(header.get("embedder_sha256")),
        max_bytes=len(data),
        device_key=device_key_of(args),
    )
    header["verified"] = True
    recognizer = Recognizer(load_settings(args.config))
    if bundle.identities and recognizer.embedder_sha256 != str(header.get("embedder_sha256")):
        raise InputError(
            f"{args.bundle} was enrolled with another embedder than --config's ({recognizer.embedder_sha256[:16]})"
        )
    snapshot = recognizer.matcher.snapshot(to_gallery(bundle, now=datetime.min.replace(tzinfo=timezone.utc)))
    checks = check_gallery(snapshot)
    if args.json:
        print(json.dumps({**header, "identities_report": [c.as_json() for c in checks]}, indent=2))
        return 0
    print(json.dumps(header, indent=2))
    print("\n".join(format_checks(checks, snapshot)))
    return 0


def sealing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipient",
        action="append",
        metavar="KEY",
        help="a device the bundle is for: the line 'edge device key' prints on it (x25519:…), or a file holding "
        "it; repeatable. Only these devices can read the names and templates",
    )
    p.add_argument("--recipients", action="append", type=Path, metavar="FILE", help="a file of key lines, one a device")
    p.add_argument(
        "--plaintext",
        action="store_true",
        help="no recipients: the bundle in the clear (only devices with gallery.allow_plaintext = true take it)",
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    en = sub.add_parser(
        "enroll", help="photos and clips → signed gallery bundle (embeddings and metadata only), with a report"
    )
    en.add_argument(
        "photos", type=Path, nargs="?", help="folder of <identity_id>/*.jpg|png|mp4|mkv|avi (+ optional identity.toml)"
    )
    en.add_argument("--video", type=Path, help="a clip of one consenting person (with --identity)")
    en.add_argument("--identity", help="the identity id the --video clip enrols")
    en.add_argument("--label", help="display label of the --identity")
    en.add_argument("--out", type=Path, required=True, help="bundle file to write")
    en.add_argument("--key", type=Path, required=True, help="Ed25519 private key (edge gallery keygen)")
    en.add_argument(
        "--gallery-name",
        help="gallery name: devices follow a gallery by name ([gallery] name); default 'default', said",
    )
    en.add_argument("--version", type=int, default=1, help="gallery version (must increase with every publication)")
    en.add_argument(
        "--dtype", choices=["float16", "int8"], default="int8", help="embedding storage (int8: half the size)"
    )
    en.add_argument("--skip-failed", action="store_true", help="leave out identities with no usable photo")
    sealing_options(en)
    en.add_argument("--config", type=Path, help="settings (models, quality gate) — use the devices' own")
    en.add_argument("--json", action="store_true", help="print the report as JSON")
    en.set_defaults(func=cmd_enroll)

    gal = sub.add_parser("gallery", help="signing keys and bundles").add_subparsers(
        dest="gallery_command", required=True
    )
    kg = gal.add_parser("keygen", help="new Ed25519 signing key (private 0600, public beside it)")
    kg.add_argument("--out", type=Path, required=True)
    kg.add_argument(
        "--force", action="store_true", help="write the private key even inside a git work tree (it is refused there)"
    )
    ins = gal.add_parser(
        "inspect",
        help="print a bundle's header; with --trusted-key, verified, and how well each identity will be recognised",
    )
    ins.add_argument("bundle", type=Path)
    ins.add_argument(
        "--trusted-key",
        "--pubkey",
        dest="pubkey",
        type=Path,
        help="the signer's public key: verify, and report on every identity",
    )
    ins.add_argument("--config", type=Path, help="settings (models, match rate) of the devices the bundle is for")
    ins.add_argument(
        "--device-key",
        type=Path,
        help="a sealed bundle: the private key of a device it is for (else: clear header only)",
    )
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    ver = gal.add_parser("verify", help="verify a bundle's signature and structure")
    ver.add_argument("bundle", type=Path)
    ver.add_argument(
        "--trusted-key", "--pubkey", dest="pubkey", type=Path, required=True, help="the signer's public key"
    )
    ver.add_argument("--device-key", type=Path, help="a sealed bundle: also open it with this device's private key")
    rm = gal.add_parser(
        "remove", help="a signed removal: the identities named leave every device it is sealed to (matching and disk)"
    )
    rm.add_argument("--identity", action="append", required=True, help="identity id to remove; repeatable")
    rm.add_argument("--out", type=Path, required=True, help="bundle file to write")
    rm.add_argument("--key", type=Path, required=True, help="Ed25519 private key (the gallery's signer)")
    rm.add_argument("--gallery-name", required=True, help="the gallery the identities are removed from")
    rm.add_argument("--version", type=int, required=True, help="above the version in force on the devices")
    rm.add_argument("--config", type=Path, help="settings naming the devices' embedder")
    rm.set_defaults(func=cmd_remove, dtype="float16")
    sealing_options(rm)
    pub = gal.add_parser("publish", help="publish a bundle (retained on the fleet topic, or to one device)")
    pub.add_argument("bundle", type=Path)
    pub.add_argument("--broker", help="HOST:PORT (default: [mqtt] host and port of --config)")
    pub.add_argument("--config", type=Path, help="settings whose [mqtt] section (TLS, credentials) is used")
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
