"""Settings: one strict pydantic model, read from TOML, overridden by ``EDGE_`` variables.

Every field has a description (``edge schema --config`` prints them). Unknown keys
are rejected. A bad value fails at start-up with one line per problem naming the
key, the value and the reason, exactly as ``edge config check`` prints it.

Environment overrides use ``__`` between levels:
``EDGE_MATCH__MAX_FALSE_MATCH_RATE=1e-5`` sets ``[match] max_false_match_rate``.
The environment is read when settings are loaded, never at import time.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.errors import InputError

ENV_PREFIX = "EDGE_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelSettings(Section):
    dir: Path | None = Field(
        None,
        description="Folder holding manifest.json and the .tflite files; default: the models shipped with the package.",
    )
    detector: Literal["short", "full"] = Field(
        "short", description="BlazeFace variant: 'short' (faces within ~2 m, fastest) or 'full' (up to ~5 m)."
    )
    fallback_detector: bool = Field(
        False,
        description="When the main detector finds no face in a still image (enrolment, eval), try the other variant.",
    )
    embedder: Literal["fp32", "int8"] = Field(
        "int8",
        description="Embedder file: 'int8' (int8 weights, 1.5 MB; the variant that keeps accuracy, see models/manifest.json) or 'fp32' (5.2 MB).",
    )
    alignment: Literal["mesh5", "keypoints4"] = Field(
        "mesh5",
        description="'mesh5': eye centres and mouth corners from the face mesh (five-point ArcFace alignment, more accurate); 'keypoints4': BlazeFace's four points only (no mesh model, faster).",
    )
    threads: int = Field(1, ge=1, le=16, description="Interpreter threads per model.")
    flip_average: bool = Field(
        True,
        description="Average each face's embedding with its mirror image's (more accurate, twice the embedder cost).",
    )


class QualitySettings(Section):
    min_face_px: float = Field(40.0, gt=0, description="Smallest face (box side, pixels) that is embedded.")
    min_sharpness: float = Field(15.0, ge=0, description="Minimum variance of the Laplacian of the aligned crop.")
    max_yaw: float = Field(
        0.8,
        gt=0,
        le=3,
        description="Largest head turn, as the nose offset from the eye midpoint over half the eye distance (about tan(yaw): 0.8 ≈ 39°).",
    )
    max_roll_deg: float = Field(30.0, gt=0, le=90, description="Largest head tilt in degrees.")
    min_brightness: float = Field(40.0, ge=0, le=255, description="Darkest acceptable mean crop brightness (0–255).")
    max_brightness: float = Field(220.0, ge=0, le=255, description="Brightest acceptable mean crop brightness (0–255).")

    @model_validator(mode="after")
    def _brightness_order(self) -> QualitySettings:
        if self.min_brightness >= self.max_brightness:
            raise ValueError("min_brightness must be below max_brightness")
        return self


class MatchSettings(Section):
    max_false_match_rate: float = Field(
        1e-4,
        gt=0,
        lt=1,
        description="Largest acceptable rate at which a stranger is matched to an enrolled identity; turned into the score threshold with the model's calibration table.",
    )
    open_set_correction: bool = Field(
        True,
        description="Divide max_false_match_rate by the number of enrolled identities, so the rate holds per stranger, not per comparison.",
    )
    min_margin: float = Field(
        0.0, ge=0, le=2, description="Minimum score gap between the best and the second-best identity."
    )


class DeviceSettings(Section):
    id: str = Field(
        default_factory=lambda: socket.gethostname() or "edge",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="Device id: MQTT client id and topic level. Default: the host name.",
    )
    state_dir: Path = Field(
        Path("var"),
        description="Writable folder for the outbox and the applied gallery (systemd: /var/lib/edge-recognizer).",
    )


class SourceSettings(Section):
    uri: str = Field(
        "0",
        min_length=1,
        description="Camera index, /dev/videoN, video file, rtsp:// or http:// URL, image folder, or 'picamera2'.",
    )
    rate: Literal["native", "fast"] = Field(
        "native",
        description="Files and folders: play at their native rate, or as fast as frames are processed (every frame is processed).",
    )
    at_end: Literal["idle", "exit", "loop"] = Field(
        "idle",
        description="When a file or folder ends: stay running and idle, exit (after the outbox drains), or replay it.",
    )
    fps: float = Field(30.0, gt=0, le=240, description="Frame rate of an image folder at native rate.")
    width: int = Field(0, ge=0, description="Requested camera width in pixels (0: the camera's default).")
    height: int = Field(0, ge=0, description="Requested camera height in pixels (0: the camera's default).")
    retry_initial_s: float = Field(
        0.5, gt=0, description="First delay before reopening a failed camera; doubles up to retry_max_s."
    )
    retry_max_s: float = Field(30.0, gt=0, description="Longest delay between camera reopen attempts.")


class MqttSettings(Section):
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    topic_prefix: str = Field("edge", pattern=r"^[^#+]+$", description="First level of every topic.")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    username: str | None = Field(None, description="User name, if the broker requires one.")
    password: str | None = Field(None, description="Password inline (prefer password_file or a systemd credential).")
    password_file: Path | None = Field(
        None, description="File holding the password, e.g. $CREDENTIALS_DIRECTORY/mqtt-password."
    )
    tls: bool = Field(False, description="Use TLS with the system's CA store (or ca_file).")
    ca_file: Path | None = Field(None, description="CA certificate bundle for TLS (implies tls).")
    cert_file: Path | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: Path | None = Field(None, description="Client private key for mutual TLS.")
    reconnect_min_s: float = Field(1.0, gt=0, description="Shortest reconnect back-off.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect back-off.")
    heartbeat_s: float = Field(30.0, gt=0, description="Seconds between status heartbeats.")
    max_inflight: int = Field(20, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK at once.")


class OutboxSettings(Section):
    path: Path | None = Field(None, description="SQLite outbox file; default: <state_dir>/outbox.sqlite.")
    max_events: int = Field(
        10_000,
        ge=1,
        description="Most events kept while the broker is away; the oldest beyond are dropped and counted.",
    )
    max_age_s: float = Field(7 * 86400.0, gt=0, description="Events older than this are dropped and counted.")
    drain_timeout_s: float = Field(
        10.0, ge=0, description="With at_end = 'exit': how long to wait for the outbox to drain before exiting."
    )


class TrackingSettings(Section):
    iou_threshold: float = Field(0.3, gt=0, lt=1, description="Least box overlap that continues a track.")
    max_missed_frames: int = Field(15, ge=0, description="Frames a track survives without its face.")
    confirm_k: int = Field(
        3, ge=1, description="Matches of one identity needed within the last confirm_m embeddings of a track."
    )
    confirm_m: int = Field(5, ge=1, description="Window of recent embeddings per track.")
    recheck_s: float = Field(2.0, gt=0, description="Re-embed a confirmed track this often.")
    stranger_recheck_s: float = Field(
        0.5, gt=0, description="Re-embed an unconfirmed track with a full window this often."
    )
    cooldown_s: float = Field(30.0, ge=0, description="Least time between two events for the same identity.")

    @model_validator(mode="after")
    def _k_le_m(self) -> TrackingSettings:
        if self.confirm_k > self.confirm_m:
            raise ValueError("confirm_k must not exceed confirm_m")
        return self


class EventSettings(Section):
    include_label: bool = Field(True, description="Put the identity's label in match events (off: only identity_id).")


class GallerySettings(Section):
    path: Path | None = Field(
        None,
        description="A signed bundle file (verified with trusted_keys), or a folder of <identity_id>/*.jpg|png photos enrolled at start-up.",
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="Gallery name this device follows; a bundle for another gallery is refused.",
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Ed25519 public keys (PEM) whose signatures on a bundle are accepted."
    )
    max_bundle_bytes: int = Field(64 << 20, ge=1024, description="Largest bundle accepted.")
    sync: bool = Field(
        True,
        description="With name and trusted_keys set: follow {prefix}/galleries/<name> and {prefix}/<device_id>/gallery/set over MQTT.",
    )
    expiry_check_s: float = Field(30.0, gt=0, le=60, description="How often identities with expires_at are checked.")


class Settings(Section):
    # Sections are frozen, so one default instance can be shared safely.
    models: ModelSettings = Field(ModelSettings(), description="Model files and interpreter options.")
    quality: QualitySettings = Field(QualitySettings(), description="Quality gate applied before embedding.")
    match: MatchSettings = Field(MatchSettings(), description="Matching and the false-match-rate target.")
    device: DeviceSettings = Field(DeviceSettings(), description="Identity and storage of this device.")
    source: SourceSettings = Field(SourceSettings(), description="Where frames come from.")
    mqtt: MqttSettings = Field(MqttSettings(), description="Broker connection and topics.")
    outbox: OutboxSettings = Field(OutboxSettings(), description="Durable event queue.")
    tracking: TrackingSettings = Field(TrackingSettings(), description="Tracks, K-of-M confirmation, cooldown.")
    events: EventSettings = Field(EventSettings(), description="What match events carry.")
    gallery: GallerySettings = Field(GallerySettings(), description="The enrolled identities.")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Nested dict from EDGE_A__B=value variables; values parsed as JSON when they are."""
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ("EDGE_CONFIG",):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"config error: {key} conflicts with another EDGE_ variable")
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        value = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(value, dict) else f" = {value!r}"
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key"
        lines.append(f"config error in {source}: {key}{shown}: {reason}")
    return "\n".join(lines)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config error: file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"config error: {path} cannot be read: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config error: {path} is not valid TOML: {exc}") from None


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """File, then environment, then command-line ``overrides`` (highest precedence)."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    data = _merge(data, _env_overrides(env))
    if overrides:
        data = _merge(data, overrides)
    source = str(path) if path is not None else "defaults"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise InputError(format_errors(exc, source)) from None
