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
        "fp32",
        description="Embedder file: 'fp32' (fused-PReLU float graph) or 'int8' (full-integer static quantization).",
    )
    alignment: Literal["mesh5", "keypoints4"] = Field(
        "mesh5",
        description="'mesh5': eye centres and mouth corners from the face mesh (five-point ArcFace alignment, more accurate); 'keypoints4': BlazeFace's four points only (no mesh model, faster).",
    )
    threads: int = Field(1, ge=1, le=16, description="Interpreter threads per model.")
    flip_average: bool = Field(
        False,
        description="Average each face's embedding with its mirror image's (more accurate, twice the embedder cost).",
    )


class QualitySettings(Section):
    min_face_px: float = Field(40.0, gt=0, description="Smallest face (box side, pixels) that is embedded.")
    min_sharpness: float = Field(15.0, ge=0, description="Minimum variance of the Laplacian of the aligned crop.")
    max_yaw: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Largest head turn, as the nose offset from the eye midpoint over half the eye distance.",
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


class Settings(Section):
    # Sections are frozen, so one default instance can be shared safely.
    models: ModelSettings = Field(ModelSettings(), description="Model files and interpreter options.")
    quality: QualitySettings = Field(QualitySettings(), description="Quality gate applied before embedding.")
    match: MatchSettings = Field(MatchSettings(), description="Matching and the false-match-rate target.")


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
