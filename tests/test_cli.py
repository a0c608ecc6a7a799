"""The command line as a user drives it: fit, evaluate --json, predict with heatmaps, its errors and its start-up.

User errors (`InspectorError`) are one `error:` line with exit status 2; every other exception is a bug and keeps
its traceback; building the parser imports nothing heavy; the scoring commands run without torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import inspector.cli.data
from inspector.cli import build_parser, main
from inspector.cli.arguments import EXIT_USER_ERROR, UsageError
from inspector.common.errors import InspectorError
from inspector.models.persistence import read_manifest
from tests.conftest import SIZE

HEAVY = ("torch", "pydantic", "numpy", "yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m inspector ARGS` in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, timeout=300)


def assert_one_error_line(err: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def model_dir(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "synthetic"
    code = main(
        [
            "fit",
            "--category",
            "synthetic",
            "--data-root",
            str(synthetic_root),
            "--out",
            str(out),
            "--image-size",
            str(SIZE),
            "--coreset-ratio",
            "0.05",
            "--threads",
            "2",
            "-q",
        ]
    )
    assert code == 0
    return out


# ---- the commands ------------------------------------------------------------------------------------------


def test_fit_records_the_method(model_dir: Path) -> None:
    assert read_manifest(model_dir)["model"] == "patchcore"


def test_fit_records_the_flags(model_dir: Path) -> None:
    params = read_manifest(model_dir)["params"]
    assert params["coreset_ratio"] == 0.05
    assert params["image_size"] == SIZE


def test_fit_records_the_data_and_the_fit(model_dir: Path) -> None:
    manifest = read_manifest(model_dir)
    assert manifest["data"]["category"] == "synthetic"
    assert manifest["backbone"]["weights_sha256"]
    assert manifest["fit"]["peak_rss_mb"] > 0


def test_evaluate_json_reports_the_metrics(
    model_dir: Path, synthetic_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--model-dir", str(model_dir), "--data-root", str(synthetic_root), "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "n_train", "n_test", "ms_per_image"):
        assert key in report
    assert report["image_auroc"] > 0.9
    assert report["n_train"] == 24
    assert report["model"] == "patchcore"
    rows = Path(report["scores_csv"]).read_text().splitlines()
    assert rows[0].startswith("path,defect_type,label,score")
    assert len(rows) == report["n_test"] + 1


def test_evaluate_prints_a_table(model_dir: Path, synthetic_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = model_dir.parent / "table.csv"
    args = ["evaluate", "--model-dir", str(model_dir), "--data-root", str(synthetic_root), "--csv", str(csv), "-q"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"patchcore on synthetic ({model_dir})")
    assert "image AUROC" in out
    assert csv.is_file()


def test_predict_prints_json_lines_and_writes_heatmaps(
    model_dir: Path, synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = sorted((synthetic_root / "synthetic" / "test" / "hole").glob("*.png"))[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    code = main(
        ["predict", "--model-dir", str(model_dir), *map(str, images), str(broken), "--heatmaps", str(tmp_path / "hm")]
    )
    assert code == 1  # one file failed, the others were still scored
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(line["path"]).name for line in lines] == [images[0].name, images[1].name, "broken.png"]
    assert lines[0]["score"] > 0
    assert "error" in lines[2]
    heatmap = cv2.imread(str(tmp_path / "hm" / f"{images[0].stem}_heatmap.png"))
    assert heatmap is not None
    assert heatmap.shape[:2] == cv2.imread(str(images[0])).shape[:2]


def test_fit_from_a_plain_folder_and_config_override(tmp_path: Path, synthetic_root: Path) -> None:
    config = tmp_path / "line.yaml"
    config.write_text("image_size: 64\npatchcore:\n  coreset_ratio: 0.2\n")
    out = tmp_path / "m"
    train = synthetic_root / "synthetic" / "train" / "good"
    args = [
        "fit",
        "--train-dir",
        str(train),
        "--config",
        str(config),
        "--out",
        str(out),
        "-q",
        "--coreset-ratio",
        "0.3",
    ]
    assert main(args) == 0
    params = read_manifest(out)["params"]
    assert params["image_size"] == 64  # from the config
    assert params["coreset_ratio"] == 0.3  # flags beat the config


def test_a_fit_past_its_coreset_budget_spills_to_the_directory_asked_for(
    tmp_path: Path, synthetic_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = synthetic_root / "synthetic" / "train" / "good"
    spill = tmp_path / "spill"
    spill.mkdir()
    args = ["fit", "--train-dir", str(train), "--out", str(tmp_path / "m"), "-q", "--image-size", "64"]
    settings = ["--set", "coreset_budget_mb=0.01", "--set", f"coreset_spill_dir={spill}"]
    assert main([*args, *settings]) == 0
    assert "picked from patches spilled to disk past coreset_budget_mb" in capsys.readouterr().out
    assert list(spill.iterdir()) == []
    not_a_directory = ["--set", "coreset_budget_mb=0.01", "--set", f"coreset_spill_dir={tmp_path / 'none'}"]
    assert main([*args, *not_a_directory]) == EXIT_USER_ERROR
    assert "coreset_spill_dir" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["evaluate"], ["calibrate"], ["predict", "x.png"]])
def test_scoring_commands_parse_without_a_runtime(command: list[str]) -> None:
    assert build_parser().parse_args([*command, "--threads", "2"]).threads == 2


@pytest.mark.parametrize("command", [["evaluate"], ["calibrate"], ["predict", "x.png"]])
def test_scoring_commands_have_no_runtime_flag(command: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--runtime", "onnxruntime"])
    assert exit_info.value.code == EXIT_USER_ERROR


def test_fit_runtime_choices_have_no_auto() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--runtime", "auto"])
    assert build_parser().parse_args(["fit", "--runtime", "torch"]).runtime == "torch"


def test_a_command_group_without_its_action_prints_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == EXIT_USER_ERROR
    out = capsys.readouterr().out
    assert "download" in out
    assert "synthetic" in out


def test_serve_help_ends_with_the_settings_reference(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--model-dir [NAME=]DIR" in out
    assert "INSPECTOR_CAMERA_KEY" in out


# ---- user errors: one line, exit status 2 ------------------------------------------------------------------


def test_missing_data_is_one_line_naming_where_to_get_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--category", "bottle", "--data-root", str(tmp_path)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "mvtec.com" in err


def test_missing_model_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model-dir", str(tmp_path / "none"), "--category", "x"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "does not exist" in err


def test_missing_model_dir_for_predict_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "--model-dir", str(tmp_path / "none"), str(tmp_path / "a.png")]) == EXIT_USER_ERROR
    assert_one_error_line(capsys.readouterr().err)


def test_no_model_named_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "--model-dir" in err


def test_unknown_config_settings_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("colour: blue\n")
    (tmp_path / "d").mkdir()
    cv2.imwrite(str(tmp_path / "d" / "a.png"), np.zeros((8, 8), np.uint8))
    assert main(["fit", "--train-dir", str(tmp_path / "d"), "--config", str(bad_config)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "unknown settings" in err


def test_unknown_model_setting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d").mkdir()
    cv2.imwrite(str(tmp_path / "d" / "a.png"), np.zeros((8, 8), np.uint8))
    assert main(["fit", "--train-dir", str(tmp_path / "d"), "--set", "colour=blue"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "colour" in err


def test_download_of_an_unknown_category_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "download", "mvtec", "--category", "no_such_part", "--data-root", str(tmp_path), "-q"]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "no_such_part" in err


def test_download_from_a_refused_connection_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:9/x.tar.xz"  # the discard port: nothing listens, the connection is refused
    args = ["data", "download", "mvtec", "--category", "bottle", "--data-root", str(tmp_path), "--url", url, "-q"]
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "could not download" in err


def test_a_user_error_from_the_installed_command_has_no_traceback(tmp_path: Path) -> None:
    done = run_cli("data", "download", "mvtec", "--category", "no_such_part", "--data-root", str(tmp_path), "-q")
    assert done.returncode == EXIT_USER_ERROR
    assert_one_error_line(done.stderr)


def test_a_multi_line_message_is_printed_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise InspectorError("first line\n  second line")

    monkeypatch.setattr(inspector.cli.data, "run_synthetic", fail)
    assert main(["data", "synthetic"]) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: first line second line\n"


def test_verbose_shows_the_traceback_of_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise UsageError("say more")

    monkeypatch.setattr(inspector.cli.data, "run_synthetic", fail)
    with pytest.raises(UsageError):
        main(["-v", "data", "synthetic"])


def test_warnings_reach_stderr_once_per_call(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def warn(args: argparse.Namespace) -> int:
        logging.getLogger("inspector.test").warning("careful")
        return 0

    monkeypatch.setattr(inspector.cli.data, "run_synthetic", warn)
    for _ in range(2):  # the handler installed for one call is gone before the next
        assert main(["data", "synthetic"]) == 0
        assert capsys.readouterr().err == "WARNING careful\n"


# ---- bugs keep their traceback -----------------------------------------------------------------------------


@pytest.mark.parametrize("error", [ValueError, FileNotFoundError, RuntimeError, KeyError])
def test_a_bug_propagates(monkeypatch: pytest.MonkeyPatch, error: type[Exception]) -> None:
    def bug(args: argparse.Namespace) -> int:
        raise error("a bug, not the user's doing")

    monkeypatch.setattr(inspector.cli.data, "run_synthetic", bug)
    with pytest.raises(error):
        main(["data", "synthetic"])


BUG_SCRIPT = """
import sys
import inspector.cli.data

def bug(args):
    raise ValueError("a bug, not the user's doing")

inspector.cli.data.run_synthetic = bug
from inspector.cli import main
raise SystemExit(main(["data", "synthetic"]))
"""


def test_a_bug_prints_its_traceback() -> None:
    done = subprocess.run([sys.executable, "-c", BUG_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "ValueError: a bug, not the user's doing" in done.stderr
    assert "error: " not in done.stderr


# ---- start-up cost -----------------------------------------------------------------------------------------

IMPORT_SCRIPT = """
import json, sys
import inspector.cli
inspector.cli.build_parser()
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def modules_after_building_the_parser() -> set[str]:
    done = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout)}


@pytest.mark.parametrize("module", HEAVY)
def test_building_the_parser_imports_nothing_heavy(modules_after_building_the_parser: set[str], module: str) -> None:
    assert module not in modules_after_building_the_parser


# ---- the scoring commands run without torch ----------------------------------------------------------------

NO_TORCH_SCRIPT = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm", "torchvision"):
            raise ImportError(f"{name} is blocked: the scoring commands must not import it")
        return None

sys.meta_path.insert(0, Blocker())
from inspector.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def no_torch(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", NO_TORCH_SCRIPT, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_predict_runs_without_torch(model_dir: Path, synthetic_root: Path) -> None:
    image = sorted((synthetic_root / "synthetic" / "test" / "good").glob("*.png"))[0]
    done = no_torch("predict", "--model-dir", str(model_dir), str(image), "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["score"] > 0


def test_evaluate_runs_without_torch(model_dir: Path, synthetic_root: Path, tmp_path: Path) -> None:
    csv = tmp_path / "scores.csv"
    args = ["--model-dir", str(model_dir), "--data-root", str(synthetic_root), "--csv", str(csv), "--json", "-q"]
    done = no_torch("evaluate", *args, "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_test"] > 0


def test_calibrate_runs_without_torch(model_dir: Path, synthetic_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"  # calibrating writes into the model directory; the module's model stays as fitted
    copy.mkdir()
    for path in model_dir.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    done = no_torch(
        "calibrate", "--model-dir", str(copy), "--data-root", str(synthetic_root), "--category", "synthetic", "-q"
    )
    assert done.returncode == 0, done.stderr
    assert (copy / "calibration.json").is_file()
