"""Download logic, offline: a zip built at test time served over file:// and http://127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from datamodules.download import Archive, DownloadError, download_and_extract


def _zip(tmp_path: Path) -> Path:
    z = tmp_path / "srv" / "ds.zip"
    z.parent.mkdir()
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("ds/a.txt", "1,2,3\n")
    return z


def test_file_url_extract_atomic(tmp_path: Path) -> None:
    z = _zip(tmp_path)
    archive = Archive(("file:///nonexistent/ds.zip", z.as_uri()), "ds.zip", "ds", size=z.stat().st_size)
    dest = download_and_extract(archive, tmp_path / "data" / "ds")
    assert (dest / "a.txt").read_text() == "1,2,3\n"
    assert not list((tmp_path / "data").glob(".ds.extract-*"))


def test_http_server_replaces_stale_partial(tmp_path: Path) -> None:
    z = _zip(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(z.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "dl").mkdir()
        (tmp_path / "dl" / "ds.zip.part").write_bytes(b"garbage")  # server ignores Range: restart from 0
        url = f"http://127.0.0.1:{server.server_port}/ds.zip"
        dest = download_and_extract(Archive((url,), "ds.zip", "ds"), tmp_path / "out", tmp_path / "dl")
        assert (dest / "a.txt").is_file()
    finally:
        server.shutdown()


def test_wrong_size_fails_with_hint_and_leaves_no_data(tmp_path: Path) -> None:
    z = _zip(tmp_path)
    with pytest.raises(DownloadError, match="Download it by hand") as e:
        download_and_extract(Archive((z.as_uri(),), "ds.zip", "ds", size=1), tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
