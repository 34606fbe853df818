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
* Seeds: ``-p seeds=[0,1,2]`` (YAML ``seeds: [0, 1, 2]``; a setting of the pipeline, not of a notebook) runs
  the untrained stages (00-02) once in ``<run_dir>``, the trained ones (03-06) once per seed ``k`` in
  ``<run_dir>/seed-<k>/`` with ``seed=k``, then 07 once in ``<run_dir>`` (its report finds the ``seed-<k>/``
  evaluations: mean ± sd). Each seed directory links ``overview``, ``frequency`` and ``vocab`` to the shared
  ones (relative symlinks), so every stage still reads ``<its run_dir>/<stage>/``. Resume works per
  directory; a rerun shared stage reruns every seed, a rerun seed reruns only 07 after it.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
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
    """The notebooks ``--only`` names, in order; without ``--only`` all but the on-demand ones (08: ``glmd compare``
    runs it at the end of a comparison, ``--only 08`` by hand)."""
    if not only:
        return [s for s in steps if s.number not in ON_DEMAND]
    chosen = []
    for key in only:
        match = [s for s in steps if s.number == key or s.name == key or s.name.startswith(key)]
        if not match:
            raise PipelineError(f"--only {key}: no notebook matches; have {[s.name for s in steps]}")
        chosen.extend(m for m in match if m not in chosen)
    return sorted(chosen, key=lambda s: s.name)


RESERVED = ("run_dir", "profile")  # given as --run-dir / --profile: one run, one profile
SEEDS = "seeds"  # the pipeline's own key: repeat the trained stages per seed (module docstring)
SHARED = ("00", "01", "02")  # untrained: run once, linked into every seed directory
FINAL = ("07", "08")  # compare the seeds (07) or the methods (08): run once, after all of them
ON_DEMAND = ("08",)  # not part of a plain `glmd run`: only when named with --only


def parse_seeds(value: Any) -> list[int]:
    """``seeds`` as given (``[0, 1, 2]``, ``"0,1,2"``, ``3``, None/empty: no seeds) -> distinct seeds >= 0, or a
    ConfigError saying what to write."""
    if value is None or value == "" or value == []:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        seeds = [int(str(v).strip()) for v in items if not isinstance(v, (bool, float))]
    except ValueError:
        seeds = []
    if len(seeds) != len(items) or any(k < 0 for k in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"parameter 'seeds': expected a list of distinct integers >= 0 such as [0,1,2], "
                          f"got {value!r}")
    return seeds


def seed_dir(run_dir: Path, seed: int) -> Path:
    """Where seed ``seed``'s trained stages write (:mod:`glmd_lib.tasks.seeds` finds them there)."""
    return run_dir / f"seed-{seed}"


def shared_keys(steps: list[NotebookStep]) -> set[str]:
    """Keys with one meaning in every notebook (declared ``shared`` by a config, or by StageConfig itself)."""
    return StageConfig.shared_keys().union(*(s.config.shared_keys() for s in steps if s.config))


def validate(steps: list[NotebookStep], profile: str, run_dir: str, params: dict[str, Any],
             universe: list[NotebookStep] | None = None, part: bool = False) -> dict[str, dict]:
    """Route every parameter to its notebooks and check it there before running any; return each
    notebook's parameters (typed as its config resolves them).

    ``universe`` (default: ``steps``) is every notebook of the pipeline: whether a bare key is ambiguous is
    judged against all of them, so a parameter file means the same with and without ``--only``. ``part``:
    ``steps`` are one part of a selection validated as a whole (a seed's stages), so a key for the selection's
    other notebooks is passed over rather than refused.
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
        if not reached and not part:
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


@dataclass
class Group:
    """Notebooks run in one run directory with one set of parameters (a seed's sub-run, or the run itself)."""
    run_dir: Path
    steps: list[NotebookStep]
    per_notebook: dict[str, dict]
    seed: int | None = None


def plan(profile: str, run_dir: Path, steps: list[NotebookStep], universe: list[NotebookStep],
         params: dict[str, Any]) -> list[Group]:
    """The run as groups, every parameter of every group validated: one group without ``seeds``; with them
    the shared stages, one group per seed (``seed=k`` in ``<run_dir>/seed-<k>``) and the final one."""
    params = dict(params)
    seeds = parse_seeds(params.pop(SEEDS, None))
    whole = validate(steps, profile, str(run_dir), params, universe)  # every key reaches a selected notebook
    if not seeds:
        return [Group(run_dir, steps, whole)]
    trained = [s for s in steps if s.number not in SHARED + FINAL]
    # a seed's stages get seed=k whatever seed was given (that one still reaches 00-02 and 07)
    mine = {key: v for key, v in params.items() if key.rpartition(".")[2] != "seed"}
    has_seed = any("seed" in s.declared() for s in trained)

    def group(part: list[NotebookStep], where: Path, values: dict, seed: int | None = None) -> Group:
        return Group(where, part, validate(part, profile, str(where), values, universe, part=True), seed)

    groups = [group([s for s in steps if s.number in SHARED], run_dir, params)]
    for k in seeds if trained else []:
        groups.append(group(trained, seed_dir(run_dir, k), {**mine, **({"seed": k} if has_seed else {})}, k))
    groups.append(group([s for s in steps if s.number in FINAL], run_dir, params))
    return [g for g in groups if g.steps]


def link_shared(run_dir: Path, sub: Path, universe: list[NotebookStep]) -> None:
    """Make ``sub/<stage>`` a relative symlink to ``run_dir/<stage>`` for every shared stage, so a seed's
    stages read the one vocabulary map (and overview, frequency) as ``<their run_dir>/<stage>/``."""
    link_stages(sub, {s.stage: run_dir / s.stage for s in universe if s.number in SHARED})


def link_stages(sub: Path, targets: dict[str, Path]) -> None:
    """Make each ``sub/<stage>`` a relative symlink to ``targets[stage]`` (replacing a link elsewhere; a real
    directory there is refused), so a run reads a stage made once elsewhere as ``<its run_dir>/<stage>/``."""
    sub.mkdir(parents=True, exist_ok=True)
    for stage, where in targets.items():
        link, target = sub / stage, Path(os.path.relpath(where, sub))
        if link.is_symlink():
            if Path(link.readlink()) == target:
                continue
            link.unlink()
        elif link.exists():
            raise PipelineError(f"{link} is a directory of its own, not a link to the shared {where}: "
                                f"move it away to share {where} there")
        link.symlink_to(target, target_is_directory=True)


def routable(params: dict[str, Any], only: list[str], notebook_dir: Path = NOTEBOOK_DIR) -> dict[str, Any]:
    """The part of ``params`` that reaches the notebooks ``only`` names (``glmd compare`` runs each part of a
    comparison with what concerns it); a key no notebook knows is still a ConfigError."""
    universe = discover(notebook_dir)
    chosen = {s.name for s in select(universe, only)}
    declared, shared = {s.name: s.declared() for s in universe}, shared_keys(universe)
    return {k: v for k, v in params.items() if k == SEEDS or chosen & set(_owners(k, universe, declared, shared)[1])}


def run(profile: str, run_dir: str | Path, only: list[str] | None = None, params: dict[str, Any] | None = None,
        force: bool = False, notebook_dir: Path = NOTEBOOK_DIR, log=print,
        cell_timeout: int | None = None) -> list[dict]:
    """Execute the selected notebooks in order; ``cell_timeout`` (seconds) bounds every cell (CI).

    Every parameter is checked before the run directory is touched; then the directory is locked for the
    whole run (:class:`~glmd_lib.runlock.RunLockedError` if another process holds it,
    :class:`~glmd_lib.runlock.RunDirError` if it cannot be used). With ``seeds`` each result also names its
    ``seed``; the seed directories inside ``run_dir`` are covered by its lock."""
    run_dir = Path(run_dir).expanduser().resolve()
    universe = discover(notebook_dir)
    steps = select(universe, only)
    if not steps:
        raise PipelineError(f"no notebooks found in {notebook_dir}")
    groups = plan(profile, run_dir, steps, universe, dict(params or {}))
    results: list[dict] = []
    with run_lock(run_dir):
        shared_ran = seeds_ran = False
        for g in groups:
            if g.seed is not None:
                link_shared(run_dir, g.run_dir, universe)
            rerun = shared_ran or (seeds_ran and g.seed is None)  # what changed upstream reruns what reads it
            ran = _run_group(g, profile, force, rerun, cell_timeout, log, results)
            shared_ran |= ran and g.seed is None and not seeds_ran
            seeds_ran |= ran and g.seed is not None
    return results


def _run_group(g: Group, profile: str, force: bool, rerun_rest: bool, cell_timeout: int | None, log,
               results: list[dict]) -> bool:
    """Run one group's notebooks (skipping finished ones until one runs); append to ``results``; whether any
    ran."""
    (g.run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    tag = {} if g.seed is None else {"seed": g.seed}
    where = "" if g.seed is None else f" seed {g.seed}"
    for s in g.steps:
        nb_params = g.per_notebook[s.name]
        fingerprint = _fingerprint(s, nb_params)
        if not force and not rerun_rest and _finished(s, g.run_dir, fingerprint):
            log(f"[{s.name}{where}] complete, skipping (delete {_record(s, g.run_dir)} or use --force to rerun)")
            results.append({"notebook": s.name, "status": "skipped", **tag})
            continue
        rerun_rest = True
        log(f"[{s.name}{where}] running ({profile} profile) -> {g.run_dir / 'notebooks' / s.path.name}")
        elapsed = _execute(s, g.run_dir, nb_params, cell_timeout)
        atomic_write_json(_record(s, g.run_dir), {"notebook": s.name, "fingerprint": fingerprint,
                                                  "parameters": nb_params, "seconds": round(elapsed, 1)})
        log(f"[{s.name}{where}] done in {elapsed:.1f} s")
        results.append({"notebook": s.name, "status": "ran", "seconds": elapsed, **tag})
    return rerun_rest


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
        # the kernel client's abandoned asyncio tasks later find the kernel gone and would log that with a
        # traceback when they are collected: expected after Ctrl-C, so asyncio is quieted from here on
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        raise Interrupted(step.name, out_nb) from None
    except papermill.PapermillExecutionError as e:
        if e.ename == "KeyboardInterrupt":  # the kernel itself was interrupted (its own session: kill -INT)
            raise Interrupted(step.name, out_nb) from None
        raise PipelineError(
            f"notebook {step.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
            f"{e.ename}: {e.evalue}\nThe executed notebook with the traceback: {out_nb}") from None
    except Exception as e:  # kernel died, cell timeout, unreadable notebook ...
        raise PipelineError(f"notebook {step.name} could not be executed: {type(e).__name__}: {e}\n"
                            f"The partly executed notebook: {out_nb}") from e
    return time.perf_counter() - start
