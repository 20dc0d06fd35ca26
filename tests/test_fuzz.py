"""Property-based fuzzing of outside inputs: images and settings. Whatever arrives, the only
exception that leaves the boundary is the project's own one-line error (bundle headers and
part metadata are fuzzed in test_gallery_hardening.py)."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from edge.capture.imageio import decode_image
from edge.device.config import load_settings
from edge.device.settings import CameraSettings, Settings
from edge.errors import ImageError, InputError

from .conftest import FACES

VALID = {
    "jpg": (FACES / "Laura_Bush" / "Laura_Bush_0016.jpg").read_bytes(),
    "png": cv2.imencode(".png", np.full((40, 50, 3), 120, np.uint8))[1].tobytes(),
    "bmp": cv2.imencode(".bmp", np.full((40, 50, 3), 60, np.uint8))[1].tobytes(),
    "webp": cv2.imencode(".webp", np.full((40, 50, 3), 200, np.uint8))[1].tobytes(),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused_as_an_image_error(data: bytes) -> None:
    try:
        image = decode_image(data, "x")
    except ImageError as exc:
        assert str(exc).startswith("image x ") and "\n" not in str(exc)
    else:
        assert image.ndim == 3 and min(image.shape[:2]) >= 8


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID)), st.data())
def test_mutated_images_decode_or_are_refused_never_raise(kind: str, data: st.DataObject) -> None:
    raw = bytearray(VALID[kind])
    for _ in range(data.draw(st.integers(1, 12))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos:]
            if not raw:
                raw.append(0)
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=64))
    try:
        image = decode_image(bytes(raw), "m")
    except ImageError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size <= 40_000_000 * 3


keys = {
    section: list(model.model_fields)
    for section, model in ((s, f.annotation) for s, f in Settings.model_fields.items())
    if isinstance(model, type) and issubclass(model, BaseModel)
}
camera_keys = [*CameraSettings.model_fields, "bogus"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.lists(st.text(max_size=10), max_size=3),
)


@settings(max_examples=300, deadline=None)
@example({"audit": {"password_file": "\x00"}})  # found by this test: a NUL in a password_file path crashed it
@given(
    st.dictionaries(
        st.sampled_from([*sorted(keys), "nope"]),
        st.dictionaries(
            st.sampled_from([*sorted({k for v in keys.values() for k in v}), "bogus"]), scalars, max_size=4
        ),
        max_size=3,
    )
)
def test_any_settings_table_loads_or_is_one_located_error(table: dict[str, dict[str, object]]) -> None:
    try:
        load_settings(environ={}, overrides=table)
    except InputError as exc:
        for line in str(exc).splitlines():
            assert re.match(r"^config error in [^:]+: [a-z_.0-9()]+", line), line


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(camera_keys),
            st.one_of(
                scalars,
                st.dictionaries(st.sampled_from(["min_face_px", "max_yaw", "mode", "nope"]), scalars, max_size=2),
            ),
            max_size=4,
        ),
        max_size=3,
    )
)
def test_any_cameras_list_loads_or_is_one_located_error(cameras: list[dict[str, object]]) -> None:
    try:
        s = load_settings(environ={}, overrides={"cameras": cameras})
        assert len(s.camera_list()) == max(1, len(cameras))
    except InputError as exc:
        for line in str(exc).splitlines():
            assert re.match(r"^config error in [^:]+: [a-z_.0-9()]+", line), line


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"EDGE_[A-Z]{2,10}(__[A-Z_]{1,25})?", fullmatch=True), st.text(max_size=40), max_size=4
    )
)
def test_any_environment_loads_or_is_one_error_naming_the_variable(environ: dict[str, str]) -> None:
    try:
        load_settings(environ=environ)
    except InputError as exc:
        assert any(var in str(exc) for var in environ), str(exc)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_any_toml_file_loads_or_is_one_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "edge.toml"
        p.write_text(text)
        try:
            load_settings(p, environ={})
        except InputError as exc:
            assert str(exc).startswith("config error")
