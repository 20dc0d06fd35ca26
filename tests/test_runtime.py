from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge.device.runtime import load_manifest, load_model
from edge.errors import ModelError
from edge.recognition.calibration import calibration_for


def test_manifest_lists_every_model_with_checksum_and_calibration() -> None:
    m = load_manifest()
    assert set(m.embedders) == {"mobilefacenet_fp32", "mobilefacenet_int8", "sface_int8", "sface_fp16"}
    for key in ("detector_short", "detector_full", "landmarks", *m.embedders):
        spec = m.spec(key)
        assert len(spec.sha256) == 64
        assert (m.root / spec.file).is_file()
    for key in m.embedders:
        for band in calibration_for(m, m.spec(key).sha256, "mesh5").bands:
            table = band.table
            assert table.impostor_pairs > 1_000_000
            assert np.all(np.diff(table.fmr) < 0) and np.all(np.diff(table.threshold) > 0)


def test_altered_model_is_refused_naming_the_file(models_copy: Path) -> None:
    path = models_copy / "mobilefacenet_fp32.tflite"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"mobilefacenet_fp32\.tflite fails its checksum"):
        load_model(load_manifest(models_copy), "mobilefacenet_fp32")


def test_truncated_and_missing_models_are_refused(models_copy: Path) -> None:
    short = models_copy / "face_detection_short_range.tflite"
    short.write_bytes(short.read_bytes()[:1000])
    with pytest.raises(ModelError, match="face_detection_short_range.tflite fails its checksum"):
        load_model(load_manifest(models_copy), "detector_short")
    (models_copy / "face_landmark.tflite").unlink()
    with pytest.raises(ModelError, match="face_landmark.tflite cannot be read"):
        load_model(load_manifest(models_copy), "landmarks")


def test_malformed_manifest_is_one_clear_error(models_copy: Path) -> None:
    (models_copy / "manifest.json").write_text(json.dumps({"models": {"x": {"file": "a"}}}))
    with pytest.raises(ModelError, match="manifest.json is malformed"):
        load_manifest(models_copy)


def test_calibration_table_threshold_and_rate_are_inverse() -> None:
    m = load_manifest()
    table = calibration_for(m, m.spec("sface_int8").sha256, "mesh5").largest.table
    t = table.threshold_for(1e-4)
    assert table.fmr_at(t) == pytest.approx(1e-4, rel=0.05)
    # Stricter rate → higher threshold; past the table's end the strictest measured one.
    assert table.threshold_for(1e-5) > t
    assert table.threshold_for(1e-12) == table.threshold[-1]


@pytest.mark.parametrize("key", ["mobilefacenet_fp32", "sface_int8"])
def test_embedder_runs_any_batch_size(key: str) -> None:
    manifest = load_manifest()
    model = load_model(manifest, key)
    x = np.random.default_rng(0).uniform(0, 255, (4, 112, 112, 3)).astype(np.float32)
    four = model.run(x)[0]
    one = np.concatenate([model.run(x[i : i + 1])[0] for i in range(4)])
    assert four.shape == (4, manifest.embedder(key).dim)
    np.testing.assert_allclose(four, one, rtol=1e-3, atol=1e-3)


def test_embedder_spec_comes_from_the_manifest() -> None:
    m = load_manifest()
    sface, mfn = m.embedder("sface_int8"), m.embedder("mobilefacenet_int8")
    assert (sface.size, sface.channels, sface.mean, sface.scale, sface.dim) == (112, "RGB", 0.0, 1.0, 128)
    assert (mfn.size, mfn.channels, mfn.mean, mfn.scale, mfn.dim) == (112, "RGB", 127.5, 1 / 128, 192)
    with pytest.raises(ModelError, match=r"embedder 'detector_short' is not in .*its embedders: mobilefacenet_fp32"):
        m.embedder("detector_short")


def test_an_embedder_entry_whose_output_disagrees_with_its_model_is_refused(models_copy: Path) -> None:
    from edge.vision.embed import load_embedder

    raw = json.loads((models_copy / "manifest.json").read_text())
    raw["models"]["sface_int8"]["output"]["shape"] = [-1, 192]
    (models_copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="gives 128-d vectors, its manifest entry says 192"):
        load_embedder(load_manifest(models_copy), "sface_int8")


def test_a_calibration_file_for_another_embedder_is_refused(models_copy: Path) -> None:
    path = models_copy / "calibration" / "sface_int8.json"
    raw = json.loads(path.read_text())
    other = "ee" * 32  # an older sface_int8.tflite, say: tables measured for a file this manifest no longer has
    raw["embedder_sha256"] = other
    for table in raw["tables"]:
        table["embedder_sha256"] = other
    path.write_text(json.dumps(raw))
    m = load_manifest(models_copy)
    with pytest.raises(
        ModelError, match=r"sface_int8\.json holds tables measured for embedder sha256 .* another embedder"
    ):
        calibration_for(m, m.spec("sface_int8").sha256, "mesh5+flip")


def test_the_calibration_covers_every_face_the_gate_admits_and_a_lower_gate_is_refused() -> None:
    from edge.device.settings import Settings
    from edge.recognition.pipeline import Recognizer

    rec = Recognizer(Settings())
    smallest = rec.matcher.calibration.bands[-1].min_px
    assert smallest <= rec.settings.quality.min_face_px  # the default gate's faces have a measured rate
    below = Recognizer(Settings.model_validate({"quality": {"min_face_px": smallest - 4}}), rec.manifest)
    with pytest.raises(ModelError, match=rf"quality.min_face_px = {smallest - 4:g}: below the smallest face-size band"):
        below.matcher  # noqa: B018 (the matcher is made at start-up: the service fails there, naming the key)


def test_only_the_embedders_own_calibration_file_is_read_and_a_broken_one_is_named(models_copy: Path) -> None:
    (models_copy / "calibration" / "mobilefacenet_int8.json").write_text("{ half a file")  # another embedder's
    m = load_manifest(models_copy)
    assert calibration_for(m, m.spec("sface_int8").sha256, "mesh5+flip").bands  # unaffected
    with pytest.raises(ModelError, match=r"calibration file .*mobilefacenet_int8\.json cannot be read"):
        calibration_for(m, m.spec("mobilefacenet_int8").sha256, "mesh5+flip")
    (models_copy / "calibration" / "sface_fp16.json").write_text(json.dumps({"embedder_sha256": "x", "tables": 3}))
    with pytest.raises(ModelError, match=r"sface_fp16\.json is malformed"):
        calibration_for(m, m.spec("sface_fp16").sha256, "mesh5+flip")


def test_the_head_turn_gate_is_the_one_the_tables_measured_and_a_wider_one_is_refused(models_copy: Path) -> None:
    from edge.device.settings import Settings
    from edge.recognition.calibration import LEGACY_MAX_YAW, measured_max_yaw
    from edge.recognition.pipeline import Recognizer

    m = load_manifest(models_copy)
    measured = measured_max_yaw(m, m.spec("sface_int8").sha256)
    rec = Recognizer(Settings.model_validate({"models": {"dir": str(models_copy)}}), m)
    assert rec.settings.quality.max_yaw is None and rec.limits.max_yaw == measured  # unset: the tables' own
    at = Recognizer(Settings.model_validate({"models": {"dir": str(models_copy)}, "quality": {"max_yaw": measured}}), m)
    assert at.matcher and at.limits.max_yaw == measured  # exactly the measured turn: accepted
    wider = Recognizer(
        Settings.model_validate({"models": {"dir": str(models_copy)}, "quality": {"max_yaw": measured + 0.01}}), m
    )
    with pytest.raises(ModelError, match=rf"quality.max_yaw = {measured + 0.01:g}: wider than the head turns"):
        wider.matcher  # noqa: B018 (made at start-up: the service fails there, naming the key)
    with pytest.raises(ModelError, match=r"cameras.door.quality.max_yaw"):
        rec.check_gate(wider.settings.quality, "cameras.door.quality")
    # A file that does not say (MobileFaceNet's, measured before the gate was written down): the gate then.
    path = models_copy / "calibration" / "mobilefacenet_int8.json"
    raw = json.loads(path.read_text())
    assert "quality_gate" not in raw
    assert measured_max_yaw(m, m.spec("mobilefacenet_int8").sha256) == LEGACY_MAX_YAW
    raw["quality_gate"] = {"max_yaw": 0.7}
    path.write_text(json.dumps(raw))
    assert measured_max_yaw(m, m.spec("mobilefacenet_int8").sha256) == 0.7
