"""Payloads that leave the device: match events and status, with a schema version.

These are the only things published. By construction they carry no image, crop
or embedding: the models below have no field that could hold one, and
``extra="forbid"`` keeps it that way.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.recognition.track import Confirmation

SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Evidence(Payload):
    agreed: int = Field(
        description="Embeddings in the confirmation window that matched this identity above the threshold."
    )
    seen: int = Field(description="Embeddings in the confirmation window.")
    fused: int = Field(
        0,
        description="How many looks of the track were averaged into the embedding that matched (0: the agreeing looks matched one by one).",
    )


class MatchEvent(Payload):
    """A confirmed match: published QoS 1 on ``{prefix}/{device_id}/events/match``."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema", description="Payload schema version.")
    event_id: uuid.UUID = Field(
        default_factory=uuid.uuid4, description="Unique id; consumers de-duplicate on it (delivery is at-least-once)."
    )
    device_id: str = Field(description="The device that saw the face.")
    camera: str = Field(
        "main", description="The camera of the device that saw it (its id in [[cameras]], or [source] id)."
    )
    ts: datetime = Field(default_factory=utc_now, description="When the match was confirmed, RFC 3339 UTC.")
    identity_id: str = Field(description="Enrolled identity id.")
    label: str | None = Field(
        None, description="Display label of the identity; omitted when events.include_label is false."
    )
    score: float = Field(description="Best cosine similarity in the confirmation window.")
    threshold: float = Field(description="Decision threshold in force.")
    est_false_match_rate: float = Field(
        description="Estimated rate at which a stranger reaches this score against this gallery."
    )
    evidence: Evidence = Field(description="Frames that agreed / frames seen.")
    track_id: int = Field(description="Track the match belongs to (unique per process run).")
    bbox: tuple[float, float, float, float] = Field(
        description="Face box x0, y0, x1, y1 as fractions 0–1 of the frame."
    )
    quality: float = Field(description="Quality score 0–1 of the best agreeing face.")
    model: str = Field(description="First 16 hex digits of the embedder's sha256.")
    gallery_version: int = Field(description="Version of the gallery that matched.")

    def to_json(self, include_label: bool = True) -> bytes:
        exclude = None if include_label and self.label is not None else {"label"}
        return self.model_dump_json(by_alias=True, exclude=exclude).encode()


def make_event(
    conf: Confirmation,
    width: int,
    height: int,
    device_id: str,
    model_tag: str,
    include_label: bool,
    camera: str = "main",
) -> MatchEvent:
    """The payload of a confirmed match: the gallery version is that of the snapshot that matched."""
    m = conf.match
    if m.identity_id is None:
        raise ValueError("a confirmation always names an identity")
    return MatchEvent(
        device_id=device_id,
        camera=camera,
        identity_id=m.identity_id,
        label=m.label if include_label else None,
        score=round(m.score, 4),
        threshold=round(m.threshold, 4),
        est_false_match_rate=m.est_false_match_rate,
        evidence=Evidence(agreed=conf.agreed, seen=conf.seen, fused=conf.fused),
        track_id=conf.track_id,
        bbox=tuple(round(v, 4) for v in conf.box.normalised(width, height)),
        quality=conf.quality,
        model=model_tag,
        gallery_version=m.gallery_version,
    )


class StageLatency(Payload):
    p50_ms: float = Field(description="Median latency in milliseconds.")
    p95_ms: float = Field(description="95th percentile latency in milliseconds.")


class CameraStatus(Payload):
    state: str = Field(description="starting, ok, retrying, failed, exhausted, idle, or stalled (its reader stuck).")
    error: str | None = Field(None, description="This camera's last error, if any.")
    fps: float = Field(0.0, description="Frames of this camera processed per second over the last interval.")
    dropped_frames: int = Field(0, description="Frames of this camera dropped by its hand-off since start.")


class Status(Payload):
    """Retained on ``{prefix}/{device_id}/status``; the last will publishes ``offline``."""

    schema_: int = Field(SCHEMA_VERSION, alias="schema", description="Payload schema version.")
    device_id: str = Field(description="Device id.")
    state: Literal["online", "offline"] = Field(description="'online' while the service runs.")
    ts: datetime | None = Field(
        default_factory=utc_now, description="When this status was made, RFC 3339 UTC (absent in the last will)."
    )
    lost: bool | None = Field(
        None,
        description="True in the last will: the broker published this because the connection was lost, at a time the device could not know.",
    )
    version: str = Field("", description="Software version.")
    embedder: str | None = Field(
        None, description="The embedder this device runs (its manifest name): galleries must be made for it."
    )
    key_id: str | None = Field(
        None,
        description="sha256 (hex) of this device's X25519 public key: galleries are encrypted to it. Shown to help an operator match keys; encryption uses only keys the operator pinned ('edge device key' on the device).",
    )
    public_key: str | None = Field(
        None, description="This device's public key, as 'edge device key' prints it (x25519:<base64>)."
    )
    uptime_s: float = Field(0.0, description="Seconds since the service started.")
    camera: str = Field(
        "",
        description="Camera state (of several: the worst): starting, ok, retrying, failed, exhausted, idle, stalled.",
    )
    camera_error: str | None = Field(None, description="Last camera error, if any (of several: the first, naming it).")
    cameras: dict[str, CameraStatus] = Field(default_factory=dict, description="Each camera's state, by camera id.")
    fps: float = Field(
        0.0, description="Frames processed per second over the last heartbeat interval (every camera's)."
    )
    latency: dict[str, StageLatency] = Field(
        default_factory=dict, description="Per-stage latency over the last interval."
    )
    faces_per_min: float = Field(0.0, description="Faces detected per minute over the last interval.")
    dropped_frames: int = Field(0, description="Frames dropped by the capture hand-off since start.")
    outbox_depth: int = Field(0, description="Events waiting for broker acknowledgement.")
    outbox_dropped: int = Field(0, description="Events dropped by the outbox bounds since start.")
    events_published: int = Field(0, description="Events acknowledged by the broker since start.")
    gallery_name: str | None = Field(None, description="Name of the gallery in force, when it has one.")
    gallery_version: int = Field(0, description="Gallery version in force.")
    gallery_identities: int = Field(0, description="Identities matching now.")
    cpu_temp_c: float | None = Field(None, description="CPU temperature, where readable.")
    since: datetime | None = Field(None, description="When the device last came online (its current session).")
    audit_head: str | None = Field(
        None, description="Hash of the newest audit log record: keep it to detect a log cut or rewritten later."
    )
    audit_records: int | None = Field(None, description="Records in the audit log's chain so far (its last seq).")
    last_error: str | None = Field(
        None,
        description="The most recent problem still affecting the device (broker, outbox, camera, gallery, a worker), or why it stopped.",
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class GalleryError(Payload):
    step: str = Field(
        description="The check that refused the bundle: size, parse, signature, plaintext, model, gallery, version, recipient, decrypt, store, queue, internal."
    )
    reason: str = Field(description="Why, in one line.")
    rejected_version: int | None = Field(
        None, description="The refused bundle's version, when read from a verified header (else null)."
    )


class GalleryState(Payload):
    """Retained on ``{prefix}/{device_id}/gallery/state`` after every apply, rejection and expiry."""

    gallery: str | None = Field(description="Name of the gallery in force (null: none applied over the air).")
    version: int | None = Field(description="Version in force: the full bundle's or a later removal's.")
    identities: int = Field(description="Identities matching now.")
    embeddings: int = Field(description="Embeddings matching now.")
    applied_at: str | None = Field(description="When the gallery in force was applied, RFC 3339 UTC.")
    expired: list[str] = Field(
        default_factory=list,
        description="Identities of the gallery past their expires_at, by id: only for a gallery in the clear (format 1); a sealed gallery's stay off the broker (expired_count).",
    )
    removed: list[str] = Field(
        default_factory=list,
        description="Identities dropped by signed removals, by id: only for a gallery in the clear (format 1); a sealed gallery's stay off the broker (removed_count).",
    )
    expired_count: int = Field(0, description="How many identities of the gallery are past their expires_at.")
    removed_count: int = Field(0, description="How many identities signed removals dropped from the gallery in force.")
    sealed: bool = Field(False, description="The gallery in force came encrypted to this device (format 2).")
    error: GalleryError | None = Field(None, description="Set when this state follows a refused bundle.")

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude={"error"} if self.error is None else None).encode()


def schemas() -> dict[str, object]:
    return {
        "MatchEvent": MatchEvent.model_json_schema(by_alias=True),
        "Status": Status.model_json_schema(by_alias=True),
        "GalleryState": GalleryState.model_json_schema(by_alias=True),
    }
