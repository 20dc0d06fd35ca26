from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main
from edge.device.config import load_settings, secret_values
from edge.device.settings import Settings, default_state_dir
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


def _env_text(value: object) -> str:
    """How an operator writes ``value`` in an environment variable."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def test_every_setting_can_be_overridden_from_the_environment_with_its_declared_type() -> None:
    defaults = Settings().model_dump(mode="json")
    checked = 0
    for section, fields in Settings.model_fields.items():
        model = fields.annotation
        if section == "cameras":  # a list of tables: the file's (refused from the environment, below)
            continue
        for key in model.model_fields:  # type: ignore[union-attr]
            value = defaults[section][key]
            if value is None or key in ("password", "uri") or isinstance(value, list):
                continue  # no default to round-trip (covered below), or shown redacted
            var = f"EDGE_{section.upper()}__{key.upper()}"
            got = load_settings(environ={var: _env_text(value)}).model_dump(mode="json")[section][key]
            assert got == value, (var, value, got)
            checked += 1
    assert checked > 40
    # The ones without a usable default: a string id that looks like a number, a list, a URL, a secret.
    s = load_settings(
        environ={
            "EDGE_DEVICE__ID": "1234",
            "EDGE_SOURCE__URI": "0",
            "EDGE_MQTT__USERNAME": "42",
            "EDGE_MQTT__PASSWORD": "007",
            "EDGE_GALLERY__NAME": "2024",
            "EDGE_GALLERY__TRUSTED_KEYS": "[]",
        }
    )
    assert s.device.id == "1234" and s.mqtt.username == "42" and s.gallery.name == "2024"
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "007"
    with pytest.raises(InputError, match=r"EDGE_CAMERAS__ID: cameras is a list of tables \(\[\[cameras\]\]\)"):
        load_settings(environ={"EDGE_CAMERAS__ID": "door"})


def test_env_errors_name_the_variable_and_unrelated_edge_variables_are_ignored() -> None:
    with pytest.raises(InputError, match=r"^config error in environment variable EDGE_MQTT__PORT: mqtt\.port = 'x'"):
        load_settings(environ={"EDGE_MQTT__PORT": "x"})
    with pytest.raises(InputError, match=r"EDGE_MATCH__MAX_FALSE_MATCH_RAT: match\.max_false_match_rat: unknown key"):
        load_settings(environ={"EDGE_MATCH__MAX_FALSE_MATCH_RAT": "1e-5"})
    with pytest.raises(InputError, match=r"EDGE_MACTH__X: no settings section 'macth'"):
        load_settings(environ={"EDGE_MACTH__X": "1"})
    # The project's own variables (./run's EDGE_EXTRAS) and EDGE_CONFIG are not settings.
    assert load_settings(environ={"EDGE_EXTRAS": "test", "EDGE_CONFIG": "/x"}).device.state_dir == default_state_dir()


def test_unknown_keys_and_sections_get_a_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"match\.max_false_match_rat: unknown key \(did you mean 'max_false_match_rate'\?\)"
    ):
        load_settings(environ={"EDGE_MATCH__MAX_FALSE_MATCH_RAT": "1e-5"})
    with pytest.raises(InputError, match=r"no settings section 'macth' \(did you mean 'match'\?\)"):
        load_settings(environ={"EDGE_MACTH__X": "1"})
    toml = tmp_path / "edge.toml"
    toml.write_text("[tracking]\nconfirm_kk = 3\n[[cameras]]\nid = 'door'\nsource = '0'\nfsp = 25\n")
    with pytest.raises(InputError) as exc:
        load_settings(toml, environ={})
    assert "tracking.confirm_kk = 3: unknown key (did you mean 'confirm_k'?)" in str(exc.value)
    assert "cameras.0.fsp = 25: unknown key (did you mean 'fps'?)" in str(exc.value)
    toml.write_text("[tracking]\nzzzz = 3\n")
    with pytest.raises(InputError, match=r"tracking\.zzzz = 3: unknown key$"):  # nothing close: no guess
        load_settings(toml, environ={})


def test_the_state_dir_is_the_users_state_folder_never_the_current_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert load_settings(environ={}).device.state_dir == tmp_path / "xdg" / "edge"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert load_settings(environ={}).device.state_dir == Path.home() / ".local" / "state" / "edge"


def test_backoff_and_retry_orders_are_checked() -> None:
    with pytest.raises(InputError, match=r"EDGE_MQTT__RECONNECT_MIN_S: mqtt: reconnect_min_s \(40\) must not exceed"):
        load_settings(environ={"EDGE_MQTT__RECONNECT_MIN_S": "40"})
    with pytest.raises(InputError, match="retry_initial_s"):
        load_settings(environ={"EDGE_SOURCE__RETRY_INITIAL_S": "60"})


def test_missing_tls_files_are_named_at_load_time(tmp_path: Path) -> None:
    p = write(tmp_path, f'[mqtt]\nca_file = "{tmp_path}/nope.pem"\n')
    with pytest.raises(InputError) as exc:
        load_settings(p, environ={})
    assert (
        str(exc.value) == f"config error in {p}: mqtt.ca_file = '{tmp_path}/nope.pem': does not exist or is not a file"
    )
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(InputError, match="cert_file and key_file go together"):
        load_settings(environ={"EDGE_MQTT__CERT_FILE": str(cert)})


PLANTED = "pl4nted-Secr3t"


def test_secrets_never_appear_in_errors_or_in_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, f'[mqtt]\npassword = ["{PLANTED}"]\nport = 70000\n')
    with pytest.raises(InputError) as exc:
        load_settings(bad, environ={})
    assert "mqtt.password = <secret, not shown>" in str(exc.value) and PLANTED not in str(exc.value)
    good = write(
        tmp_path,
        f'[mqtt]\npassword = "{PLANTED}"\n[source]\nuri = "rtsp://admin:{PLANTED}@10.0.0.9/live?token={PLANTED}"\n',
    )
    assert main(["config", "check", str(good), "--show"]) == 0
    out = capsys.readouterr().out
    assert (
        PLANTED not in out and "rtsp://admin:***@10.0.0.9/live?token=***" in out and '"password": "**********"' in out
    )
    bad_uri = write(tmp_path, f'[source]\nuri = "rtsp://admin:{PLANTED}@cam"\nrate = "slow"\n[mqtt]\nport = 0\n')
    assert main(["config", "check", str(bad_uri)]) == 2
    assert PLANTED not in capsys.readouterr().err


def test_a_secret_pasted_into_the_wrong_field_is_masked_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The password given where it belongs, and pasted by mistake as the port: the port's error names
    # the key and the reason, never the value.
    bad = write(tmp_path, f'[mqtt]\npassword = "{PLANTED}"\nport = "{PLANTED}"\n')
    with pytest.raises(InputError) as exc:
        load_settings(bad, environ={})
    assert "mqtt.port = '***'" in str(exc.value) and PLANTED not in str(exc.value)
    # From the environment, and a camera URL's password pasted into another field.
    env = {"EDGE_MQTT__PASSWORD": PLANTED, "EDGE_DEVICE__ID": f"{PLANTED}!"}
    with pytest.raises(InputError) as exc:
        load_settings(environ=env)
    assert "device.id" in str(exc.value) and PLANTED not in str(exc.value)
    cam = write(tmp_path, f'[source]\nuri = "rtsp://u:{PLANTED}@cam"\nrate = "{PLANTED}"\n')
    assert main(["config", "check", str(cam)]) == 2
    err = capsys.readouterr().err
    assert "source.rate = '***'" in err and PLANTED not in err
    # The content of the password file, pasted into the broker's host name field.
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text(PLANTED + "\n")
    pw_file = write(tmp_path, f'[mqtt]\npassword_file = "{secret_file}"\nkeepalive = "{PLANTED}"\n')
    with pytest.raises(InputError) as exc:
        load_settings(pw_file, environ={})
    assert "mqtt.keepalive" in str(exc.value) and PLANTED not in str(exc.value)


def test_journald_priorities_are_syslog_levels() -> None:
    import logging

    from edge.device.logs import JournalFormatter, ScrubbingFormatter, protect

    fmt = ScrubbingFormatter(JournalFormatter("%(name)s: %(message)s"))
    lines = {
        level: fmt.format(logging.LogRecord("edge.x", level, "f", 1, f"m {PLANTED}", None, None))
        for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
    }
    assert [line[:3] for line in lines.values()] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    protect(PLANTED)
    assert (
        fmt.format(logging.LogRecord("edge.x", logging.INFO, "f", 1, f"pw={PLANTED}", None, None))
        == "<6>edge.x: pw=***"
    )


def test_the_shipped_example_config_is_valid_once_its_files_exist(tmp_path: Path) -> None:
    text = (Path(__file__).parent.parent / "systemd" / "edge.toml.example").read_text()
    for needed in ("/etc/edge-recognizer/ca.pem", "/run/credentials/edge-recognizer.service/mqtt-password"):
        assert needed in text
        local = tmp_path / Path(needed).name
        local.write_text("x")
        text = text.replace(needed, str(local))
    s = load_settings(write(tmp_path, text), environ={})
    assert s.homeassistant.max_identity_entities == 100 and s.homeassistant.device_name == "Front door"


def test_several_cameras_each_with_what_it_overrides_and_the_rest_from_the_device(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "[source]\nrate = 'fast'\nfps = 15\n[quality]\nmax_yaw = 0.7\nmin_sharpness = 20\n"
        "[[cameras]]\nid = 'door'\nsource = '/dev/video0'\n[cameras.quality]\nmax_yaw = 0.5\n"
        "[[cameras]]\nid = 'yard'\nsource = 'rtsp://u:pw-123@cam/live'\nwidth = 1280\nheight = 720\n"
        "[cameras.detection]\nwindows_per_frame = 8\n",
    )
    s = load_settings(p, environ={})
    door, yard = s.camera_list()
    assert (door.id, door.source.uri, door.source.rate, door.source.fps) == ("door", "/dev/video0", "fast", 15)
    assert door.quality.max_yaw == 0.5 and door.quality.min_sharpness == 20  # its own, then the device's
    assert yard.quality.max_yaw == 0.7 and yard.detection.windows_per_frame == 8 and yard.source.width == 1280
    assert "pw-123" in secret_values(s)  # every camera's credentials are protected
    one = load_settings(environ={"EDGE_SOURCE__URI": "/dev/video2"}).camera_list()
    assert [(c.id, c.source.uri) for c in one] == [("main", "/dev/video2")]  # the one camera, as before
    bad = write(
        tmp_path,
        "[[cameras]]\nid = 'a'\nsource = '0'\n[cameras.quality]\nmin_face_px = -1\n"
        "[[cameras]]\nid = 'a'\nsource = '1'\n",
    )
    with pytest.raises(InputError) as exc:
        load_settings(bad, environ={})
    assert "cameras.0.quality.min_face_px = -1" in str(exc.value)
    twice = write(tmp_path, "[[cameras]]\nid = 'a'\nsource = '0'\n[[cameras]]\nid = 'a'\nsource = '1'\n")
    with pytest.raises(InputError, match="camera ids must be unique: a given twice"):
        load_settings(twice, environ={})
    both = write(tmp_path, "[source]\nuri = '0'\n[[cameras]]\nid = 'a'\nsource = '1'\n")
    with pytest.raises(InputError, match=r"\[source\] uri and \[\[cameras\]\] both name cameras"):
        load_settings(both, environ={})


def test_journald_priorities_only_when_stderr_is_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    from edge.device.logs import stderr_is_journal

    with open(tmp_path / "stderr", "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        st = os.fstat(stream.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})  # another stream: inherited
        assert not stderr_is_journal({})  # a pipe or file that is not the journal: plain lines
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"})


def test_config_check_names_the_embedder_its_tables_and_refuses_an_unknown_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from edge.cli import main

    good = tmp_path / "good.toml"
    good.write_text('[models]\nembedder = "mobilefacenet_int8"\n')
    assert main(["config", "check", str(good), "--show"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])["models_in_use"]
    assert shown["embedder"] == "mobilefacenet_int8" and shown["calibration"].endswith(
        "calibration/mobilefacenet_int8.json"
    )
    assert shown["sha256"] == shown["calibration_embedder_sha256"]
    bad = tmp_path / "bad.toml"
    bad.write_text('[models]\nembedder = "sface_int9"\n')
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "embedder 'sface_int9' is not in" in err and "sface_int8" in err


def test_config_check_refuses_a_gate_wider_than_the_tables_as_start_up_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from edge.cli import main
    from edge.device.runtime import load_manifest
    from edge.device.settings import Settings
    from edge.recognition.calibration import measured_max_yaw

    s = Settings()
    measured = measured_max_yaw(load_manifest(s.models.dir), load_manifest(s.models.dir).spec(s.models.embedder).sha256)
    unset = tmp_path / "unset.toml"
    unset.write_text("[quality]\nmin_sharpness = 15\n")
    assert main(["config", "check", str(unset), "--show"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["models_in_use"]["quality_max_yaw"] == measured
    cams = tmp_path / "cams.toml"
    cams.write_text(
        '[[cameras]]\nid = "door"\nsource = "rtsp://cam/door"\n'
        f'[[cameras]]\nid = "yard"\nsource = "rtsp://cam/yard"\n[cameras.quality]\nmax_yaw = {measured + 0.1:g}\n'
    )
    assert main(["config", "check", str(cams)]) == 2
    err = capsys.readouterr().err
    assert f"cameras.yard.quality.max_yaw = {measured + 0.1:g}: wider than the head turns" in err
    assert len(err.strip().splitlines()) == 1


def test_events_identity_id_keeps_names_off_the_broker_and_include_label_is_its_older_spelling(
    tmp_path: Path,
) -> None:
    from edge.device.config import load_settings
    from edge.device.settings import EventSettings
    from edge.errors import InputError as ConfigError

    assert EventSettings().identity == "id_and_label" and EventSettings().include_label is True
    assert EventSettings.model_validate({"identity": "id"}).include_label is False
    assert EventSettings.model_validate({"include_label": False}).identity == "id"  # the older spelling
    assert EventSettings.model_validate({"identity": "id_and_label", "include_label": True}).include_label
    f = tmp_path / "e.toml"
    f.write_text('[events]\nidentity = "id"\ninclude_label = true\n')
    with pytest.raises(ConfigError, match="identity and include_label disagree"):
        load_settings(f)
    f.write_text('[events]\nidentity = "name"\n')
    with pytest.raises(ConfigError, match="events.identity"):
        load_settings(f)
    assert load_settings(environ={"EDGE_EVENTS__IDENTITY": "id"}).events.include_label is False


def test_the_device_command_loads_no_measuring_module() -> None:
    """'edge run' (its command line and everything the service imports) loads nothing of the measuring lab
    (edge_lab), seen by Python's own import log; 'edge --help' and 'edge eval' find the lab's commands
    through its entry points; the condition names the lab's help offers are the lab's own."""
    import subprocess
    import sys

    from edge_lab.cli import CONDITIONS as offered
    from edge_lab.conditions import CONDITIONS

    assert offered == CONDITIONS
    code = "import edge.cli as c; c.build_parser(['run']); import edge.service.app, edge.cli.service"
    log = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    ).stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if line.startswith("import time:")]
    assert "edge.service.app" in imported and "edge.recognition.track" in imported  # the log is the run's
    assert not [m for m in imported if m.startswith("edge_lab")], [m for m in imported if m.startswith("edge_lab")]
    code = "import sys, edge.cli as c; c.build_parser(['eval', 'lfw']); print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'edge_lab.cli'" in out  # asked for: found and loaded
    from edge.cli import build_parser

    whole = build_parser([])  # the whole help: the lab's commands beside the device's
    assert whole.parse_args(["eval", "lfw", "--root", "x"]).eval_command == "lfw"
    assert whole.parse_args(["bench"]).command == "bench"


def test_redaction_masks_only_secrets_and_collects_them_for_the_log_filter() -> None:
    from edge.device.redact import MASK, redact_url, scrub, url_secrets

    assert redact_url("rtsp://admin@cam.local/stream") == "rtsp://admin@cam.local/stream"  # a user, no password
    assert (
        redact_url("rtsp://admin:pw1@cam.local/s?token=t0k&fps=30") == "rtsp://admin:***@cam.local/s?token=***&fps=30"
    )
    assert redact_url("not a url at all") == "not a url at all"
    assert url_secrets("rtsp://admin:pw1@cam/s?token=t0k&Password=p2;key=&fps=30") == ["pw1", "t0k", "p2"]
    assert url_secrets("rtsp://admin@cam/s?fps=30") == [] and url_secrets("http://:@cam/") == []
    assert scrub("pw1 and t0k, pw1", ["pw1", "", "t0k"]) == f"{MASK} and {MASK}, {MASK}"


def test_a_lab_command_without_the_lab_installed_is_one_line() -> None:
    from edge.cli.common import lab
    from edge.errors import InputError

    with pytest.raises(InputError, match=r"^the measuring lab is not installed \(no-such-entry\): install the package"):
        lab("no-such-entry")
    assert lab("no-such-entry", required=False) is None
    assert callable(lab("commands")) and callable(lab("fleet_simulate"))  # the lab's entries, as installed
