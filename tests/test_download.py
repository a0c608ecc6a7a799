"""`inspector data download`, exercised against a local HTTP server serving generated archives (never the web)."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspector.data import Dataset
from inspector.data.download import (
    MVTEC_CATEGORIES,
    MVTEC_URLS,
    URL_ENV,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_category,
    resolve_url,
)
from inspector.data.synthetic import make_category


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, bytes]]]:
    src = tmp_path_factory.mktemp("src")
    make_category(src, "bottle", n_train=3, n_test_good=1, n_test_defect_per_type=1, size=32)
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w:gz") as tf:
        tf.add(src / "bottle", arcname="bottle")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        for p in sorted((src / "bottle").rglob("*")):
            if p.is_file():
                zf.write(p, f"bottle/{p.relative_to(src / 'bottle').as_posix()}")
    files = {
        "/bottle.tar.gz": good.getvalue(),
        "/bottle.zip": zipped.getvalue(),
        "/evil.tar.gz": _tar_gz({"bottle/train/good/000.png": b"png", "../evil.txt": b"evil"}),
        "/absolute.tar.gz": _tar_gz({"/tmp/inspector-absolute-evil.txt": b"evil"}),
        "/notes.tar.gz": _tar_gz({"readme.txt": b"no category here"}),
        "/page.html": b"<!DOCTYPE html><html><body>link expired</body></html>",
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_url_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV, raising=False)


def test_download_verifies_and_unpacks(server, tmp_path: Path) -> None:
    base, files = server
    digest = hashlib.sha256(files["/bottle.tar.gz"]).hexdigest()
    path = download_category("bottle", tmp_path, url=f"{base}/bottle.tar.gz", sha256=digest, progress=False)
    assert path == tmp_path / "bottle"
    ds = Dataset(tmp_path, "bottle")
    assert len(ds.train()) == 3
    assert len(ds.test()) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["bottle"]  # no temp files or folders left


def test_zip_archive_and_url_template_from_env(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = server
    monkeypatch.setenv(URL_ENV, f"{base}/{{category}}.zip")
    assert resolve_url("bottle") == f"{base}/bottle.zip"
    path = download_category("bottle", tmp_path, progress=False)
    assert len(Dataset(tmp_path, "bottle").train()) == 3
    assert path == tmp_path / "bottle"
    assert [p.name for p in tmp_path.iterdir()] == ["bottle"]


def test_wrong_checksum_leaves_nothing(server, tmp_path: Path) -> None:
    base, files = server
    with pytest.raises(ChecksumError, match="checksum mismatch") as err:
        download_category("bottle", tmp_path, url=f"{base}/bottle.tar.gz", sha256="0" * 64, progress=False)
    assert "0" * 64 in str(err.value)
    assert hashlib.sha256(files["/bottle.tar.gz"]).hexdigest() in str(err.value)
    assert isinstance(err.value, DownloadError)
    assert isinstance(err.value, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def test_missing_archive_and_path_traversal_are_refused(server, tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match="could not download") as err:
        download_category("bottle", tmp_path, url=f"{base}/nope.tar.gz", progress=False)
    assert f"{base}/nope.tar.gz" in str(err.value)
    assert "mvtec.com" in str(err.value)
    assert "404" in str(err.value)
    with pytest.raises(UnsafeArchiveError, match="outside"):
        download_category("bottle", tmp_path, url=f"{base}/evil.tar.gz", progress=False)
    with pytest.raises(UnsafeArchiveError, match="absolute"):
        download_category("bottle", tmp_path, url=f"{base}/absolute.tar.gz", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert not (tmp_path.parent / "evil.txt").exists()
    assert not Path("/tmp/inspector-absolute-evil.txt").exists()


def test_unreachable_server_and_bad_archives_give_download_errors(server, tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(DownloadError, match=r"could not download http://127\.0\.0\.1:9/"):
        download_category("bottle", tmp_path, url="http://127.0.0.1:9/bottle.tar.xz", progress=False)
    with pytest.raises(DownloadError, match="web page"):
        download_category("bottle", tmp_path, url=f"{base}/page.html", progress=False)
    with pytest.raises(DownloadError, match="does not contain"):
        download_category("bottle", tmp_path, url=f"{base}/notes.tar.gz", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_category_is_not_overwritten(server, tmp_path: Path) -> None:
    base, _ = server
    (tmp_path / "bottle").mkdir()
    (tmp_path / "bottle" / "mine.txt").write_text("keep")
    path = download_category("bottle", tmp_path, url=f"{base}/bottle.tar.gz", progress=False)
    assert path == tmp_path / "bottle"
    assert [p.name for p in (tmp_path / "bottle").iterdir()] == ["mine.txt"]
    assert (tmp_path / "bottle" / "mine.txt").read_text() == "keep"


def test_unknown_category_without_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="not an MVTec AD category"):
        download_category("bolts", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_official_urls_cover_all_categories() -> None:
    assert len(MVTEC_CATEGORIES) == 15
    assert set(MVTEC_URLS) == set(MVTEC_CATEGORIES)
    for category, url in MVTEC_URLS.items():
        assert url.startswith("https://www.mydrive.ch/shares/")
        assert url.endswith(f"/{category}.tar.xz")
    assert resolve_url("wood", "https://mirror.example/{category}.tar.xz") == "https://mirror.example/wood.tar.xz"
