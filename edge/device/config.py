"""Loading the settings (schema: ``edge.device.settings``): read from TOML, overridden by ``EDGE_`` variables.

Every field has a description (``edge schema --config`` prints them). Unknown keys
are rejected. A bad value fails at start-up with one line per problem naming the
key, the value and the reason, exactly as ``edge config check`` prints it.

Environment overrides use ``__`` between levels:
``EDGE_MATCH__MAX_FALSE_MATCH_RATE=1e-5`` sets ``[match] max_false_match_rate``.
Each value is read as its field's declared type: ``EDGE_DEVICE__ID=1234`` is the
string "1234", ``EDGE_MODELS__THREADS=2`` the integer 2, lists and tables are JSON.
Variables without ``__`` (``EDGE_EXTRAS``, ``EDGE_CONFIG``) are not settings and are
ignored; ``EDGE_<SECTION>__<KEY>`` naming no setting is an error naming the variable.
The environment is read when settings are loaded, never at import time.

Secrets (the MQTT password, credentials in a camera URL) never appear in an error,
in ``edge config check --show`` or in any log line (see ``edge.device.redact``).
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    SecretStr,
    ValidationError,
)

from edge.device.redact import redact_url, scrub, url_secrets
from edge.device.settings import Settings
from edge.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser, from PyPI
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError


def parse_toml(text: str) -> dict[str, Any]:
    """TOML text → dict (raises TOMLDecodeError); the one place the parser is chosen."""
    return tomllib.loads(text)


ENV_PREFIX = "EDGE_"


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` → X (the declared type a value must have when given)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def did_you_mean(name: str, choices: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _keys_at(loc: tuple[str, ...]) -> list[str]:
    """The valid keys of the table at ``loc`` (a section, or an entry of a list of tables)."""
    model: Any = Settings
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = _unwrap_optional(field.annotation)
        if typing.get_origin(model) in (list, tuple):
            model = typing.get_args(model)[0]
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _is_structured(annotation: Any) -> bool:
    """Lists, tables and models are given as JSON in the environment; scalars as they are."""
    base = _unwrap_optional(annotation)
    origin = typing.get_origin(base) or base
    return origin in (list, tuple, dict, set, frozenset) or (isinstance(base, type) and issubclass(base, BaseModel))


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """Nested dict from EDGE_<SECTION>__<KEY>=value variables, each value read as its
    field's declared type, and which variable set which key (for error messages)."""
    out: dict[str, Any] = {}
    origin: dict[tuple[str, str], str] = {}
    sections = Settings.model_fields
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue  # EDGE_EXTRAS, EDGE_CONFIG…: not settings
        path = var[len(ENV_PREFIX) :].lower().split("__")
        if len(path) != 2 or not all(path):
            raise InputError(f"config error in environment variable {var}: expected EDGE_<SECTION>__<KEY>")
        section, key = path
        if section not in sections:
            raise InputError(
                f"config error in environment variable {var}: no settings section '{section}'"
                f"{did_you_mean(section, sections)} (sections: {', '.join(sections)})"
            )
        model = _unwrap_optional(sections[section].annotation)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise InputError(
                f"config error in environment variable {var}: {section} is a list of tables ([[{section}]]): "
                "give it in the settings file"
            )
        fields = model.model_fields
        if key not in fields:
            raise InputError(
                f"config error in environment variable {var}: {section}.{key}: unknown key{did_you_mean(key, fields)}"
            )
        annotation = fields[key].annotation
        value: Any = raw
        if raw == "" and type(None) in typing.get_args(annotation):
            value = None
        elif _is_structured(annotation):
            try:
                value = json.loads(raw)
            except ValueError:
                raise InputError(
                    f"config error in environment variable {var}: {section}.{key} must be JSON (a list or table)"
                ) from None
        out.setdefault(section, {})[key] = value
        origin[(section, key)] = f"environment variable {var}"
    return out, origin


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _is_secret(loc: tuple[str, ...]) -> bool:
    return len(loc) >= 2 and loc[0] == "mqtt" and loc[1] == "password"


def _shown(loc: tuple[str, ...], value: object) -> str:
    """How a rejected value may be printed: never a secret, URLs without credentials."""
    if _is_secret(loc):
        return " = <secret, not shown>"
    if isinstance(value, (dict, SecretStr)):
        return ""
    return f" = {redact_url(value)!r}" if isinstance(value, str) else f" = {value!r}"


def _where(loc: tuple[str, ...], source: str, origin: Mapping[tuple[str, str], str]) -> str:
    """Where the value at ``loc`` came from; for a whole section, every place that set one of its keys."""
    if len(loc) >= 2:
        return origin.get((loc[0], loc[1]), source)
    if len(loc) == 1:
        places = sorted({v for (sec, _), v in origin.items() if sec == loc[0]})
        return " and ".join(places) if places else source
    return source


def format_errors(exc: ValidationError, source: str, origin: Mapping[tuple[str, str], str] | None = None) -> str:
    """One line per problem: where the value came from, the key, the value (unless secret), the reason."""
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "(root)"
        where = _where(loc, source, origin or {})
        shown = "" if err["type"] == "missing" else _shown(loc, err.get("input"))
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown key" + did_you_mean(loc[-1], _keys_at(loc[:-1]))
        lines.append(f"config error in {where}: {key}{shown}: {reason}")
    return "\n".join(lines)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return parse_toml(path.read_text())
    except FileNotFoundError:
        raise InputError(f"config error: file {path} does not exist") from None
    except OSError as exc:
        raise InputError(f"config error: {path} cannot be read: {exc.strerror or exc}") from None
    except (TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config error: {path} is not valid TOML: {exc}") from None


def _origins(data: Mapping[str, Any], label: str) -> dict[tuple[str, str], str]:
    return {(sec, key): label for sec, body in data.items() if isinstance(body, Mapping) for key in body}


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """File, then environment, then command-line ``overrides`` (highest precedence)."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    origin = _origins(data, source)
    env_data, env_origin = _env_overrides(env)
    data = _merge(data, env_data)
    origin.update(env_origin)
    if overrides:
        data = _merge(data, overrides)
        origin.update(_origins(overrides, "command-line options"))
    data = _camera_sections(data)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        # A secret pasted into the wrong field (the password as mqtt.port) is echoed as that field's
        # value: every secret the file, the environment and the options hold is masked, as in logs.
        secrets = raw_secrets(read_toml(path) if path is not None else {}, env_data, overrides or {})
        raise InputError(scrub(format_errors(exc, source, origin), secrets)) from None


def _camera_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Each camera's [cameras.quality] / [cameras.detection] keys over the device's sections: what a
    camera does not set, it inherits (then validated whole, errors naming cameras.N.quality.key)."""
    cameras = data.get("cameras")
    if not isinstance(cameras, list):
        return data
    merged = []
    for cam in cameras:
        if isinstance(cam, Mapping):
            cam = dict(cam)
            for section in ("quality", "detection"):
                if isinstance(cam.get(section), Mapping) and isinstance(data.get(section, {}), Mapping):
                    cam[section] = _merge(dict(data.get(section, {})), cam[section])
        merged.append(cam)
    return {**data, "cameras": merged}


def raw_secrets(*layers: Mapping[str, Any]) -> list[str]:
    """Every secret value the unvalidated settings hold, wherever it is: passwords (inline, or what a
    readable password_file holds, as the MQTT link reads it) and the credentials of any URL. Values shorter than 3
    characters are left out, as in ``edge.device.logs.protect`` (they would mask ordinary text)."""
    found: list[str] = []

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, key)
        elif isinstance(node, str):
            if key == "password":
                found.append(node)
            elif key == "password_file":
                found.extend(_file_secret(Path(node)))
            found.extend(url_secrets(node))

    for layer in layers:
        walk(layer)
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)  # longest first: no partial masks


def _file_secret(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            text = f.read(4096).decode("utf-8", "replace").strip()
    except (OSError, ValueError):  # ValueError: a path no file can have (a NUL byte in it)
        return []
    return [text] if text else []


def secret_values(settings: Settings) -> list[str]:
    """Raw secret values held by the settings (for ``edge.device.logs.protect``); the password file is read where used."""
    values = [s for c in settings.camera_list() for s in url_secrets(c.source.uri)]
    if settings.mqtt.password is not None:
        values.append(settings.mqtt.password.get_secret_value())
    return values


def settings_digest(settings: Settings) -> str:
    """sha256 of the effective settings, secrets masked: what the audit log records at start."""
    import hashlib

    canonical = json.dumps(settings.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
