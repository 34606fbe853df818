"""Download the official SuperGLUE archives (for machines with internet access).

Each task is one zip at ``https://dl.fbaipublicfiles.com/glue/superglue/data/v2/<TASK>.zip`` holding
``<TASK>/{train,val,test}.jsonl`` (diagnostics: ``AX-b/AX-b.jsonl``). A task is fetched into a
temporary file beside the destination, checked (the archive's sha256 when one is given, and every
extracted file whose official sha256 is known, see ``shared/data/superglue/SOURCES.md``), and only
then moved into ``<dest>/<TASK>/`` in one rename. A failed download or checksum leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable

from glmd_lib.artifacts import atomic_path
from glmd_lib.superglue.data import TASKS

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/glue/superglue/data/v2/{task}.zip"

# sha256 of the official files (SOURCES.md); files not listed are not checked
FILE_SHA256 = {
    "AX-b/AX-b.jsonl": "c5fe470f2b1317886b5af5cd1e29ebf66ebc5dff3c76159e17c42dd1a5d93397",
    "AX-g/AX-g.jsonl": "39c7ed0b064327c1143c195145befdd748fda674162304ab3f5dd92d3b87368d",
    "BoolQ/test.jsonl": "7e898b2585500df403d3551542b26134d71a1630944d97660fa7ca872527dcfe",
    "BoolQ/val.jsonl": "0c86a5045886e5795fe9052003873f7d94b88ed3028a33007c51d99e44fd66d9",
    "CB/test.jsonl": "860679c4ef6f56758f5530bfbcbf2fd7905667184144f3594ace9bb4c435618d",
    "CB/train.jsonl": "32017480d3a10508646e3efd64502c639f13d4d15077f278d2fd0992c33a3126",
    "CB/val.jsonl": "c6125587e9601560cb16ea223c33964c5a915568d2af68a81f651b6ef25395ec",
    "COPA/test.jsonl": "7c7cd9fb3aa90bb56e0c683b6e556f6640d75388159fd6b551aa87e8a04c667e",
    "COPA/train.jsonl": "e74ed25f36119fff954d90900ebbaae277e2cc4864be4b961e7a46c8f67d11a9",
    "COPA/val.jsonl": "fa61467cc251010178ed72f8ca82a0fceefc4ca9a85f87ec3b6102955e1a1f1a",
    "MultiRC/test.jsonl": "1dc6da4f23250d50f600379aaa59618039ad09faba3566af6d17d85e4e68ecfa",
    "MultiRC/train.jsonl": "bb73d0838618f8269190a2533fead3140607558975ea0df6511fa534e8d3535c",
    "MultiRC/val.jsonl": "d2b480195b15574ac00d52c4479f630bc161a7ab2de77e970fd00652846953ee",
    "RTE/test.jsonl": "fb4025a8b072862f0323423dff1de8980a024bfb8775e09c80ff3cf1c77677b1",
    "RTE/train.jsonl": "fdfb03443abe3ec0424b7fc5d1a8863361719bc061338b7a63e56b94d615f201",
    "RTE/val.jsonl": "ab990507bf5f35dc176cba7770a72bfa2c50a88ed72b8cc95cfbf9db95ab1af1",
    "WSC/test.jsonl": "e278b00238f9f01764f39a934a6515379016c908b2191ff9174bd74296f28310",
    "WSC/train.jsonl": "0ffaa3fd8d21e58a0805962565d1619aa4819bc3d034255777f606f801ae5a42",
    "WSC/val.jsonl": "e5c685ea4bdc347354036a28176459f6feeb0b6870375ecfb3d6ddb1f0e28bef",
    "WiC/test.jsonl": "fe8fc664243b942d2bc025993ff16ef9c94611c5235bc50d6ed16ff645cc2703",
    "WiC/train.jsonl": "ce301970aaf361ade6c1d218fe15c50b185b14a4bcb618c5785a8484a46f9943",
    "WiC/val.jsonl": "9f7207c88beba42cbc139de4c62ce05b23bffc189b3d561594b160e0c3920c0b",
    "ReCoRD/train.jsonl": "be40993957aa752d2a355c76fba5b66bae9455a7522158a3b2e1a0f7e6f21b11",
    "ReCoRD/val.jsonl": "ed228700e8ffc6a5af3209a7faf334c4ea61d4f07e79806b693504e6a7dbafb2",
    "ReCoRD/test.jsonl": "3847abdf4b4f2f37ed18592c8ebf3b36d0295ef5b1b448b2a23b6eaf45386b48",
}


class DownloadError(RuntimeError):
    """A download failed or its content is not what was expected."""


class ChecksumError(DownloadError):
    """A downloaded archive or file does not have the expected sha256."""


def sha256_of(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, timeout: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as out:
            shutil.copyfileobj(r, out, 1 << 20)
    except OSError as e:  # URLError, HTTPError and timeouts are OSErrors
        raise DownloadError(f"could not download {url}: {e}. No internet here? Download the zip elsewhere, unzip "
                            f"it into the data folder and pass superglue_dir / set GLMD_DATA.") from e


def _safe_extract(zf: zipfile.ZipFile, target: Path) -> None:
    for member in zf.namelist():
        p = Path(member)
        if p.is_absolute() or ".." in p.parts:
            raise DownloadError(f"refusing archive member with an unsafe path: {member!r}")
    zf.extractall(target)


def download_task(task: str, dest: Path | str, url: str | None = None, sha256: str | None = None,
                  file_sha256: dict[str, str] | None = None, timeout: float = 60.0,
                  overwrite: bool = False) -> Path:
    """Download and unpack one task into ``<dest>/<task>/``; returns that folder."""
    if task not in TASKS:
        raise ValueError(f"unknown SuperGLUE task {task!r}; known: {list(TASKS)}")
    dest = Path(dest)
    final = dest / task
    if final.exists() and not overwrite:
        return final
    url = url or OFFICIAL_URL.format(task=task)
    checks = FILE_SHA256 if file_sha256 is None else file_sha256
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{task}.", dir=dest) as tmp:
        tmp = Path(tmp)
        archive = tmp / f"{task}.zip"
        _fetch(url, archive, timeout)
        if sha256 is not None and (got := sha256_of(archive)) != sha256.lower():
            raise ChecksumError(f"{url}: sha256 {got} does not match the expected {sha256}")
        try:
            with zipfile.ZipFile(archive) as zf:
                _safe_extract(zf, tmp / "x")
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{url} is not a zip archive ({e})") from e
        found = [p for p in (tmp / "x").rglob("*") if p.is_dir() and p.name == task]
        if not found:
            raise DownloadError(f"{url} has no folder {task}/ inside")
        src = found[0]
        for f in sorted(src.glob("*.jsonl")):
            key = f"{task}/{f.name}"
            if key in checks and (got := sha256_of(f)) != checks[key]:
                raise ChecksumError(f"{url}: {key} has sha256 {got}, expected {checks[key]}")
        with atomic_path(final, is_dir=True) as out:
            out.rmdir()
            shutil.move(str(src), str(out))
    return final


def download_superglue(dest: Path | str | None = None, tasks: Iterable[str] = TASKS, base_url: str = OFFICIAL_URL,
                       sha256: dict[str, str] | None = None, file_sha256: dict[str, str] | None = None,
                       timeout: float = 60.0, overwrite: bool = False) -> list[Path]:
    """Download ``tasks`` (default all ten) into ``dest`` (default: the resolved SuperGLUE folder).

    ``base_url`` has a ``{task}`` placeholder; ``sha256`` maps task -> expected archive checksum;
    ``file_sha256`` overrides the per-file table (``{}`` disables the file checks). Tasks already present
    are kept unless ``overwrite``.
    """
    from glmd_lib.data.paths import resolve_superglue_dir

    dest = Path(dest) if dest is not None else resolve_superglue_dir(None)
    return [download_task(t, dest, base_url.format(task=t), (sha256 or {}).get(t), file_sha256, timeout, overwrite)
            for t in tasks]
