"""Download the official SuperGLUE archives (for machines with internet access).

Each task is one zip at ``https://dl.fbaipublicfiles.com/glue/superglue/data/v2/<TASK>.zip`` holding
``<TASK>/{train,val,test}.jsonl`` (diagnostics: ``AX-b/AX-b.jsonl``). A task is fetched into a
temporary folder beside the destination and checked before anything is kept:

* the archive's size and sha256 against :data:`ARCHIVE_SHA256` (always: every task's official
  checksum is known; a different value, e.g. for a re-issued archive you checked yourself, can be
  passed with ``sha256=``, but there is no unchecked download);
* no member may leave the extraction folder (absolute paths and ``..`` are refused: zip-slip);
* every expected file of the task (:func:`expected_files`) must be in the archive, non-empty, with a
  JSON object on its first line;
* every extracted file whose official sha256 is known (:data:`FILE_SHA256`) must match it.

Only then is the task moved into ``<dest>/<TASK>/`` in one rename; a failed download or check leaves
nothing behind. A task folder that already exists is checked the same way (files present, first line
parseable) instead of being trusted; a broken one is an error that says to pass ``overwrite=True``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

from glmd_lib.artifacts import atomic_path
from glmd_lib.data.paths import resolve_superglue_dir
from glmd_lib.superglue.data import TASKS, task_path, task_splits

OFFICIAL_URL = "https://dl.fbaipublicfiles.com/glue/superglue/data/v2/{task}.zip"

# (size in bytes, sha256) of the official v2 archives. SOURCES.md records only the extracted files, so
# these come from the download_checksums that Hugging Face's loader verified on every download:
# huggingface/datasets, datasets/super_glue/dataset_infos.json (commit 040102f100964a33fd334e2695f1c493fa6b92db).
# BoolQ's value is also pinned, with the same size, by three unrelated projects that fetch that URL.
ARCHIVE_SHA256: dict[str, tuple[int, str]] = {
    "BoolQ": (4118001, "853fbe7922f70c59629f06a39e8d9ca440c3d740e760fd3b87a5ddf3dcba2436"),
    "CB": (75482, "8d641383298d54554066ba1c93f56ae7410af75df621b90c63028806bbbbb535"),
    "COPA": (43986, "405906cddac74bc1e1ce8220f1107d1025b66a25ef10149d91b10bb30651125f"),
    "MultiRC": (1116225, "b3cd440856e72eb166b2edcd37b798455f1ebd51f2c3de64c0c2a4e1971d2737"),
    "ReCoRD": (51757880, "30c7b651ab21b8bf8fab986495cd1084333010e040548f861b839eec0044ac18"),
    "RTE": (750920, "6310aab3f000424c9d0318a1ff20692e07c7f4aa15e8f17a5972ea0a35c398b9"),
    "WiC": (396213, "ee7e67f4ae9eafbf533780faa198e62167f3cda54256cdf261877be3c0e90900"),
    "WSC": (32751, "2ed6dfa94556b4a128ff0441efe365b2e883124e7e6aa00fb8d3a6cb1fd520a9"),
    "AX-b": (33950, "43b45c55a273575c58a33cd68f10a971f83daa3aa223bfbc4077b92fbdf960b3"),
    "AX-g": (10413, "2d4e00d3a7d23d2c3787ee4c1382cc81a72cb05a76fc9d78d142949247ed61b9"),
}

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


def expected_files(task: str) -> list[str]:
    """The file names the official archive of ``task`` holds inside ``<task>/``."""
    return [task_path(task, split, ".").name for split in task_splits(task)]


def task_dir_problems(folder: Path, task: str) -> list[str]:
    """What is wrong with a task folder: missing or empty expected files, a first line that is not a
    JSON object. An empty list means the folder looks complete (contents are checked by the readers)."""
    problems = []
    for name in expected_files(task):
        f = folder / name
        if not f.is_file():
            problems.append(f"{name} is missing")
            continue
        with open(f, "rb") as fh:
            first = next((line for line in fh if line.strip()), b"")
        if not first:
            problems.append(f"{name} is empty")
            continue
        try:
            ok = isinstance(json.loads(first.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            problems.append(f"{name} does not start with a JSON object")
    return problems


def _check_archive(archive: Path, task: str, url: str, sha256: str | None) -> None:
    """Size (official archives only) and sha256 of the downloaded archive."""
    size, expected = ARCHIVE_SHA256[task] if sha256 is None else (None, sha256.lower())
    if size is not None and (got_size := archive.stat().st_size) != size:
        raise ChecksumError(f"{url}: {got_size} bytes, the official {task} archive has {size} (download cut "
                            f"short, or a different file); nothing was kept. Retry; if the archive was re-issued "
                            f"upstream, check it yourself and pass sha256={{{task!r}: '<its sha256>'}}")
    if (got := sha256_of(archive)) != expected:
        raise ChecksumError(f"{url}: sha256 {got} does not match the expected {expected}; nothing was kept. "
                            f"Retry; if the archive was re-issued upstream, check it yourself and pass "
                            f"sha256={{{task!r}: '<its sha256>'}}")


def _task_folder(root: Path, task: str, url: str) -> Path:
    """The extracted ``<task>/`` folder (the shallowest one; macOS ``__MACOSX`` copies are ignored)."""
    found = sorted((p for p in root.rglob(task) if p.is_dir() and "__MACOSX" not in p.parts),
                   key=lambda p: len(p.parts))
    if not found:
        raise DownloadError(f"{url} has no folder {task}/ inside; expected {task}/{expected_files(task)}")
    return found[0]


def _safe_extract(zf: zipfile.ZipFile, target: Path) -> None:
    """Extract ``zf`` into ``target`` after refusing any member that could land outside it (zip-slip):
    absolute paths, drive letters and ``..`` components, with ``\\`` read as a separator as on Windows."""
    for member in zf.namelist():
        parts = PurePosixPath(member.replace("\\", "/")).parts
        if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DownloadError(f"refusing archive member with an unsafe path: {member!r}; nothing was kept")
    zf.extractall(target)


def download_task(task: str, dest: Path | str, url: str | None = None, sha256: str | None = None,
                  file_sha256: dict[str, str] | None = None, timeout: float = 60.0,
                  overwrite: bool = False) -> Path:
    """Download, check and unpack one task into ``<dest>/<task>/``; returns that folder.

    ``sha256`` replaces the official archive checksum of :data:`ARCHIVE_SHA256` (for a mirror serving
    other bytes); the archive is always checked against one of the two. ``file_sha256`` replaces the
    per-file table (``{}``: no per-file checks). An existing ``<dest>/<task>/`` is kept unless
    ``overwrite``, but only if :func:`task_dir_problems` finds nothing wrong with it.
    """
    if task not in TASKS:
        raise ValueError(f"unknown SuperGLUE task {task!r}; known: {list(TASKS)}")
    dest = Path(dest)
    final = dest / task
    if final.exists() and not overwrite:
        if problems := task_dir_problems(final, task):
            raise DownloadError(f"{final} exists but is not a complete {task} folder ({'; '.join(problems)}); "
                                f"pass overwrite=True to download it again, or delete the folder")
        return final
    url = url or OFFICIAL_URL.format(task=task)
    checks = FILE_SHA256 if file_sha256 is None else file_sha256
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{task}.", dir=dest) as tmp:
        tmp = Path(tmp)
        archive = tmp / f"{task}.zip"
        _fetch(url, archive, timeout)
        _check_archive(archive, task, url, sha256)
        try:
            with zipfile.ZipFile(archive) as zf:
                _safe_extract(zf, tmp / "x")
        except zipfile.BadZipFile as e:
            raise DownloadError(f"{url} is not a zip archive ({e})") from e
        src = _task_folder(tmp / "x", task, url)
        if problems := task_dir_problems(src, task):
            raise DownloadError(f"{url}: the archive is incomplete or damaged ({'; '.join(problems)}); "
                                f"nothing was kept")
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

    ``base_url`` has a ``{task}`` placeholder; ``sha256`` maps task -> archive checksum replacing the
    official one (tasks not in it are checked against :data:`ARCHIVE_SHA256`); ``file_sha256`` overrides
    the per-file table (``{}`` disables the file checks). Tasks already present are checked
    (:func:`task_dir_problems`) and kept unless ``overwrite``. See :func:`download_task`.
    """
    dest = Path(dest) if dest is not None else resolve_superglue_dir(None)
    return [download_task(t, dest, base_url.format(task=t), (sha256 or {}).get(t), file_sha256, timeout, overwrite)
            for t in tasks]
