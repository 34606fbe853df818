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
from dataclasses import dataclass
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


# --------------------------------------------------------------------------------------------
# the artifact contract: which stage writes what (one place; the report and later stages read through it)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageArtifacts:
    """What one stage (one notebook) writes into ``<run_dir>/<stage>/``.

    ``files`` are written by every run of the stage; ``per_task`` are written into ``<stage>/<TASK>/`` for
    each task of its config. ``COMPLETE.json`` lists them once they all exist.
    """

    stage: str
    notebook: str
    files: tuple[str, ...]
    per_task: tuple[str, ...] = ()

    def path(self, run_dir: Path | str, name: str, task: str | None = None) -> Path:
        """``<run_dir>/<stage>/[<task>/]<name>``; the name must be one this stage declares."""
        declared = self.per_task if task is not None else self.files
        if name not in declared:
            raise ArtifactError(f"stage {self.stage!r} declares no {'per-task ' if task else ''}artifact {name!r} "
                                f"(declared: {list(declared)})")
        base = Path(run_dir) / self.stage
        return (base / task / name) if task is not None else base / name

    def require(self, run_dir: Path | str) -> Path:
        """The stage directory, after checking that the stage finished (see :func:`require_complete`)."""
        return require_complete(Path(run_dir) / self.stage, self.notebook)


STAGES: dict[str, StageArtifacts] = {s.stage: s for s in (
    StageArtifacts("overview", "00_overview", ("config.json", "summary.json", "next_tokens.csv")),
    StageArtifacts("frequency", "01_word_frequency", ("config.json", "counts.csv", "task_counts.csv",
                                                      "summary.json")),
    StageArtifacts("vocab", "02_vocab_pruning", ("config.json", "vocab_map.json", "summary.json", "sizes.csv",
                                                 "substitutes.csv")),
    StageArtifacts("stage1", "03_stage1_distillation", ("config.json", "student", "history.csv", "metrics.json")),
    StageArtifacts("teachers", "04_teacher_finetune", ("config.json", "summary.json"), ("model", "metrics.json")),
    StageArtifacts("stage2", "05_stage2_distillation", ("config.json", "summary.json"),
                   ("student", "history.csv", "metrics.json")),
    StageArtifacts("eval", "06_superglue_eval", ("config.json", "results.csv", "summary.json")),
    StageArtifacts("report", "07_method_comparison", ("config.json", "report.md")),
)}


def artifact(run_dir: Path | str, stage: str, name: str, task: str | None = None) -> Path:
    """The path of a declared artifact: ``artifact(run_dir, "vocab", "summary.json")``."""
    if stage not in STAGES:
        raise ArtifactError(f"unknown stage {stage!r}; stages: {list(STAGES)}")
    return STAGES[stage].path(run_dir, name, task)


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
