"""Run the numbered notebooks in order with papermill: ``glmd run``.

* Parameters (``-p key=value``, ``-f params.yaml``) go to every notebook that declares them; a key that
  no notebook declares, or a value of the wrong type, fails before anything runs.
* Each executed notebook is saved as ``<run_dir>/notebooks/<name>.ipynb``.
* Resume: after a notebook succeeds, ``<run_dir>/pipeline/<name>.json`` records a fingerprint of what it
  ran with (parameters, resolved config, the notebook's cells). On a rerun a notebook is skipped when the
  fingerprint matches and its stage directory is marked complete; once one notebook runs again, every
  later one runs again too (its inputs changed).
* The first failure stops the pipeline with the notebook, the cell and the error.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from glmd_lib.config import stages as configs
from glmd_lib.config.base import PROFILES, ConfigError, StageConfig
from glmd_lib.artifacts import REPO_ROOT, atomic_write_json, is_complete

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class PipelineError(RuntimeError):
    pass


def config_classes() -> dict[str, type[StageConfig]]:
    """Notebook stem -> its config class."""
    out = {}
    for obj in vars(configs).values():
        if isinstance(obj, type) and issubclass(obj, StageConfig) and getattr(obj, "notebook", ""):
            out[obj.notebook] = obj
    return out


@dataclass
class NotebookStep:
    path: Path
    config: type[StageConfig] | None

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def number(self) -> str:
        return self.name.split("_", 1)[0]

    def declared(self) -> set[str]:
        if self.config is not None:
            return set(self.config.field_names())
        import papermill

        return set(papermill.inspect_notebook(str(self.path)))


def discover(notebook_dir: Path = NOTEBOOK_DIR) -> list[NotebookStep]:
    classes = config_classes()
    return [NotebookStep(p, classes.get(p.stem)) for p in sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))]


def parse_params(pairs: list[str] | None = None, files: list[str] | None = None) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML scalars/lists, as papermill's -y would) and YAML files."""
    params: dict[str, Any] = {}
    for f in files or []:
        path = Path(f)
        if not path.exists():
            raise ConfigError(f"parameter file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"parameter file {path} must hold a mapping of key: value")
        params.update(data)
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"parameter {pair!r} is not of the form key=value")
        key, raw = pair.split("=", 1)
        try:
            params[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            params[key.strip()] = raw
    return params


def select(steps: list[NotebookStep], only: list[str] | None) -> list[NotebookStep]:
    if not only:
        return steps
    chosen = []
    for key in only:
        match = [s for s in steps if s.number == key or s.name == key or s.name.startswith(key)]
        if not match:
            raise PipelineError(f"--only {key}: no notebook matches; have {[s.name for s in steps]}")
        chosen.extend(m for m in match if m not in chosen)
    return sorted(chosen, key=lambda s: s.name)


def validate(steps: list[NotebookStep], profile: str, run_dir: str, params: dict[str, Any]) -> dict[str, dict]:
    """Check every parameter against the notebooks before running any; return each notebook's parameters."""
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r} is not one of {list(PROFILES)}")
    for reserved in ("run_dir", "profile"):
        if reserved in params:
            raise ConfigError(f"pass {reserved} with --{reserved.replace('_', '-')}, not as a parameter")
    declared = {s.name: s.declared() for s in steps}
    unknown = sorted(k for k in params if not any(k in d for d in declared.values()))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}: no notebook among "
                          f"{[s.name for s in steps]} declares them")
    per_notebook = {}
    for s in steps:
        mine = {k: v for k, v in params.items() if k in declared[s.name]}
        if s.config is not None:
            s.config.resolve(profile=profile, run_dir=run_dir, **mine)  # raises ConfigError naming the key
        per_notebook[s.name] = {"run_dir": run_dir, "profile": profile, **mine}
    return per_notebook


def _fingerprint(step: NotebookStep, nb_params: dict) -> str:
    """What a notebook's result depends on: its parameters, the resolved config (so a changed profile
    default counts) and the notebook's own cells."""
    resolved = None
    if step.config is not None:
        resolved = step.config.resolve(**nb_params).to_dict()
    cells = [c.get("source") for c in json.loads(step.path.read_text(encoding="utf-8"))["cells"]]
    blob = json.dumps({"params": nb_params, "config": resolved, "cells": cells}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run(profile: str, run_dir: str | Path, only: list[str] | None = None, params: dict[str, Any] | None = None,
        force: bool = False, notebook_dir: Path = NOTEBOOK_DIR, log=print,
        cell_timeout: int | None = None) -> list[dict]:
    """Execute the selected notebooks in order; ``cell_timeout`` (seconds) bounds every cell (CI)."""
    import papermill

    run_dir = Path(run_dir).expanduser().resolve()
    steps = select(discover(notebook_dir), only)
    if not steps:
        raise PipelineError(f"no notebooks found in {notebook_dir}")
    per_notebook = validate(steps, profile, str(run_dir), dict(params or {}))
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    results, rerun_rest = [], False
    for s in steps:
        nb_params = per_notebook[s.name]
        record = run_dir / "pipeline" / f"{s.name}.json"
        out_nb = run_dir / "notebooks" / s.path.name
        stage_ok = s.config is None or is_complete(run_dir / s.config.stage)
        fingerprint = _fingerprint(s, nb_params)
        same = record.exists() and json.loads(record.read_text()).get("fingerprint") == fingerprint
        if not force and not rerun_rest and same and stage_ok and out_nb.exists():
            log(f"[{s.name}] complete, skipping (delete {record} or use --force to rerun)")
            results.append({"notebook": s.name, "status": "skipped"})
            continue
        rerun_rest = True
        log(f"[{s.name}] running ({profile} profile) -> {out_nb}")
        start = time.perf_counter()
        try:
            papermill.execute_notebook(str(s.path), str(out_nb), parameters=nb_params, cwd=str(s.path.parent),
                                       kernel_name="python3", progress_bar=False, log_output=False,
                                       execution_timeout=cell_timeout)
        except papermill.PapermillExecutionError as e:
            raise PipelineError(
                f"notebook {s.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                f"{e.ename}: {e.evalue}\nThe executed notebook with the traceback: {out_nb}") from None
        except Exception as e:  # kernel died, cell timeout, unreadable notebook ...
            raise PipelineError(f"notebook {s.name} could not be executed: {type(e).__name__}: {e}\n"
                                f"The partly executed notebook: {out_nb}") from e
        elapsed = time.perf_counter() - start
        atomic_write_json(record, {"notebook": s.name, "fingerprint": fingerprint,
                                   "parameters": nb_params, "seconds": round(elapsed, 1)})
        log(f"[{s.name}] done in {elapsed:.1f} s")
        results.append({"notebook": s.name, "status": "ran", "seconds": elapsed})
    return results
