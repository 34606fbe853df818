"""Run directories and atomic artifact writing.

A run directory holds one sub-directory per stage (``frequency/``, ``vocab/``, ``stage1/`` ...).
Each holds the stage's resolved ``config.json`` (with git commit and package versions) and what the
stage produced. Later stages read those files, never kernel state.

Everything is written atomically: to a temporary name in the same directory, then ``os.replace``.
A crash therefore leaves either the old file or the new one, never half of one. A stage marks
itself complete with ``COMPLETE.json`` only after all its artifacts exist, so a reader (or the
pipeline's resume logic) can tell a finished stage from an interrupted one.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent

_VERSIONED = ("torch", "transformers", "accelerate", "tokenizers", "datasets", "papermill", "numpy", "pandas")


class ArtifactError(RuntimeError):
    """An artifact a stage needs is missing, incomplete or inconsistent."""


def git_commit(path: Path | str = REPO_ROOT) -> str | None:
    """The commit of the checkout that holds ``path`` (with ``+dirty`` when there are changes)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def provenance() -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def atomic_path(path: Path | str, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    Works for files and (``is_dir=True``) for directories such as a ``save_pretrained`` folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp if is_dir else tmp / path.name
    try:
        yield target
        if is_dir:
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        else:
            os.replace(target, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def read_json(path: Path | str, what: str | None = None) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{what or 'artifact'} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); delete it and rerun the stage that wrote it") from e


def stage_dir(run_dir: Path | str, stage: str, create: bool = True) -> Path:
    d = Path(run_dir) / stage
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def mark_complete(directory: Path | str, artifacts: list[str] | None = None, **extra: Any) -> Path:
    """Declare a stage directory finished; checks that the listed artifacts exist first."""
    directory = Path(directory)
    missing = [a for a in (artifacts or []) if not (directory / a).exists()]
    if missing:
        raise ArtifactError(f"cannot mark {directory} complete: missing {missing}")
    return atomic_write_json(directory / "COMPLETE.json", {"artifacts": artifacts or [], **provenance(), **extra})


def is_complete(directory: Path | str) -> bool:
    return (Path(directory) / "COMPLETE.json").exists()


def require_complete(directory: Path | str, produced_by: str) -> Path:
    """Fail clearly when a later stage needs an earlier one that has not finished."""
    directory = Path(directory)
    if not is_complete(directory):
        state = "is incomplete (interrupted?)" if directory.exists() else "does not exist"
        raise ArtifactError(f"{directory} {state}: run {produced_by} first (glmd run --only {produced_by[:2]})")
    return directory
