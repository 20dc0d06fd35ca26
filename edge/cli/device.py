"""Device commands, run on the device itself: ``device key`` (its X25519 public key, made if missing; rotation)
and ``device wipe`` (its stored gallery deleted)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.device.config import load_settings


def state_dir_of(args: argparse.Namespace) -> Path:
    """--state-dir, else the settings' (--config, or the defaults: $XDG_STATE_HOME/edge)."""
    if args.state_dir is not None:
        return Path(args.state_dir).expanduser()
    return load_settings(args.config).device.state_dir


def cmd_device(args: argparse.Namespace) -> int:
    from edge.device import keys

    state = state_dir_of(args)
    if args.device_command == "wipe":
        return wipe(args, state)
    if args.rotate:
        return rotate(args, state)
    key, made = keys.ensure_key(state)
    print(keys.public_line(key.public))
    print(f"key id {key.short_id}{' (made now)' if made else ''}; private key {key.path} (0600)", file=sys.stderr)
    return 0


def rotate(args: argparse.Namespace, state: Path) -> int:
    """A new key pair; the stored gallery sealed again under it (nothing the old key sealed is left)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edge.device import keys
    from edge.gallery.admit import Policy
    from edge.gallery.store import GalleryStore

    old = keys.load_key(state)
    settings = load_settings(args.config)
    new_private = X25519PrivateKey.generate()
    store_dir = state / "gallery"
    applied = None
    if old is not None and (store_dir / "current.sealed").is_file():
        from edge.device.runtime import load_manifest

        sha = load_manifest(settings.models.dir).spec(settings.models.embedder).sha256
        applied = GalleryStore(store_dir, Policy((), sha, None, device_key=old)).load()
    fresh_store = GalleryStore(
        store_dir, Policy((), "", None, device_key=keys.DeviceKey(new_private, state / keys.KEY_FILE))
    )
    if applied is not None:
        # Sealed under the new key beside the old store; the key is replaced; then the store (a crash between
        # two steps: the store opens whichever of the two files the key in place opens).
        fresh_store.write_next(applied)
    key = keys.write_key(state, new_private, replace=True)
    if applied is not None:
        fresh_store.promote_next()
    print(keys.public_line(key.public))
    was = f" (was {old.short_id})" if old is not None else ""
    kept = "; the stored gallery is sealed under it" if applied is not None else ""
    print(
        f"new key id {key.short_id}{was}{kept}: give the line above to 'edge enroll --recipient' for the next gallery",
        file=sys.stderr,
    )
    return 0


def wipe(args: argparse.Namespace, state: Path) -> int:
    from edge.gallery.admit import Policy
    from edge.gallery.store import GalleryStore

    found = GalleryStore(state / "gallery", Policy((), "")).wipe()
    print(
        f"{'deleted the stored gallery' if found else 'no stored gallery'} in {state / 'gallery'}; the device "
        "starts without one and waits for a gallery sealed to its key"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dev = sub.add_parser("device", help="this device's key and stored gallery").add_subparsers(
        dest="device_command", required=True
    )
    key = dev.add_parser("key", help="print this device's public key (one line, for 'edge enroll --recipient')")
    key.add_argument(
        "--rotate", action="store_true", help="a new key pair; the stored gallery is sealed again under it"
    )
    wp = dev.add_parser("wipe", help="delete the stored gallery (a revoked device, or before handing it on)")
    for p in (key, wp):
        p.add_argument("--state-dir", type=Path, help="the device's state folder (default: the settings')")
        p.add_argument("--config", type=Path, help="TOML settings file (its [device] state_dir)")
        p.set_defaults(func=cmd_device)
