"""The command line as a user drives it: fit, evaluate --json, predict with heatmaps, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.cli import main
from inspector.modeldir import read_manifest
from tests.conftest import SIZE


@pytest.fixture(scope="module")
def model_dir(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synthetic"
    code = main(["fit", "--category", "synthetic", "--data-root", str(synthetic_root), "--out", str(out),
                 "--image-size", str(SIZE), "--coreset-ratio", "0.05", "--threads", "2", "-q"])  # fmt: skip
    assert code == 0
    return out


def test_fit_writes_a_model_and_a_summary_line(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = read_manifest(model_dir)
    assert manifest["model"] == "patchcore"
    assert manifest["params"]["coreset_ratio"] == 0.05 and manifest["params"]["image_size"] == SIZE
    assert manifest["data"]["category"] == "synthetic"
    assert manifest["backbone"]["weights_sha256"] and manifest["fit"]["peak_rss_mb"] > 0


def test_evaluate_json_reports_the_metrics(model_dir: Path, synthetic_root: Path, capsys) -> None:
    assert main(["evaluate", "--model-dir", str(model_dir), "--data-root", str(synthetic_root), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "n_train", "n_test", "ms_per_image"):
        assert key in report
    assert report["image_auroc"] > 0.9 and report["n_train"] == 24
    rows = Path(report["scores_csv"]).read_text().splitlines()
    assert rows[0].startswith("path,defect_type,label,score") and len(rows) == report["n_test"] + 1


def test_predict_prints_json_lines_and_writes_heatmaps(model_dir: Path, synthetic_root: Path, tmp_path: Path,
                                                       capsys) -> None:  # fmt: skip
    images = sorted((synthetic_root / "synthetic" / "test" / "hole").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    code = main(["predict", "--model-dir", str(model_dir), *map(str, images), str(broken),
                 "--heatmaps", str(tmp_path / "hm")])  # fmt: skip
    assert code == 1  # one file failed, the others were still scored
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(line["path"]).name for line in lines] == [images[0].name, images[1].name, "broken.png"]
    assert lines[0]["score"] > 0 and "error" in lines[2]
    heatmap = cv2.imread(str(tmp_path / "hm" / f"{images[0].stem}_heatmap.png"))
    assert heatmap is not None and heatmap.shape[:2] == cv2.imread(str(images[0])).shape[:2]


def test_fit_from_a_plain_folder_and_config_override(tmp_path: Path, synthetic_root: Path) -> None:
    config = tmp_path / "line.yaml"
    config.write_text("image_size: 64\npatchcore:\n  coreset_ratio: 0.2\n")
    out = tmp_path / "m"
    train = synthetic_root / "synthetic" / "train" / "good"
    assert main(["fit", "--train-dir", str(train), "--config", str(config), "--out", str(out), "-q",
                 "--coreset-ratio", "0.3"]) == 0  # fmt: skip
    params = read_manifest(out)["params"]
    assert params["image_size"] == 64 and params["coreset_ratio"] == 0.3  # flags beat the config


def test_user_errors_are_one_line_messages(tmp_path: Path, capsys) -> None:
    assert main(["fit", "--category", "bottle", "--data-root", str(tmp_path)]) == 2
    assert "mvtec.com" in capsys.readouterr().err
    assert main(["evaluate", "--model-dir", str(tmp_path / "none"), "--category", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("colour: blue\n")
    (tmp_path / "d").mkdir()
    cv2.imwrite(str(tmp_path / "d" / "a.png"), np.zeros((8, 8), np.uint8))
    assert main(["fit", "--train-dir", str(tmp_path / "d"), "--config", str(bad_config)]) == 2
    assert "unknown settings" in capsys.readouterr().err
