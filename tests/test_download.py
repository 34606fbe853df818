"""The archive downloader against a local HTTP server on 127.0.0.1 serving a zip built here."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest

from glmd_lib.superglue.data import read_split
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.download import ChecksumError, DownloadError, download_superglue


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/www`` on 127.0.0.1 (a free port) in a thread; yields (www dir, base url)."""
    www = tmp_path / "www"
    www.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _zip_task(src_root, task, zip_path):
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted((src_root / task).iterdir()):
            zf.write(f, f"{task}/{f.name}")
    return hashlib.sha256(zip_path.read_bytes()).hexdigest()


def test_download_with_matching_checksum(tmp_path, server):
    www, base = server
    toy = write_toy_dataset(tmp_path / "toy", n=3, tasks=["CB", "AX-b"])
    sums = {t: _zip_task(toy, t, www / f"{t}.zip") for t in ("CB", "AX-b")}
    dest = tmp_path / "data"
    # toy files are not the official bytes: only the archive checksum is checked here
    out = download_superglue(dest, tasks=["CB", "AX-b"], base_url=base + "/{task}.zip", sha256=sums,
                             file_sha256={})
    assert out == [dest / "CB", dest / "AX-b"]
    assert len(read_split("CB", "val", dest)) == 3 and len(read_split("AX-b", "test", dest)) == 3
    assert sorted(p.name for p in dest.iterdir()) == ["AX-b", "CB"]  # no temporary leftovers


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, server):
    www, base = server
    toy = write_toy_dataset(tmp_path / "toy", n=3, tasks=["CB"])
    _zip_task(toy, "CB", www / "CB.zip")
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError, match="does not match"):
        download_superglue(dest, tasks=["CB"], base_url=base + "/{task}.zip", sha256={"CB": "0" * 64},
                           file_sha256={})
    assert list(dest.iterdir()) == []


def test_file_checksum_of_the_official_table_is_enforced(tmp_path, server):
    www, base = server
    toy = write_toy_dataset(tmp_path / "toy", n=3, tasks=["RTE"])  # not the official RTE bytes
    _zip_task(toy, "RTE", www / "RTE.zip")
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError, match="RTE/test.jsonl has sha256"):
        download_superglue(dest, tasks=["RTE"], base_url=base + "/{task}.zip")
    assert list(dest.iterdir()) == []
    download_superglue(dest, tasks=["RTE"], base_url=base + "/{task}.zip", file_sha256={})
    assert len(read_split("RTE", "train", dest)) == 3


def test_missing_archive_is_a_clear_error(tmp_path, server):
    _, base = server
    with pytest.raises(DownloadError, match="could not download .*WiC.zip"):
        download_superglue(tmp_path / "data", tasks=["WiC"], base_url=base + "/{task}.zip")
    assert list((tmp_path / "data").iterdir()) == []
