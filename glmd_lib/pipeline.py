"""Run the numbered notebooks in order with papermill: ``glmd run``.

* Parameters (``-p key=value``, ``-f params.yaml``, read by :func:`glmd_lib.config.base.parse_params`):
  ``stage1.lr=2e-3`` (YAML ``stage1: {lr: 2e-3}``) reaches only that stage's notebook. A bare key reaches
  every notebook declaring it when it has one meaning there: it is declared ``shared`` (``teacher``,
  ``seed``, ``device`` ...) or only one notebook declares it. A bare key that several notebooks declare
  with different meanings (``lr``, ``batch_size``, ``tasks`` ...) is refused with the qualified forms to
  write instead, so changing stage 1's learning rate never silently retrains the task teachers. Unknown
  keys or stages and values of the wrong type fail before anything runs.
* Each executed notebook is saved as ``<run_dir>/notebooks/<name>.ipynb``.
* Resume: after a notebook succeeds, ``<run_dir>/pipeline/<name>.json`` records a fingerprint of what it
  ran with (parameters, resolved config, the notebook's cells). On a rerun a notebook is skipped when the
  fingerprint matches and its stage directory is marked complete; once one notebook runs again, every
  later one runs again too (its inputs changed).
* The first failure stops the pipeline with the notebook, the cell and the error; Ctrl-C stops it with the
  notebook that was interrupted (:class:`Interrupted`). A rerun of the same command resumes.
* One writer per run directory: the pipeline holds ``<run_dir>/.lock`` (:mod:`glmd_lib.runlock`) while it
  runs, so a second ``glmd run`` on the same directory fails at once, naming the first.
"""
from __future__ import annotations

import difflib
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
from glmd_lib.runlock import run_lock

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class PipelineError(RuntimeError):
    pass


class Interrupted(PipelineError):
    """Ctrl-C (SIGINT) stopped the pipeline; the message names the notebook and how to resume."""

    def __init__(self, notebook: str, out_nb: Path):
        super().__init__(f"interrupted in notebook {notebook} (its stage is not complete; partial output: {out_nb}). "
                         f"To resume, rerun the same command: finished notebooks are skipped.")
        self.notebook = notebook


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

    @property
    def stage(self) -> str:
        """The prefix of its stage-qualified parameters: the config's stage, else the name after the number."""
        return self.config.stage if self.config is not None else self.name.split("_", 1)[-1]

    def declared(self) -> set[str]:
        if self.config is not None:
            return set(self.config.field_names())
        import papermill

        return set(papermill.inspect_notebook(str(self.path)))


def discover(notebook_dir: Path = NOTEBOOK_DIR) -> list[NotebookStep]:
    classes = config_classes()
    return [NotebookStep(p, classes.get(p.stem)) for p in sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))]


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


RESERVED = ("run_dir", "profile")  # given as --run-dir / --profile: one run, one profile


def shared_keys(steps: list[NotebookStep]) -> set[str]:
    """Keys with one meaning in every notebook (declared ``shared`` by a config, or by StageConfig itself)."""
    return StageConfig.shared_keys().union(*(s.config.shared_keys() for s in steps if s.config))


def validate(steps: list[NotebookStep], profile: str, run_dir: str, params: dict[str, Any],
             universe: list[NotebookStep] | None = None) -> dict[str, dict]:
    """Route every parameter to its notebooks and check it there before running any; return each
    notebook's parameters (typed as its config resolves them).

    ``universe`` (default: ``steps``) is every notebook of the pipeline: whether a bare key is ambiguous is
    judged against all of them, so a parameter file means the same with and without ``--only``.
    """
    if profile not in PROFILES:
        raise ConfigError(f"profile {profile!r} is not one of {list(PROFILES)}")
    universe = universe or steps
    declared = {s.name: s.declared() for s in universe}
    shared = shared_keys(universe)
    routed: dict[str, dict[str, Any]] = {s.name: {} for s in steps}
    for key in sorted(params, key=lambda k: "." in k):  # bare keys first: a stage's own value wins
        name, owners = _owners(key, universe, declared, shared)
        reached = [o for o in owners if o in routed]
        if not reached:
            raise ConfigError(f"parameter {key!r} is for {', '.join(owners)}, which is not among the selected "
                              f"notebooks {list(routed)}")
        for o in reached:
            routed[o][name] = params[key]
    per_notebook = {}
    for s in steps:
        mine = routed[s.name]
        if s.config is not None:  # a ConfigError naming the key, the allowed values and the notebook
            try:
                cfg = s.config.resolve(profile=profile, run_dir=run_dir, **mine)
            except ConfigError as e:
                raise ConfigError(f"{s.name}: {e}") from None
            mine = {k: getattr(cfg, k) for k in mine}
        per_notebook[s.name] = {"run_dir": run_dir, "profile": profile, **mine}
    return per_notebook


def _owners(key: str, universe: list[NotebookStep], declared: dict[str, set[str]],
            shared: set[str]) -> tuple[str, list[str]]:
    """``(field name, notebooks it goes to)`` for one ``key`` or ``stage.key``, or a ConfigError that says
    what to write instead."""
    stage, _, name = key.rpartition(".")
    if name in RESERVED:
        raise ConfigError(f"pass {name} with --{name.replace('_', '-')}, not as a parameter")
    if stage:
        by_stage = {s.stage: s.name for s in universe}
        if stage not in by_stage:
            raise ConfigError(f"parameter {key!r}: no stage {stage!r}; stages: {', '.join(by_stage)}")
        if name not in declared[by_stage[stage]]:
            elsewhere = [f"{s.stage}.{name}" for s in universe if name in declared[s.name]]
            raise ConfigError(f"parameter {key!r}: {by_stage[stage]} declares no {name!r}"
                              + (f" (did you mean {', '.join(elsewhere)}?)" if elsewhere else "")
                              + f"; its parameters: {', '.join(sorted(declared[by_stage[stage]]))}")
        return name, [by_stage[stage]]
    owners = [s for s in universe if key in declared[s.name]]
    if not owners:
        known = sorted(set().union(*declared.values()))
        hint = difflib.get_close_matches(key, known, n=3)
        raise ConfigError(f"unknown parameter {key!r}: no notebook among {[s.name for s in universe]} declares "
                          f"it" + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    if len(owners) > 1 and key not in shared:
        raise ConfigError(f"parameter {key!r} is declared by {', '.join(s.stage for s in owners)}: write "
                          + ", ".join(f"{s.stage}.{key}=..." for s in owners))
    return key, [s.name for s in owners]


def addressing(steps: list[NotebookStep]) -> dict[str, dict[str, str]]:
    """Notebook -> {field: how ``-p`` addresses it}: shared keys bare, every other key ``stage.key`` (the
    form that stays valid when another notebook later declares the same name); ``glmd params`` shows it."""
    shared = shared_keys(steps)
    return {s.name: {k: (k if k in shared else f"{s.stage}.{k}") for k in sorted(s.declared())} for s in steps}


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
    """Execute the selected notebooks in order; ``cell_timeout`` (seconds) bounds every cell (CI).

    Every parameter is checked before the run directory is touched; then the directory is locked for the
    whole run (:class:`~glmd_lib.runlock.RunLockedError` if another process holds it,
    :class:`~glmd_lib.runlock.RunDirError` if it cannot be used)."""
    run_dir = Path(run_dir).expanduser().resolve()
    universe = discover(notebook_dir)
    steps = select(universe, only)
    if not steps:
        raise PipelineError(f"no notebooks found in {notebook_dir}")
    per_notebook = validate(steps, profile, str(run_dir), dict(params or {}), universe)
    results, rerun_rest = [], False
    with run_lock(run_dir):
        (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
        for s in steps:
            nb_params = per_notebook[s.name]
            fingerprint = _fingerprint(s, nb_params)
            if not force and not rerun_rest and _finished(s, run_dir, fingerprint):
                log(f"[{s.name}] complete, skipping (delete {_record(s, run_dir)} or use --force to rerun)")
                results.append({"notebook": s.name, "status": "skipped"})
                continue
            rerun_rest = True
            log(f"[{s.name}] running ({profile} profile) -> {run_dir / 'notebooks' / s.path.name}")
            elapsed = _execute(s, run_dir, nb_params, cell_timeout)
            atomic_write_json(_record(s, run_dir), {"notebook": s.name, "fingerprint": fingerprint,
                                                    "parameters": nb_params, "seconds": round(elapsed, 1)})
            log(f"[{s.name}] done in {elapsed:.1f} s")
            results.append({"notebook": s.name, "status": "ran", "seconds": elapsed})
    return results


def _record(step: NotebookStep, run_dir: Path) -> Path:
    """Where the pipeline records that a notebook succeeded, and with what."""
    return run_dir / "pipeline" / f"{step.name}.json"


def _finished(step: NotebookStep, run_dir: Path, fingerprint: str) -> bool:
    """The notebook ran with this fingerprint, its output exists and its stage is complete and consistent."""
    record = _record(step, run_dir)
    try:
        same = record.exists() and json.loads(record.read_text()).get("fingerprint") == fingerprint
    except ValueError:  # a damaged record: run the notebook again
        same = False
    stage_ok = step.config is None or is_complete(run_dir / step.config.stage)
    return same and stage_ok and (run_dir / "notebooks" / step.path.name).exists()


def _execute(step: NotebookStep, run_dir: Path, nb_params: dict, cell_timeout: int | None) -> float:
    """Run one notebook with papermill; seconds taken, or a one-line PipelineError / Interrupted."""
    import papermill

    out_nb = run_dir / "notebooks" / step.path.name
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(step.path), str(out_nb), parameters=nb_params, cwd=str(step.path.parent),
                                   kernel_name="python3", progress_bar=False, log_output=False,
                                   execution_timeout=cell_timeout, shutdown_kernel="immediate")
    except KeyboardInterrupt:
        raise Interrupted(step.name, out_nb) from None
    except papermill.PapermillExecutionError as e:
        if e.ename == "KeyboardInterrupt":  # the kernel got the Ctrl-C too (same process group)
            raise Interrupted(step.name, out_nb) from None
        raise PipelineError(
            f"notebook {step.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
            f"{e.ename}: {e.evalue}\nThe executed notebook with the traceback: {out_nb}") from None
    except Exception as e:  # kernel died, cell timeout, unreadable notebook ...
        raise PipelineError(f"notebook {step.name} could not be executed: {type(e).__name__}: {e}\n"
                            f"The partly executed notebook: {out_nb}") from e
    return time.perf_counter() - start
