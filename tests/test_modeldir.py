"""Saved models: atomic replacement, checksums, and clear errors for damaged or foreign directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inspector.common import files
from inspector.models import persistence
from inspector.models.persistence import ModelDirError, read_manifest, read_model_dir, write_model_dir
from inspector.models.scoring import load_scorer


def test_write_then_read(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "m", {"model": "x"}, {"a.bin": b"abc"})
    manifest = read_manifest(tmp_path / "m")
    assert manifest["model"] == "x"
    assert manifest["format_version"] == persistence.FORMAT_VERSION
    assert (tmp_path / "m" / "a.bin").read_bytes() == b"abc"


def test_crash_mid_save_leaves_the_previous_model_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "m"
    write_model_dir(target, {"model": "old"}, {"a.bin": b"old-a", "b.bin": b"old-b"})
    real_write = files.write_synced

    def crash_on_second_file(path: Path, data: bytes) -> None:
        if path.name == "b.bin":
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(persistence, "write_synced", crash_on_second_file)
    with pytest.raises(OSError, match="disk full"):
        write_model_dir(target, {"model": "new"}, {"a.bin": b"new-a", "b.bin": b"new-b"})
    assert read_manifest(target)["model"] == "old"
    assert (target / "a.bin").read_bytes() == b"old-a"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp directories left behind


def test_replacing_a_model_swaps_all_files(tmp_path: Path) -> None:
    target = tmp_path / "m"
    write_model_dir(target, {"model": "old"}, {"old.bin": b"1"})
    write_model_dir(target, {"model": "new"}, {"new.bin": b"2"})
    assert read_manifest(target)["model"] == "new"
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "new.bin"]


def test_damaged_or_incompatible_directories_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        read_manifest(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match=r"manifest\.json is missing"):
        read_manifest(tmp_path / "empty")
    write_model_dir(tmp_path / "m", {"model": "x"}, {"a.bin": b"abc"})
    (tmp_path / "m" / "a.bin").write_bytes(b"abd")
    with pytest.raises(ModelDirError, match=r"a\.bin does not match its checksum"):
        read_manifest(tmp_path / "m")
    with pytest.raises(ModelDirError, match=r"a\.bin does not match its checksum"):
        read_model_dir(tmp_path / "m")
    (tmp_path / "m" / "a.bin").unlink()
    with pytest.raises(ModelDirError, match=r"a\.bin is missing"):
        read_manifest(tmp_path / "m")
    manifest = tmp_path / "m" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 99}))
    with pytest.raises(ModelDirError, match="format 99"):
        read_manifest(tmp_path / "m")
    manifest.write_text("{ not json")
    with pytest.raises(ModelDirError, match="damaged"):
        read_manifest(tmp_path / "m")


def test_unknown_model_type_is_refused(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "m", {"model": "svm"}, {})
    with pytest.raises(ModelDirError, match="unknown model type 'svm'"):
        load_scorer(tmp_path / "m")
