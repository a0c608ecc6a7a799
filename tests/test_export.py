"""`inspector export`: a bundle is written only when it reproduces the fitted model on the golden set, and the
line box scores it exactly as it scored the model it came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from inspector.calibration import Calibration, CalibrationError, load_active_calibration, save_calibration
from inspector.cli import main
from inspector.data import Dataset, read_image
from inspector.export import ExportError, ParityError, export_bundle
from inspector.export.parity import TOLERANCES, compare
from inspector.models.golden import GOLDEN_FILE, GOLDEN_TRAIN_IMAGES, GoldenSet
from inspector.models.persistence import MANIFEST, NETWORK_FILE, read_manifest, read_model_dir, write_model_dir
from inspector.models.scoring import ScoreResult, load_scorer


def test_fit_keeps_a_golden_set_scored_by_the_fitted_network(patchcore_dir: Path) -> None:
    manifest, files = read_model_dir(patchcore_dir)
    golden = GoldenSet.from_bytes(files[GOLDEN_FILE])
    assert GOLDEN_FILE in manifest["files"]  # checksummed like every state file
    assert golden.roles.count("train") == GOLDEN_TRAIN_IMAGES
    assert golden.inputs.shape[1:3] == golden.maps.shape[1:] == (128, 128)
    # The reference came from torch; the saved ONNX network reproduces it closely but not bit for bit.
    again = load_scorer(patchcore_dir).score_batch(golden.batch())
    assert np.allclose(again.scores, golden.scores, rtol=1e-4)


def test_fp32_bundle_scores_like_its_model_and_carries_its_calibrations(
    service_model_dir: Path, dataset: Dataset, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    report = export_bundle(service_model_dir, out, "fp32", threads=2)
    assert report.passed and report.calibration == "mid" and not report.flips
    manifest = read_manifest(out)  # checksums verified
    assert manifest["export"]["precision"] == "fp32"
    assert json.loads((out / "parity.json").read_text())["passed"] is True
    # The calibration history travels; the active one is not stale for the bundle and names its origin.
    active = load_active_calibration(out)
    assert active is not None and active.name == "mid"
    assert active.data["calibrated_on_model"] == manifest["export"]["source_fingerprint"]
    images = [read_image(s.path) for s in dataset.test()]
    source, bundle = load_scorer(service_model_dir).score(images), load_scorer(out).score(images)
    assert np.allclose(bundle.scores, source.scores, rtol=1e-6)
    assert [active.verdict(s) for s in bundle.scores] == [active.verdict(s) for s in source.scores]


def test_fp16_bundle_passes_within_its_own_tolerance(patchcore_dir: Path, tmp_path: Path) -> None:
    report = export_bundle(patchcore_dir, tmp_path / "fp16", "fp16", threads=2)
    assert report.passed
    assert 0 < report.max_score_difference <= TOLERANCES["fp16"].score
    network = onnx.load(tmp_path / "fp16" / NETWORK_FILE)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in network.graph.initializer)


def perturbed_copy(model_dir: Path, destination: Path, factor: float) -> Path:
    """The model with one backbone weight tensor scaled by `factor`, checksums made to match: a network that
    loads cleanly but no longer computes what was fitted."""
    manifest, files = read_model_dir(model_dir)
    network = onnx.load_from_string(files[NETWORK_FILE])
    weights = max(network.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights) * factor, weights.name))
    files[NETWORK_FILE] = network.SerializeToString()
    write_model_dir(destination, {k: v for k, v in manifest.items() if k != "files"}, files)
    for name in ("calibration.json", "calibrations"):
        source = model_dir / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        elif source.is_file():
            shutil.copy(source, destination / name)
    return destination


def test_a_perturbed_network_fails_the_gate_and_nothing_is_written(patchcore_dir: Path, tmp_path: Path) -> None:
    broken = perturbed_copy(patchcore_dir, tmp_path / "broken", factor=1.05)
    out = tmp_path / "bundle"
    with pytest.raises(ParityError) as caught:
        export_bundle(broken, out, "fp32", threads=2)
    assert not caught.value.report.passed
    assert caught.value.report.max_score_difference > TOLERANCES["fp32"].score
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no staging left behind


def test_cli_refusal_is_one_line_with_the_report_beside_it(
    patchcore_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = perturbed_copy(patchcore_dir, tmp_path / "broken", factor=1.05)
    code = main(["export", "--model-dir", str(broken), "--out", str(tmp_path / "bundle"), "--threads", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: export refused: parity FAILED (fp32" in err
    failed = json.loads((tmp_path / "bundle.parity-failed.json").read_text())
    assert failed["passed"] is False and len(failed["images"]) == GOLDEN_TRAIN_IMAGES


def test_cli_export_prints_the_gate_summary(
    patchcore_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--model-dir", str(patchcore_dir), "--out", str(tmp_path / "b"), "--threads", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("parity passed (fp32")
    assert "no calibration, so verdicts were not compared" in captured.err


def test_a_verdict_flip_fails_the_gate_even_within_the_score_tolerance() -> None:
    golden = GoldenSet(
        names=["a", "b"],
        roles=["good", "defect"],
        inputs=np.zeros((2, 4, 4, 3), np.uint8),
        scores=np.array([0.9995, 2.0]),
        maps=np.ones((2, 4, 4), np.float32),
    )
    calibration = Calibration(image_threshold=1.0, rule="test", name="t")
    nudged = ScoreResult(scores=np.array([1.0001, 2.0]), maps=np.ones((2, 4, 4), np.float32))
    report = compare(golden, nudged, "fp32", calibration)
    assert report.max_score_difference < TOLERANCES["fp32"].score
    assert not report.passed and [i.name for i in report.flips] == ["a"]
    assert "1 verdict flips" in report.summary()


def test_a_model_without_golden_set_or_with_a_stale_calibration_is_refused(patchcore_dir: Path, tmp_path: Path) -> None:
    manifest, files = read_model_dir(patchcore_dir)
    del files[GOLDEN_FILE]
    old = write_model_dir_copy(tmp_path / "old", manifest, files)
    with pytest.raises(ExportError, match="no golden set"):
        export_bundle(old, tmp_path / "b1")
    stale = shutil.copytree(patchcore_dir, tmp_path / "stale")
    save_calibration(stale, Calibration(image_threshold=1.0, rule="test", name="old", model_fingerprint="f" * 64))
    with pytest.raises(CalibrationError, match="earlier fit"):
        export_bundle(stale, tmp_path / "b2")
    with pytest.raises(ExportError, match="not a model directory"):
        (tmp_path / "busy").mkdir()
        (tmp_path / "busy" / "notes.txt").write_text("keep me")
        export_bundle(patchcore_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def write_model_dir_copy(path: Path, manifest: dict[str, object], files: dict[str, bytes]) -> Path:
    write_model_dir(path, {k: v for k, v in manifest.items() if k != "files"}, files)
    assert (path / MANIFEST).is_file()
    return path
