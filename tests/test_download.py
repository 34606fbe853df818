"""The archive downloader against a local HTTP server on 127.0.0.1 serving a zip built here."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import threading
import zipfile

import pytest

from glmd_lib.superglue.data import TASKS, read_split
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.download import (ARCHIVE_SHA256, ChecksumError, DownloadError, download_superglue,
                                         download_task)


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
    sums = {"RTE": hashlib.sha256((www / "RTE.zip").read_bytes()).hexdigest()}
    with pytest.raises(ChecksumError, match="RTE/test.jsonl has sha256"):
        download_superglue(dest, tasks=["RTE"], base_url=base + "/{task}.zip", sha256=sums)
    assert list(dest.iterdir()) == []
    download_superglue(dest, tasks=["RTE"], base_url=base + "/{task}.zip", sha256=sums, file_sha256={})
    assert len(read_split("RTE", "train", dest)) == 3


def test_missing_archive_is_a_clear_error(tmp_path, server):
    _, base = server
    with pytest.raises(DownloadError, match="could not download .*WiC.zip"):
        download_superglue(tmp_path / "data", tasks=["WiC"], base_url=base + "/{task}.zip")
    assert list((tmp_path / "data").iterdir()) == []


def _zip_members(zip_path, members):
    """A zip holding ``members`` ({name: text}) under their names exactly as given (no normalisation)."""
    with zipfile.ZipFile(zip_path, "w") as zf:
        for name, text in members.items():
            zf.writestr(zipfile.ZipInfo(name), text)
    assert zipfile.ZipFile(zip_path).namelist() == list(members)
    return hashlib.sha256(zip_path.read_bytes()).hexdigest()


def test_every_task_has_an_official_archive_checksum():
    assert set(ARCHIVE_SHA256) == set(TASKS)
    for size, sha in ARCHIVE_SHA256.values():
        assert size > 0 and len(sha) == 64 and int(sha, 16) >= 0


def test_archive_checksum_is_checked_by_default(tmp_path, server):
    """Without ``sha256=`` the archive must be the official one: a toy zip at the official name is refused."""
    www, base = server
    toy = write_toy_dataset(tmp_path / "toy", n=3, tasks=["CB"])
    _zip_task(toy, "CB", www / "CB.zip")
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError, match=r"the official CB archive has 75482.*sha256=\{'CB'"):
        download_superglue(dest, tasks=["CB"], base_url=base + "/{task}.zip", file_sha256={})
    assert list(dest.iterdir()) == []


def test_files_missing_from_the_archive_are_detected(tmp_path, server):
    www, base = server
    line = json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0})
    sums = {"CB": _zip_members(www / "CB.zip", {"CB/train.jsonl": line, "CB/val.jsonl": line})}
    sums["AX-b"] = _zip_members(www / "AX-b.zip", {"AX-b/README.txt": "no data here"})
    dest = tmp_path / "data"
    for task, missing in (("CB", "test.jsonl is missing"), ("AX-b", "AX-b.jsonl is missing")):
        with pytest.raises(DownloadError, match=f"incomplete or damaged \\({missing}\\)"):
            download_task(task, dest, f"{base}/{task}.zip", sha256=sums[task], file_sha256={})
    assert list(dest.iterdir()) == []


def test_an_existing_task_folder_is_verified_not_trusted(tmp_path, server):
    www, base = server
    dest = tmp_path / "data"
    toy = write_toy_dataset(dest, n=3, tasks=["CB", "WSC"])
    assert download_task("CB", dest, f"{base}/CB.zip") == dest / "CB"  # complete: kept, nothing fetched
    (toy / "WSC" / "val.jsonl").unlink()
    (toy / "WSC" / "test.jsonl").write_text("\n\n<html>502 Bad Gateway</html>\n")
    with pytest.raises(DownloadError, match=r"WSC exists but is not a complete WSC folder \(val.jsonl is missing; "
                                            r"test.jsonl does not start with a JSON object\); pass overwrite=True"):
        download_superglue(dest, tasks=["WSC"], base_url=base + "/{task}.zip")
    fresh = write_toy_dataset(tmp_path / "fresh", n=4, tasks=["WSC"])
    sha = _zip_task(fresh, "WSC", www / "WSC.zip")
    download_task("WSC", dest, f"{base}/WSC.zip", sha256=sha, file_sha256={}, overwrite=True)
    assert len(read_split("WSC", "val", dest)) == 4


@pytest.mark.parametrize("bad", ["../evil.jsonl", "CB/../../evil.jsonl", "/tmp/glmd_zip_slip_evil.jsonl",
                                 "..\\evil.jsonl", "C:/evil.jsonl"])
def test_zip_slip_members_are_refused(tmp_path, server, bad):
    www, base = server
    line = json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0})
    members = {f"CB/{s}.jsonl": line for s in ("train", "val", "test")}
    sha = _zip_members(www / "CB.zip", {**members, bad: "pwned"})
    dest = tmp_path / "a" / "data"
    with pytest.raises(DownloadError, match="unsafe path"):
        download_task("CB", dest, f"{base}/CB.zip", sha256=sha, file_sha256={})
    assert list(dest.iterdir()) == []
    written = [p for p in tmp_path.rglob("*evil*")] + [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert written == [] and not (tmp_path.parent / "evil.jsonl").exists()
    assert not os.path.exists("/tmp/glmd_zip_slip_evil.jsonl")
