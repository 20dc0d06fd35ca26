"""The settings schema: one strict pydantic model per section, frozen, every field described.

Unknown keys are rejected; each field's constraints and description are what ``edge schema --config``
prints and what ``edge config check`` judges. Reading the settings (TOML, ``EDGE_`` variables,
command-line options) and reporting their errors is ``edge.device.config``'s job.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from edge.device.redact import redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser, from PyPI
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def _readable_file(path: Path) -> Path:
    """A file that exists and can be read now (checked at start-up and by ``edge config check``)."""
    # The message names no path: the error line shows the value already (escaped, as a repr).
    if not path.is_file():
        raise ValueError("does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError("is not readable by this user")
    return path


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


LEGACY_EMBEDDERS = {"int8": "mobilefacenet_int8", "fp32": "mobilefacenet_fp32"}


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
    embedder: str = Field(
        "sface_int8",
        min_length=1,
        description="The embedder: an entry of models/manifest.json with role 'embedder'. 'sface_int8' (SFace, dynamic-range int8, the default), 'sface_fp16' (SFace, float), 'mobilefacenet_int8' or 'mobilefacenet_fp32' (MobileFaceNet: half the cost, lower recall; for the smallest CPUs). A gallery is made for one embedder (docs/models.md).",
    )

    @field_validator("embedder", mode="before")
    @classmethod
    def _old_embedder_names(cls, value: object) -> object:
        """'int8' and 'fp32' named MobileFaceNet's files before SFace came: they still mean them."""
        return LEGACY_EMBEDDERS.get(value, value) if isinstance(value, str) else value

    alignment: Literal["mesh5", "keypoints4"] = Field(
        "mesh5",
        description="'mesh5': eye centres and mouth corners from the face mesh (five-point ArcFace alignment, more accurate); 'keypoints4': BlazeFace's four points only (no mesh model, faster).",
    )
    threads: int = Field(1, ge=1, le=16, description="Interpreter threads per model.")
    flip_average: bool = Field(
        True,
        description="Average each face's embedding with its mirror image's (more accurate, twice the embedder cost).",
    )


class DetectionSettings(Section):
    mode: Literal["regions", "whole"] = Field(
        "regions",
        description="'regions': the region scanner (tiles, crops around tracks, motion; faces down to quality.min_face_px at any frame size); 'whole': the whole frame letterboxed into the detector each frame (cheaper, close faces only: the behaviour before the scanner).",
    )
    windows_per_frame: int = Field(
        4,
        ge=1,
        le=64,
        description="Most frame windows scanned per frame where something moved (besides one crop per tracked face).",
    )
    idle_every: int = Field(
        3,
        ge=1,
        le=100,
        description="Scan one more window every this many frames: alternately the next in turn (finds faces that did not move) and the longest unscanned one over motion that a tracked face explains (someone behind them).",
    )
    motion_threshold: float = Field(
        12.0, gt=0, le=255, description="Grey-level change (0-255) that counts as motion on the 1/8-scale image."
    )
    track_crop: float = Field(
        2.5, ge=1.5, le=6, description="A tracked face is re-detected in a square this many times its size."
    )


class QualitySettings(Section):
    min_face_px: float = Field(
        24.0,
        gt=0,
        description="Smallest face (box side, pixels) that is judged, each size band with its own calibrated threshold (models/calibration/<embedder>.json has bands down to 24 px; docs/thresholds.md); the region scanner looks for faces down to this size.",
    )
    min_sharpness: float = Field(15.0, ge=0, description="Minimum variance of the Laplacian of the aligned crop.")
    max_yaw: float | None = Field(
        None,
        gt=0,
        le=3,
        description="Largest head turn, as the nose offset from the eye midpoint over half the eye distance (about tan(yaw): 0.8 ≈ 39°, 1.2 ≈ 50°). Unset: the widest turn the embedder's calibration tables were measured on (SFace 1.2, MobileFaceNet 0.8); a wider one is refused at start-up.",
    )
    max_roll_deg: float = Field(30.0, gt=0, le=90, description="Largest head tilt in degrees.")
    min_brightness: float = Field(40.0, ge=0, le=255, description="Darkest acceptable mean crop brightness (0–255).")
    max_brightness: float = Field(220.0, ge=0, le=255, description="Brightest acceptable mean crop brightness (0–255).")
    min_presence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Least face-presence score of the face mesh (alignment 'mesh5'): below it a detection is clutter, not a face.",
    )

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
        default_factory=lambda: default_state_dir(),
        description="Writable folder for the outbox, the applied gallery, the audit log and the device key. Default: $XDG_STATE_HOME/edge (~/.local/state/edge); under systemd /var/lib/edge-recognizer.",
    )


def default_state_dir() -> Path:
    """Where a device keeps its state when no one says: the user's state folder (XDG), never the folder the
    command was started in."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge"


CAMERA_ID = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,31}$"


class SourceSettings(Section):
    uri: str = Field(
        "0",
        min_length=1,
        description="The one camera (with no [[cameras]]): camera index, /dev/videoN, video file, rtsp:// or http:// URL, image folder, or 'picamera2'.",
    )
    id: str = Field(
        "main", pattern=CAMERA_ID, description="Id of the one camera (with no [[cameras]]): in events and the status."
    )
    rate: Literal["native", "fast"] = Field(
        "native",
        description="Files and folders: play at their native rate, or as fast as frames are processed (every frame is processed).",
    )
    at_end: Literal["idle", "exit", "loop"] = Field(
        "idle",
        description="When a file or folder ends: stay running and idle, exit (after the outbox drains), or replay it.",
    )
    fps: float = Field(
        30.0, gt=0, le=240, description="Frame rate of an image folder at native rate (every camera's default)."
    )
    width: int = Field(
        0, ge=0, description="Requested camera width in pixels (0: the camera's default; every camera's default)."
    )
    height: int = Field(
        0, ge=0, description="Requested camera height in pixels (0: the camera's default; every camera's default)."
    )
    retry_initial_s: float = Field(
        0.5, gt=0, description="First delay before reopening a failed camera; doubles up to retry_max_s."
    )
    retry_max_s: float = Field(30.0, gt=0, description="Longest delay between camera reopen attempts.")

    @model_validator(mode="after")
    def _retry_order(self) -> SourceSettings:
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError(
                f"retry_initial_s ({self.retry_initial_s:g}) must not exceed retry_max_s ({self.retry_max_s:g})"
            )
        return self

    @field_serializer("uri")
    def _hide_credentials(self, uri: str) -> str:
        return redact_url(uri)

    @property
    def display(self) -> str:
        """The source as it may be logged or published: credentials masked."""
        return redact_url(self.uri)


class CameraSettings(Section):
    """One camera of several: ``[[cameras]]``; what it does not set comes from [source], [quality], [detection]."""

    id: str = Field(
        pattern=CAMERA_ID, description="Camera id, unique on the device: in events, the status, Home Assistant."
    )
    source: str = Field(
        min_length=1,
        description="Camera index, /dev/videoN, video file, rtsp:// or http:// URL, image folder, or 'picamera2'.",
    )
    width: int | None = Field(None, ge=0, description="Requested width in pixels (default: [source] width).")
    height: int | None = Field(None, ge=0, description="Requested height in pixels (default: [source] height).")
    fps: float | None = Field(None, gt=0, le=240, description="Frame rate of an image folder (default: [source] fps).")
    quality: QualitySettings | None = Field(
        None, description="This camera's quality gate: the keys given override [quality]'s for it."
    )
    detection: DetectionSettings | None = Field(
        None, description="This camera's scanning: the keys given override [detection]'s for it."
    )

    @field_serializer("source")
    def _hide_credentials(self, source: str) -> str:
        return redact_url(source)


@dataclass(frozen=True)
class Camera:
    """One camera's effective settings: its id, its source (with [source]'s playback policy), its
    quality gate and detection."""

    id: str
    source: SourceSettings
    quality: QualitySettings
    detection: DetectionSettings


class MqttSettings(Section):
    host: str = Field("localhost", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    topic_prefix: str = Field("edge", pattern=r"^[^#+]+$", description="First level of every topic.")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    username: str | None = Field(None, description="User name, if the broker requires one.")
    password: SecretStr | None = Field(
        None, description="Password inline (prefer password_file or a systemd credential); never printed."
    )
    password_file: ReadableFile | None = Field(
        None, description="File holding the password, e.g. $CREDENTIALS_DIRECTORY/mqtt-password."
    )
    tls: bool = Field(False, description="Use TLS with the system's CA store (or ca_file).")
    ca_file: ReadableFile | None = Field(None, description="CA certificate bundle for TLS (implies tls).")
    cert_file: ReadableFile | None = Field(None, description="Client certificate for mutual TLS (with key_file).")
    key_file: ReadableFile | None = Field(None, description="Client private key for mutual TLS (with cert_file).")
    reconnect_min_s: float = Field(1.0, gt=0, description="Shortest reconnect back-off.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect back-off.")
    heartbeat_s: float = Field(30.0, gt=0, description="Seconds between status heartbeats.")
    max_inflight: int = Field(20, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK at once.")

    @model_validator(mode="after")
    def _checks(self) -> MqttSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s:g}) must not exceed reconnect_max_s ({self.reconnect_max_s:g})"
            )
        return self


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
    undecided_recheck_s: float = Field(
        0.2,
        gt=0,
        description="Re-embed an unconfirmed track with a full window this often instead while one of its recent matches scored within undecided_margin of its threshold (a far face near the line gets more looks; a clear stranger does not cost more).",
    )
    undecided_margin: float = Field(
        0.1, ge=0, le=1, description="How far below its threshold a match counts as undecided (cosine similarity)."
    )
    undecided_eager_s: float = Field(
        0.3,
        ge=0,
        description="An unconfirmed track whose recent matches are undecided is embedded every frame for this long after it began, then every undecided_recheck_s: face -> event within about this long whenever three of its looks agree (0: only its first confirm_m frames). In this time a look the quality gate refused (a head turned just past the limit, not a non-face) is tried again the next frame.",
    )
    cooldown_s: float = Field(30.0, ge=0, description="Least time between two events for the same identity.")

    @model_validator(mode="after")
    def _k_le_m(self) -> TrackingSettings:
        if self.confirm_k > self.confirm_m:
            raise ValueError("confirm_k must not exceed confirm_m")
        return self


class EventSettings(Section):
    identity: Literal["id_and_label", "id"] = Field(
        "id_and_label",
        description="How a match event names the person: 'id_and_label' (its identity_id and display label), or 'id' where names must not cross the broker (the consumer resolves the id; Home Assistant's presence sensors are then named by id too).",
    )
    include_label: bool = Field(
        True, description="Older spelling of identity: false is identity = 'id'. Set by identity when that is given."
    )

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: object) -> object:
        if isinstance(data, dict) and "identity" in data:
            wanted = data["identity"] != "id"
            if "include_label" in data and data["include_label"] is not wanted:
                raise ValueError("identity and include_label disagree: give identity only")
            return {**data, "include_label": wanted}
        if isinstance(data, dict) and data.get("include_label") is False:
            return {**data, "identity": "id"}
        return data


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
    trusted_keys: list[ReadableFile] = Field(
        default_factory=list, description="Ed25519 public keys (PEM) whose signatures on a bundle are accepted."
    )
    max_bundle_bytes: int = Field(
        64 << 20, ge=1024, description="Largest bundle accepted (also bounds what parts being assembled may hold)."
    )
    part_timeout_s: float = Field(
        300.0, gt=0, description="A bundle arriving in parts is dropped when no part came for this long."
    )
    allow_plaintext: bool = Field(
        False,
        description="Also admit signed bundles in the clear (format 1: names and templates readable by anyone on the broker). Off: only bundles encrypted to this device's key (edge enroll --recipient).",
    )
    sync: bool = Field(
        True,
        description="With name and trusted_keys set: follow {prefix}/galleries/<name> and {prefix}/<device_id>/gallery/set over MQTT.",
    )
    expiry_check_s: float = Field(30.0, gt=0, le=60, description="How often identities with expires_at are checked.")


class HealthSettings(Section):
    stall_timeout_s: float = Field(
        20.0,
        ge=1,
        le=3600,
        description="A worker thread (camera, frame loop, MQTT, gallery sync) that makes no progress for this long is a fault: the service logs it, says so in its status and exits non-zero. Keep it below systemd's WatchdogSec.",
    )
    exit_grace_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="After a fault, how long an orderly shutdown may take before the process is ended hard.",
    )


class AuditSettings(Section):
    enabled: bool = Field(
        True, description="Keep the tamper-evident audit log under <state_dir>/audit (edge audit verify checks it)."
    )
    segment_bytes: int = Field(1 << 20, ge=4096, description="A new log file is started past this size.")
    max_bytes: int = Field(
        64 << 20, ge=1 << 16, description="The oldest files are deleted beyond this total (the chain stays verifiable)."
    )
    max_age_days: float = Field(365.0, gt=0, description="Files whose records are all older than this are deleted.")


class HomeAssistantSettings(Section):
    enabled: bool = Field(
        True,
        description="Publish Home Assistant MQTT discovery: the device, a 'Face match' event entity, a presence sensor per enrolled identity, diagnostic sensors.",
    )
    discovery_prefix: str = Field(
        "homeassistant", pattern=r"^[^#+/][^#+]*$", description="Home Assistant's MQTT discovery prefix."
    )
    per_person: bool = Field(
        False,
        description="A presence sensor and an event type per enrolled person (up to max_identity_entities). Off by default: their retained discovery names each enrolled identity (id, and label unless events.identity = 'id') on the broker, where sealed galleries otherwise keep them off; without it Home Assistant gets the 'Face match' event entity (event type 'match', the person in its attributes) and the diagnostics.",
    )
    presence_timeout_s: float = Field(
        60.0, gt=0, le=86400, description="A presence sensor turns off this long after the person was last seen."
    )
    device_name: str | None = Field(
        None, max_length=64, description="Device name in Home Assistant (default: 'Face recognizer <device id>')."
    )
    max_identity_entities: int = Field(
        100,
        ge=0,
        le=1000,
        description="A gallery of up to this many identities gets a presence sensor and an event type per identity; "
        "a larger one (a watch list) gets the 'Face match' event entity only, with the one event type 'match'.",
    )


class Settings(Section):
    # Sections are frozen, so one default instance can be shared safely.
    models: ModelSettings = Field(ModelSettings(), description="Model files and interpreter options.")
    detection: DetectionSettings = Field(DetectionSettings(), description="How each frame is scanned for faces.")
    quality: QualitySettings = Field(QualitySettings(), description="Quality gate applied before embedding.")
    match: MatchSettings = Field(MatchSettings(), description="Matching and the false-match-rate target.")
    # The device's defaults (host name, the user's state folder) are read when settings are made, not at import.
    device: DeviceSettings = Field(default_factory=DeviceSettings, description="Identity and storage of this device.")
    source: SourceSettings = Field(SourceSettings(), description="Where frames come from.")
    mqtt: MqttSettings = Field(MqttSettings(), description="Broker connection and topics.")
    outbox: OutboxSettings = Field(OutboxSettings(), description="Durable event queue.")
    tracking: TrackingSettings = Field(TrackingSettings(), description="Tracks, K-of-M confirmation, cooldown.")
    events: EventSettings = Field(EventSettings(), description="What match events carry.")
    gallery: GallerySettings = Field(GallerySettings(), description="The enrolled identities.")
    health: HealthSettings = Field(HealthSettings(), description="Supervision of the service's threads.")
    audit: AuditSettings = Field(AuditSettings(), description="The local, hash-chained record of every decision.")
    homeassistant: HomeAssistantSettings = Field(HomeAssistantSettings(), description="Home Assistant MQTT discovery.")
    cameras: list[CameraSettings] = Field(
        default_factory=list,
        max_length=16,
        description="Several cameras ([[cameras]] tables), each its own reader, scanner and tracker; empty: the one camera of [source].",
    )

    @model_validator(mode="after")
    def _cameras(self) -> Settings:
        ids = [c.id for c in self.cameras]
        doubled = sorted({i for i in ids if ids.count(i) > 1})
        if doubled:
            raise ValueError(f"camera ids must be unique: {', '.join(doubled)} given twice")
        if self.cameras and "uri" in self.source.model_fields_set:
            raise ValueError(
                "[source] uri and [[cameras]] both name cameras: give each camera in [[cameras]] (with its source)"
            )
        return self

    def camera_list(self) -> list[Camera]:
        """Every camera with its effective settings: [[cameras]], or the one camera of [source]."""
        if not self.cameras:
            return [Camera(self.source.id, self.source, self.quality, self.detection)]
        out = []
        for c in self.cameras:
            over = {k: v for k, v in (("width", c.width), ("height", c.height), ("fps", c.fps)) if v is not None}
            source = self.source.model_copy(update={"uri": c.source, "id": c.id, **over})
            out.append(Camera(c.id, source, c.quality or self.quality, c.detection or self.detection))
        return out
