from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main
from edge.config import Settings, load_settings
from edge.errors import InputError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edge.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid_and_every_field_is_described() -> None:
    s = load_settings(environ={})
    assert s.match.max_false_match_rate == 1e-4

    def walk(schema: dict[str, object], defs: dict[str, object]) -> None:
        for name, prop in schema.get("properties", {}).items():  # type: ignore[union-attr]
            assert "description" in prop, f"{name} has no description"

    full = Settings.model_json_schema()
    walk(full, full.get("$defs", {}))
    for sub in full.get("$defs", {}).values():
        walk(sub, {})


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = write(tmp_path, "[match]\nmax_false_match_rat = 0.001\n")
    with pytest.raises(InputError, match=r"match\.max_false_match_rat = 0\.001: unknown key"):
        load_settings(p, environ={})


def test_bad_value_names_key_value_and_reason(tmp_path: Path) -> None:
    p = write(tmp_path, "[match]\nmax_false_match_rate = 2.0\n")
    with pytest.raises(InputError) as exc:
        load_settings(p, environ={})
    msg = str(exc.value)
    assert "match.max_false_match_rate = 2.0" in msg and "less than 1" in msg and str(p) in msg


def test_env_overrides_file(tmp_path: Path) -> None:
    p = write(tmp_path, "[models]\nthreads = 2\n")
    s = load_settings(p, environ={"EDGE_MODELS__THREADS": "3", "EDGE_MATCH__OPEN_SET_CORRECTION": "false"})
    assert s.models.threads == 3 and s.match.open_set_correction is False


def test_env_bad_value_is_located() -> None:
    with pytest.raises(InputError, match=r"models\.detector = 'medium'"):
        load_settings(environ={"EDGE_MODELS__DETECTOR": "medium"})


def test_broken_toml_is_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, "[match\n")
    with pytest.raises(InputError, match="is not valid TOML"):
        load_settings(p, environ={})


def test_config_check_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "[quality]\nmin_face_px = 60\n")
    assert main(["config", "check", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text("[quality]\nmin_brightness = 200\nmax_brightness = 100\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "min_brightness must be below max_brightness" in err
