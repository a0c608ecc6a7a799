"""The golden-sample gate: `inspector gate` passes a version that judges every golden image as labelled and fails,
naming each image, one that fails a known-good part or passes a known defect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inspector.calibration import Calibration, activate_calibration, load_active_calibration, save_calibration
from inspector.calibration.gate import GateError, run_gate
from inspector.calibration.golden_samples import golden_samples
from inspector.cli import main
from inspector.data import Dataset, read_image
from inspector.models.scoring import Scorer


@pytest.fixture(scope="module")
def golden(
    dataset: Dataset, service_model_dir: Path, patchcore_scorer: Scorer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Three good test parts and the defects the session's calibrated model fails, as a golden folder."""
    root = tmp_path_factory.mktemp("golden") / "synthetic"
    calibration = load_active_calibration(service_model_dir)
    assert calibration is not None
    samples = dataset.test()
    good = [s for s in samples if not s.is_defect][:3]
    defects = [s for s in samples if s.is_defect]
    failing = [s for s in defects if calibration.verdict(score(patchcore_scorer, s.path)) == "fail"]
    assert len(failing) >= 2
    for label, chosen in (("good", good), ("defect", failing[:3])):
        (root / label).mkdir(parents=True)
        for s in chosen:
            shutil.copy(s.path, root / label / f"{s.defect_type}_{s.path.name}")
    return root


def version(source: Path, target: Path, calibration: str = "mid") -> Path:
    shutil.copytree(source, target)
    activate_calibration(target, calibration)
    return target


def test_an_identical_version_passes(
    service_model_dir: Path, golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = version(service_model_dir, tmp_path / "v2")
    assert main(["gate", "--model-dir", str(candidate), "--golden", str(golden)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [out[-1]] and out[-1].startswith("gate passed: 6 golden images (3 good, 3 defect)")


def test_a_version_that_passes_a_known_defect_fails_naming_each_image(
    service_model_dir: Path, golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    candidate = version(service_model_dir, tmp_path / "v2", "lax")  # threshold x100: every defect passes
    assert main(["gate", "--model-dir", str(candidate), "--golden", str(golden)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    failed = [line for line in lines if line.startswith("FAIL ")]
    assert len(failed) == 3 and all(line.startswith("FAIL defect/") for line in failed)
    assert "expected fail, got pass" in failed[0] and "below it (no review band)" in failed[0]
    assert lines[-1] == "gate failed: 3 of 6 golden images (3 good, 3 defect) judged against their label"

    assert main(["gate", "--model-dir", str(candidate), "--golden", str(golden), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["passed"], report["total"], report["failed"]) == (False, 6, 3)
    assert sorted(c["name"] for c in report["checks"] if c["failed"]) == sorted(
        f"defect/{p.name}" for p in (golden / "defect").iterdir()
    )


def test_a_score_inside_the_review_band_is_no_failure_but_one_across_it_is(
    service_model_dir: Path, golden: Path, patchcore_scorer: Scorer
) -> None:
    samples = golden_samples(golden)
    scores = {s.name: score(patchcore_scorer, s.path) for s in samples}
    top_good = max(v for k, v in scores.items() if k.startswith("good/"))
    # The highest good score sits inside a band around the threshold: review, which reaches a person, not the line.
    inside = Calibration(image_threshold=top_good, rule="test", name="band", review_band=(0.5, 1.5))
    assert all(c.verdict != "fail" or c.label == "defect" for c in run_gate(patchcore_scorer, inside, samples).checks)
    # Across the band: a good part above the upper edge fails the gate.
    across = Calibration(image_threshold=top_good / 2, rule="test", name="across", review_band=(0.9, 1.2))
    report = run_gate(patchcore_scorer, across, samples)
    assert not report.passed
    assert any("good/" in line and "above the review band 0.9-1.2" in line for line in report.failure_lines())


def test_a_version_without_calibration_or_an_empty_golden_set_cannot_be_judged(
    service_model_dir: Path, golden: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = version(service_model_dir, tmp_path / "bare")
    (bare / "calibration.json").unlink()
    assert main(["gate", "--model-dir", str(bare), "--golden", str(golden)]) == 2
    assert "no valid calibration" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(GateError, match="holds no images"):
        run_gate(None, Calibration(image_threshold=1.0, rule="test"), golden_samples(tmp_path / "empty"))  # type: ignore[arg-type]
    save_calibration(bare, Calibration(image_threshold=1.0, rule="test", name="x"))
    assert main(["gate", "--model-dir", str(bare), "--golden", str(tmp_path / "missing")]) == 2


def score(scorer: Scorer, path: Path) -> float:
    return float(scorer.score([read_image(path)]).scores[0])
