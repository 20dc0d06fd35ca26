"""Mosquitto bridges: more devices than one broker, one site broker per site, bridged to a central one.

Devices talk to their site's broker; the site forwards what the fleet's tools need to the
central broker and brings down what the devices need from it:

- out (site → central): every device's status, match events, gallery state, presence, and
  its Home Assistant discovery;
- in (central → site): the fleet's signed galleries, the per-device gallery topics, and
  Home Assistant's birth message (devices publish discovery again when it restarts).

Every topic is per device (``<prefix>/<id>/…``) or per gallery (``<prefix>/galleries/<name>``),
so sites never see each other's traffic. The bridge keeps a persistent session on both sides
(``cleansession false``) and the site broker persists its queues: messages a device gave its
site broker while central was away, or across a restart of the site broker, are forwarded
when the bridge is back. ``edge fleet bridge-config`` prints this configuration; the slow test
``tests/test_fleet.py`` runs it between real Mosquitto processes.
"""

from __future__ import annotations

import re

from edge.errors import InputError

# (pattern under the prefix, direction); "{p}" is the topic prefix, "{ha}" Home Assistant's discovery prefix.
BRIDGE_TOPICS: tuple[tuple[str, str], ...] = (
    ("{p}/+/status", "out"),
    ("{p}/+/events/#", "out"),
    ("{p}/+/gallery/state", "out"),
    ("{p}/+/presence/#", "out"),
    ("{ha}/#", "out"),
    ("{p}/galleries/#", "in"),
    ("{p}/+/gallery/set/#", "in"),
    ("{ha}/status", "in"),
)
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def bridge_config(
    site: str,
    central_host: str,
    central_port: int,
    prefix: str = "edge",
    discovery_prefix: str = "homeassistant",
    cafile: str | None = None,
) -> str:
    """The bridge section of a site broker's Mosquitto configuration (``/etc/mosquitto/conf.d/bridge.conf``)."""
    if not SITE_NAME.match(site):
        raise InputError(f"--site {site!r}: a site name is letters, digits, '_', '.', '-' (at most 64)")
    lines = [
        f"# Site '{site}' bridged to the fleet's central broker (edge fleet bridge-config; docs/fleets.md).",
        "connection central",
        f"address {central_host}:{central_port}",
        "bridge_protocol_version mqttv50",
        f"remote_clientid bridge-{site}",  # unique per site: two bridges with one client id would evict each other
        "cleansession false",
        "restart_timeout 1 30",  # back within a second of the central broker, at most 30 s apart
    ]
    if cafile:
        lines.append(f"bridge_cafile {cafile}")
    lines += [f"topic {t.format(p=prefix, ha=discovery_prefix)} {d} 1" for t, d in BRIDGE_TOPICS]
    return "\n".join(lines) + "\n"
