"""A Mosquitto ACL that keeps devices apart (``edge fleet acl``).

Every client logs in with its own name (a device's name is its device id). The file gives:

- each device: write its own topics only (status, events, gallery state, presence, its Home Assistant
  discovery entries) and read only its own ``gallery/set`` and the fleet topic of the gallery it follows;
- the publisher: write galleries (the fleet topics and each device's ``gallery/set``), read devices'
  status and gallery state (``edge fleet status``);
- each reader (Home Assistant, a dashboard, ``edge fleet status``): read every device's status, events
  and presence, and Home Assistant's own discovery topics; write nothing of a device's.

Anonymous clients are refused by the broker configuration beside it (``allow_anonymous false``); a
client not named here can do nothing, as Mosquitto denies whatever an ACL file does not grant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from edge.delivery.homeassistant import slug
from edge.errors import InputError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def _checked(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise InputError(f"{kind} {name!r}: letters, digits, '_', '.', '-' only (it becomes an MQTT topic level)")
    return name


def acl(
    devices: Mapping[str, str],
    publisher: str = "publisher",
    readers: Sequence[str] = ("homeassistant",),
    prefix: str = "edge",
    discovery_prefix: str = "homeassistant",
) -> str:
    """The ACL file: ``devices`` maps each device id (its MQTT user name) to the gallery it follows."""
    if not devices:
        raise InputError("fleet acl: no device given (--device ID=GALLERY, repeatable)")
    lines = [
        "# Mosquitto ACL written by 'edge fleet acl': each device writes only its own topics and reads only its",
        "# own gallery/set and its gallery's fleet topic; only the publisher writes galleries.",
        "",
        f"user {_checked('publisher', publisher)}",
        f"topic write {prefix}/galleries/#",
        f"topic write {prefix}/+/gallery/set",
        f"topic write {prefix}/+/gallery/set/part/#",
        f"topic read {prefix}/+/status",
        f"topic read {prefix}/+/gallery/state",
        f"topic readwrite {prefix}/_fleet/#",
    ]
    for reader in readers:
        lines += [
            "",
            f"user {_checked('reader', reader)}",
            f"topic read {prefix}/+/status",
            f"topic read {prefix}/+/events/#",
            f"topic read {prefix}/+/presence/#",
            f"topic read {prefix}/+/gallery/state",
            f"topic readwrite {prefix}/_fleet/#",
            f"topic readwrite {discovery_prefix}/#",
        ]
    for device, gallery in sorted(devices.items()):
        d, g = _checked("device", device), _checked("gallery", gallery)
        lines += [
            "",
            f"user {d}",
            f"topic write {prefix}/{d}/status",
            f"topic write {prefix}/{d}/events/#",
            f"topic write {prefix}/{d}/gallery/state",
            f"topic write {prefix}/{d}/presence/#",
            f"topic read {prefix}/{d}/gallery/set",
            f"topic read {prefix}/{d}/gallery/set/part/#",
            f"topic read {prefix}/galleries/{g}",
            f"topic read {prefix}/galleries/{g}/part/#",
            f"topic readwrite {discovery_prefix}/+/{slug(d)}/#",
            f"topic read {discovery_prefix}/status",
        ]
    return "\n".join(lines) + "\n"


def parse_devices(values: Sequence[str]) -> dict[str, str]:
    """``--device ID=GALLERY`` values; an InputError naming a malformed one."""
    out: dict[str, str] = {}
    for v in values:
        device, sep, gallery = v.partition("=")
        if not sep or not device or not gallery:
            raise InputError(f"--device {v!r}: expected DEVICE_ID=GALLERY (the gallery that device follows)")
        if device in out:
            raise InputError(f"--device {device}: given twice")
        out[device] = gallery
    return out
