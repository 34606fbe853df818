"""Run directories and atomic artifact writing.

A run directory holds one sub-directory per stage (``frequency/``, ``vocab/``, ``stage1/`` ...).
Each holds the stage's resolved ``config.json`` (with git commit and package versions) and what the
stage produced. Later stages read those files, never kernel state.

Everything is written atomically: to a temporary name in the same directory, then ``os.replace``.
A crash therefore leaves either the old file or the new one, never half of one. A stage marks
itself complete with ``COMPLETE.json`` only after all its artifacts exist, so a reader (or the
pipeline's resume logic) can tell a finished stage from an interrupted one.

Integrity: a stage begins with :func:`begin_stage` (marker withdrawn, then the new ``config.json``), so a
failed rerun never leaves an old marker beside new settings. The marker itself records a digest of
``config.json`` and of every listed artifact; :func:`require_complete` refuses a stage whose files changed
after it finished, naming what changed and the notebook to rerun. JSON is written strictly (no ``NaN``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

from glmd_lib.runlock import check_free

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


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _finite(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """Strict JSON: a NaN or infinite number (the loss of a diverged run, a score over no examples) is
    written as ``null``; Python's ``NaN`` / ``Infinity`` tokens are not JSON and other tools reject them."""
    text = json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(path: Path | str, table, index: bool = False) -> Path:
    """A pandas table as CSV, atomically (a reader never sees half a table)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=index)
    return Path(path)


def save_figure(fig, directory: Path | str, name: str) -> Path:
    """Save a matplotlib figure as ``<directory>/<name>.png`` (atomically); the report collects these."""
    path = Path(directory) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


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
    each task of its config. ``COMPLETE.json`` lists them once they all exist. ``needs``: the earlier stages
    whose results it is made from; a rerun of one of them makes this stage's results stale.
    """

    stage: str
    notebook: str
    files: tuple[str, ...]
    per_task: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()

    def path(self, run_dir: Path | str, name: str, task: str | None = None) -> Path:
        """``<run_dir>/<stage>/[<task>/]<name>``; the name must be one this stage declares."""
        declared = self.per_task if task is not None else self.files
        if name not in declared:
            kind = "per-task artifact" if task is not None else "artifact"
            raise ArtifactError(f"stage {self.stage!r} declares no {kind} {name!r} (declared: {list(declared)})")
        base = Path(run_dir) / self.stage
        return (base / task / name) if task is not None else base / name

    def task_paths(self, run_dir: Path | str, name: str) -> dict[str, Path]:
        """``{task: path}`` of a per-task artifact, for every task whose directory holds it (the tasks of a run
        are the directories its stage wrote; a reader need not know the config that chose them)."""
        self.path(run_dir, name, task="")  # refuses an undeclared name
        return {p.parent.name: p for p in sorted((Path(run_dir) / self.stage).glob(f"*/{name}"))}

    def figures(self, run_dir: Path | str) -> list[Path]:
        """The PNG plots saved (:func:`save_figure`) in the stage directory and its task directories."""
        base = Path(run_dir) / self.stage
        return sorted(base.glob("*.png")) + sorted(base.glob("*/*.png"))

    def require(self, run_dir: Path | str) -> Path:
        """The stage directory, after checking that the stage finished (see :func:`require_complete`)."""
        return require_complete(Path(run_dir) / self.stage, self.notebook)


STAGES: dict[str, StageArtifacts] = {s.stage: s for s in (
    StageArtifacts("overview", "00_overview", ("config.json", "summary.json", "next_tokens.csv")),
    StageArtifacts("frequency", "01_word_frequency", ("config.json", "counts.csv", "task_counts.csv",
                                                      "summary.json")),
    StageArtifacts("vocab", "02_vocab_pruning", ("config.json", "vocab_map.json", "summary.json", "sizes.csv",
                                                 "substitutes.csv"), needs=("frequency",)),
    StageArtifacts("stage1", "03_stage1_distillation", ("config.json", "student", "history.csv", "metrics.json"),
                   needs=("vocab",)),
    StageArtifacts("teachers", "04_teacher_finetune", ("config.json", "summary.json"), ("model", "metrics.json")),
    StageArtifacts("stage2", "05_stage2_distillation", ("config.json", "summary.json"),
                   ("student", "history.csv", "metrics.json"), needs=("stage1", "teachers")),
    StageArtifacts("eval", "06_superglue_eval", ("config.json", "results.csv", "summary.json", "predictions.jsonl",
                                                 "differences.csv", "fidelity.csv"),
                   needs=("teachers", "stage2")),
    StageArtifacts("report", "07_method_comparison", ("config.json", "report.md"), needs=("eval",)),
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


# --------------------------------------------------------------------------------------------
# completion markers: a stage is complete when its marker exists AND its files are still those it finished with
# --------------------------------------------------------------------------------------------

MARKER = "COMPLETE.json"
_HASH_LIMIT = 8 * 2**20  # files up to this size are identified by content; larger ones (weights) by size


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> Any:
    """What identifies one artifact: a small file's content digest, a large file's size (hashing gigabytes
    of weights on every check would cost seconds), a folder's files with theirs. Hidden entries (temporaries
    of atomic writes, work folders) do not count. Content, not modification times: a copied run stays valid."""
    if path.is_dir():
        return {str(p.relative_to(path)): _stamp(p) for p in sorted(path.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}
    size = path.stat().st_size
    return _sha256(path) if size <= _HASH_LIMIT else size


def _settings(config_path: Path) -> dict[str, Any]:
    try:
        return json.loads(config_path.read_text(encoding="utf-8")).get("config", {})
    except (OSError, ValueError, AttributeError):
        return {}


def mark_complete(directory: Path | str, artifacts: list[str] | None = None, **extra: Any) -> Path:
    """Declare a stage directory finished; checks that the listed artifacts exist first.

    The marker records what the stage finished with: a digest of ``config.json`` with its settings (to name
    what changed later), a stamp (:func:`_stamp`) of every listed artifact, and the digest of the marker of
    each earlier stage it is made from (``StageArtifacts.needs``) that is there."""
    directory = Path(directory)
    artifacts = list(artifacts or [])
    missing = [a for a in artifacts if not (directory / a).exists()]
    if missing:
        raise ArtifactError(f"cannot mark {directory} complete: missing {missing}")
    record: dict[str, Any] = {"artifacts": artifacts,
                              "stamps": {a: _stamp(directory / a) for a in artifacts if a != "config.json"}}
    config = directory / "config.json"
    if config.exists():
        record.update(config_sha256=_sha256(config), settings=_settings(config))
    needs = STAGES[directory.name].needs if directory.name in STAGES else ()
    record["inputs"] = {d: _sha256(m) for d in needs if (m := directory.parent / d / MARKER).exists()}
    record["nonce"] = os.urandom(8).hex()  # every completion is new: a rerun in the same second still counts
    return atomic_write_json(directory / MARKER, {**record, **provenance(), **extra})


def mark_incomplete(directory: Path | str) -> None:
    """Withdraw a stage's COMPLETE marker: the stage is being rerun and is not complete until it finishes."""
    (Path(directory) / MARKER).unlink(missing_ok=True)


def begin_stage(cfg: Any) -> Path:
    """The first call of every ``run_<stage>(cfg)`` (and of ``start()`` in a notebook): refuse a run directory
    another process is writing into, withdraw the stage's marker, then save the new ``config.json``.

    In this order a failure at any later point leaves the stage *incomplete*, never an old marker beside new
    settings or half-replaced results. ``cfg``: a :class:`~glmd_lib.config.base.StageConfig`."""
    check_free(cfg.run_dir)
    mark_incomplete(cfg.out_dir)
    cfg.save()
    return cfg.out_dir


def _config_change(directory: Path, marker: dict[str, Any]) -> str | None:
    """How ``config.json`` differs from the one the stage finished with (None: it does not)."""
    if "config_sha256" not in marker:  # a marker without a config (or from before digests): nothing to compare
        return None
    config = directory / "config.json"
    if not config.exists():
        return "lost its config.json after it finished"
    if _sha256(config) == marker["config_sha256"]:
        return None
    old, new = marker.get("settings", {}), _settings(config)
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return (f"has a config.json written after its results ({'; '.join(diff) or 'same settings, rewritten'}): "
            f"a rerun started and did not finish")


def stage_problem(directory: Path | str) -> str | None:
    """Why ``directory`` is not a complete, consistent stage (None when it is): no marker, or a config or
    artifact that changed after the marker was written."""
    directory = Path(directory)
    marker_path = directory / MARKER
    if not marker_path.exists():
        return "is incomplete (interrupted, failed or being rerun)" if directory.exists() else "does not exist"
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"has an unreadable {MARKER}"
    change = _config_change(directory, marker)
    if change:
        return change
    for name, stamp in marker.get("stamps", {}).items():
        path = directory / name
        if not path.exists():
            return f"lost {name} after it finished"
        if _stamp(path) != stamp:
            return f"has a {name} that changed after it finished"
    return _input_change(directory, marker)


def _input_change(directory: Path, marker: dict[str, Any]) -> str | None:
    """Whether an earlier stage this one was made from was rerun (or is itself stale) since."""
    for dep, digest in marker.get("inputs", {}).items():
        dep_marker = directory.parent / dep / MARKER
        if not dep_marker.exists() or _sha256(dep_marker) != digest:
            return (f"was made from {dep}/ results that were since withdrawn or replaced (a rerun of "
                    f"{STAGES[dep].notebook})")
        problem = stage_problem(directory.parent / dep)
        if problem:
            return f"was made from {dep}/, which {problem}"
    return None


def is_complete(directory: Path | str) -> bool:
    """Marked complete, and its config and artifacts are still those it finished with."""
    return stage_problem(directory) is None


def require_complete(directory: Path | str, produced_by: str) -> Path:
    """Fail clearly when a later stage needs an earlier one that has not finished, or whose results no
    longer match its config (a failed rerun): name the stage, what differs and the notebook to rerun."""
    directory = Path(directory)
    problem = stage_problem(directory)
    if problem is None:
        return directory
    rerun = f"glmd run --only {produced_by[:2]}"
    if not (directory / MARKER).exists() or problem == f"has an unreadable {MARKER}":
        raise ArtifactError(f"stage {directory.name!r}: {directory} {problem}: run {produced_by} first ({rerun})")
    raise ArtifactError(f"stage {directory.name!r} is stale: {directory} {problem}; its results cannot be used. "
                        f"Rerun {produced_by} ({rerun})")
