"""``glmd compare``: run a :class:`~glmd_lib.compare.grid.ComparePlan` through the ordinary pipeline.

Every part is a :func:`glmd_lib.pipeline.run` call in its own directory, so each run has its resolved configs,
commit and artifacts, skips what is complete and resumes what was interrupted (a rerun of the same command does
only what is missing; a changed shared stage makes the runs that read it stale, and they run again). The shared
stages reach a run as relative symlinks (:func:`glmd_lib.pipeline.link_stages`). At the end notebook 08 reads
every run into ``D/compare/`` (rerun whenever a run ran). The whole root ``D`` is locked while it runs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from glmd_lib import pipeline
from glmd_lib.artifacts import atomic_write_csv, atomic_write_text
from glmd_lib.distill.methods import METHODS, matched_embedding_dim
from glmd_lib.compare.grid import UNTRAINED_CSV, UNTRAINED_PREDICTIONS, ComparePlan, RunPoint, expand, run_dir
from glmd_lib.runlock import run_lock

SHARED_STAGES = ("overview", "frequency")


def _call(plan: ComparePlan, where: Path, only: list[str], params: dict[str, Any], log: Callable, **kw: Any) -> bool:
    """One pipeline run of the notebooks ``only`` in ``where`` with the parameters that reach them; whether any ran."""
    results = pipeline.run(plan.profile, where, only=only, params=pipeline.routable(params, only), log=log, **kw)
    return any(r["status"] == "ran" for r in results)


def _links(plan: ComparePlan, point: RunPoint) -> dict[str, Path]:
    out = {s: plan.root / s for s in SHARED_STAGES}
    if point.stage1_from:  # the same stage 1 as an earlier run of this seed: read it, do not train it again
        out["stage1"] = run_dir(plan.root, point.stage1_from, point.seed) / "stage1"
    return {**out, "vocab": plan.vocab_dir(point.vocab), "teachers": plan.root / "teachers"}


def _shared(plan: ComparePlan, log: Callable, kw: dict) -> bool:
    """00-02 in the root, the other vocabularies in ``variants/<tag>/``, the one task-teacher set (04)."""
    ran = _call(plan, plan.root, ["00", "01", "02"], plan.common, log, **kw)
    for tag, vocab in plan.vocab.items():
        if tag:
            where = plan.vocab_dir(tag).parent
            pipeline.link_stages(where, {s: plan.root / s for s in SHARED_STAGES})
            ran |= _call(plan, where, ["02"], {**plan.common, **vocab}, log, **kw)
    log(f"[compare] one task-teacher set (notebook 04, {plan.root / 'teachers'}) for every method and seed")
    return _call(plan, plan.root, ["04"], plan.common, log, **kw) | ran


def evaluate_untrained(plan: ComparePlan, point: RunPoint, log: Callable) -> Path:
    """Score the initialised student of ``point`` (its ``stage1/student``) on the dev examples the methods of its
    seed are scored on, with the runs' evaluation settings; ``untrained.csv`` and its predictions
    (``untrained_predictions.jsonl``, for the paired differences against it) in its run directory."""
    from glmd_lib.config.stages import EvalConfig
    from glmd_lib.device import get_device
    from glmd_lib.tasks.comparisons import prediction_records
    from glmd_lib.tasks.evaluate import ModelSpec, evaluate_models

    where = point.dir(plan.root)
    step = [s for s in pipeline.discover() if s.config is EvalConfig]
    values = pipeline.validate(step, plan.profile, str(where), pipeline.routable(point.params, ["06"]))
    cfg = EvalConfig.resolve(**values[step[0].name])
    spec = ModelSpec("untrained", {"*": str(where / "stage1" / "student")})
    rows, details = evaluate_models([spec], cfg.tasks, cfg.superglue_dir, cfg.max_eval_examples, log,
                                    batch_size=cfg.batch_size, seed=cfg.seed, pattern_id=cfg.pattern_id,
                                    max_len=cfg.max_seq_len, bf16=cfg.bf16, device=get_device(cfg.device),
                                    n_boot=cfg.bootstrap_samples)
    lines = (json.dumps(r, allow_nan=False) for r in prediction_records(details))
    atomic_write_text(where / UNTRAINED_PREDICTIONS, "\n".join(lines) + "\n")
    return atomic_write_csv(where / UNTRAINED_CSV, rows)


def match_glmd_size(plan: ComparePlan, log: Callable) -> None:
    """Set ``stage1.embedding_dim`` of the runs whose method matches GLMD's parameter count (``dim-reduction``)
    to :func:`~glmd_lib.distill.methods.matched_embedding_dim` of the default vocabulary's kept size (read from
    notebook 02's map, so after :func:`_shared`), its full size and the student's width."""
    from transformers import AutoConfig

    from glmd_lib.config.stages import Stage1Config
    from glmd_lib.models.student_config import hidden_size_of
    from glmd_lib.models.teacher import resolve_model_path

    vm = json.loads((plan.vocab_dir("") / "vocab_map.json").read_text())
    for p in plan.runs:
        if METHODS[p.method].matches_glmd_size:
            s1 = {k.removeprefix("stage1."): v for k, v in pipeline.routable(p.params, ["03"]).items()}
            cfg = Stage1Config.resolve(plan.profile, **{k: v for k, v in s1.items() if "." not in k}, run_dir="x")
            hidden = cfg.student_hidden or hidden_size_of(AutoConfig.from_pretrained(resolve_model_path(cfg.teacher)))
            p.params["stage1.embedding_dim"] = matched_embedding_dim(vm["num_kept"], vm["vocab_size"], hidden)
            log(f"[compare] {p.name} seed {p.seed}: embedding width E = {p.params['stage1.embedding_dim']} (GLMD's "
                f"parameter count: {vm['num_kept']:,} of {vm['vocab_size']:,} tokens kept, student width {hidden})")


def _run_point(plan: ComparePlan, point: RunPoint, log: Callable, kw: dict) -> bool:
    where = point.dir(plan.root)
    pipeline.link_stages(where, _links(plan, point))
    only = ["03"] if point.method == "untrained" else ["05", "06"] if point.stage1_from else ["03", "05", "06"]
    shared = f" (stage 1 of {point.stage1_from})" if point.stage1_from else ""
    log(f"[compare] {point.name} seed {point.seed} -> {where}{shared}")
    ran = _call(plan, where, only, point.params, log, **kw)
    done = all((where / name).exists() for name in (UNTRAINED_CSV, UNTRAINED_PREDICTIONS))
    if point.method == "untrained" and (ran or not done):
        evaluate_untrained(plan, point, log)
    return ran


def _seed_by_seed(plan: ComparePlan) -> list[RunPoint]:
    """Each seed's runs, then its untrained reference, seed after seed (the plan's runs are already in seed order)."""
    return [p for k in plan.cfg.seeds for p in [q for q in plan.runs if q.seed == k] + [u for u in plan.untrained
                                                                                       if u.seed == k]]


def run_compare(profile: str, root: str | Path, params: dict[str, Any] | None = None,
                methods: list[str] | None = None, log: Callable = print, force: bool = False,
                cell_timeout: int | None = None) -> dict[str, Any]:
    """Run the comparison (the plan of :func:`glmd_lib.compare.grid.expand`, checked before anything runs);
    returns the plan, how many runs ran and the seconds taken."""
    start = time.perf_counter()
    root = Path(root).expanduser().resolve()
    plan = expand(profile, root, dict(params or {}), methods)
    universe = pipeline.discover()
    trained = pipeline.select(universe, ["03", "05", "06"])
    for p in plan.runs + plan.untrained:  # every run's parameters checked before the first notebook starts
        pipeline.plan(profile, p.dir(root), trained, universe, pipeline.routable(p.params, ["03", "05", "06"]))
    kw = {"force": force, "cell_timeout": cell_timeout}
    with run_lock(root):
        ran = _shared(plan, log, kw)
        match_glmd_size(plan, log)
        ran_runs = sum(_run_point(plan, p, log, kw) for p in _seed_by_seed(plan))
        _call(plan, root, ["08"], plan.compare_params, log, force=force or ran or ran_runs > 0,
              cell_timeout=cell_timeout)
    return {"plan": plan, "runs_ran": ran_runs, "seconds": time.perf_counter() - start}
