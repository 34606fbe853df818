"""What a comparison runs, and what its runs share: the grid of methods x seeds x sweep points as a plan.

Pure (no file is touched): :func:`expand` turns a profile, a root directory ``D`` and parameters into a
:class:`ComparePlan`, so the runner (:mod:`glmd_lib.compare.runner`) and the tests read the same plan.

* Every run is an ordinary pipeline run in ``D/runs/<method>[-keep<r>]/seed-<k>/`` (notebooks 03, 05, 06) with
  the method's registered parameters (:func:`glmd_lib.distill.methods.method_params`), the user's parameters and
  ``seed=k``. Where the user and a method set the same key, the method wins: it is what the row is named after.
* ``ablations``: methods run with the first seed only (the issue allows one seed for GLMD's ablations).
* A run whose stage 1 would repeat an earlier run's (same seed, vocabulary and resolved stage-1 settings: the
  ablations that change only stage 2) links that run's ``stage1/`` (``RunPoint.stage1_from``) and runs 05-06 only.
* Shared, made once: notebooks 00-01 in ``D``; one folder of teacher caches ``D/teacher_cache`` that every
  stage 1 reads (one teacher pass over the corpus blocks for all methods and seeds); the task teachers'
  predictions and pass-2b scores (``D/prediction_cache``); notebook 02 once per distinct vocabulary (the default one in
  ``D/vocab``, others in ``D/variants/<tag>/vocab``: methods or sweep points that change ``vocab.*``); notebook 04
  (the task teachers) ONCE in ``D/teachers`` for every method and seed, so every student learns from the same
  teachers and every fidelity is measured against them.
* Equal budget: GLMD trains ``steps_2a + steps_2b`` stage-2 steps; kd and finetune train only the task pass, so
  their ``stage2.steps_2b`` becomes that sum unless the user set ``stage2.steps_2b``.
* The sweep (``keep_rates``) is over GLMD's kept-vocabulary rate, with the first seed; the point at GLMD's own
  rate is the ``glmd`` run itself, the point at 1.0 GLMD with no vocabulary map: the ``glmd-vc`` run of the first
  seed where that method is compared (the same parameters), else its own run ``glmd-keep1``.
* The reference row ``untrained``: per seed, notebook 03 with ``stage1.steps=0`` (GLMD's student, initialised,
  saved, not trained) in ``D/runs/untrained/seed-<k>/``; the runner evaluates that student on the same dev
  examples as the methods (``untrained.csv``, ``untrained_predictions.jsonl``). The task teacher's row comes from
  the runs' own evaluations.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from glmd_lib.config.base import ConfigError
from glmd_lib.config.stages import CompareConfig, Stage1Config, Stage2Config, VocabConfig
from glmd_lib.distill.methods import METHODS, method_params

UNTRAINED = "untrained"
TEACHER = "teacher"
UNTRAINED_CSV = "untrained.csv"  # the untrained student's dev scores, in its run directory
UNTRAINED_PREDICTIONS = "untrained_predictions.jsonl"  # and its dev predictions (paired differences)
BUDGET_LOSSES = ("kd", "finetune")  # task losses that run only the task pass (methods.py)
TASK_STAGES = ("teachers", "stage2", "eval")
COMPARE_KEYS = {"methods", "ablations", "seeds", "keep_rates"}  # bare keys only CompareConfig declares


@dataclass(frozen=True)
class RunPoint:
    """One run of the comparison: a method (or ``untrained``) at one seed and, for a sweep point, one keep rate."""
    method: str
    seed: int
    name: str
    keep_rate: float | None = None
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    vocab: str = ""  # the vocabulary variant's tag ("": D/vocab)
    stage1_from: str = ""  # an earlier run of the same seed whose stage 1 this one would repeat: linked, not rerun

    def dir(self, root: Path) -> Path:
        return run_dir(root, self.name, self.seed)


@dataclass
class ComparePlan:
    root: Path
    profile: str
    cfg: CompareConfig
    compare_params: dict[str, Any]  # what notebook 08 gets
    common: dict[str, Any]  # the user's other parameters (every notebook they reach)
    vocab: dict[str, dict[str, Any]]  # variant tag -> its vocab.* parameters ("" : the default)
    runs: list[RunPoint]
    untrained: list[RunPoint]

    def vocab_dir(self, tag: str) -> Path:
        return self.root / "vocab" if not tag else self.root / "variants" / tag / "vocab"


def run_dir(root: Path, name: str, seed: int) -> Path:
    return Path(root) / "runs" / name / f"seed-{seed}"


def own_keep_rate() -> float:
    return float(method_params("glmd")["vocab.keep_rate"])


def points(cfg: CompareConfig) -> list[RunPoint]:
    """The method runs, seed by seed (every method of the first seed, its ablations and the sweep's points,
    then every method of the next seed ...), without parameters: an interrupted comparison leaves whole seeds."""
    first = cfg.seeds[0]
    out = [RunPoint(m, first, m) for m in cfg.methods]
    out += [RunPoint(m, first, m) for m in cfg.ablations or [] if m not in cfg.methods]
    names = {q.name for q in out}
    for r in cfg.keep_rates or []:
        name = ("glmd" if r == own_keep_rate() else "glmd-vc" if r >= 1.0 and "glmd-vc" in names
                else f"glmd-keep{r:g}")
        p = RunPoint("glmd", first, name, r)
        same = [i for i, q in enumerate(out) if (q.name, q.seed) == (p.name, p.seed)]
        if same:  # the point at GLMD's own rate (at 1.0: glmd-vc's) is that first-seed run, not a second one
            out[same[0]] = replace(out[same[0]], keep_rate=r)
        else:
            out.append(p)
    return out + [RunPoint(m, k, m) for k in cfg.seeds[1:] for m in cfg.methods]


def split_params(params: dict[str, Any], methods: list[str] | None = None) -> tuple[dict, dict]:
    """``(CompareConfig's keys, the rest)``: ``compare.x`` and the bare keys only it declares go to the first."""
    mine, rest = {}, {}
    for key, value in params.items():
        stage, _, name = key.rpartition(".")
        if stage == CompareConfig.stage or (not stage and name in COMPARE_KEYS):
            mine[name] = value
        elif key == "seed":
            raise ConfigError("parameter 'seed': a comparison sets each run's seed; give compare.seeds=[0,1,2]")
        else:
            rest[key] = value
    if methods:
        mine["methods"] = methods
    return mine, rest


def _given(params: dict[str, Any], stage: str, key: str) -> Any:
    return params.get(f"{stage}.{key}", params.get(key))


def _defaults(cfg: CompareConfig, common: dict[str, Any], root: Path) -> dict[str, Any]:
    """The compare's tasks for 04-06, in the runs' evaluations the task teachers and students only (the zero-shot
    teacher would be scored again in every run), one teacher-cache folder for every stage 1 (``D/teacher_cache``:
    the runs read the same blocks, so one teacher pass serves them all) and one folder of the task teachers'
    predictions for every evaluation (``D/prediction_cache``), where the user did not choose."""
    out = {f"{s}.tasks": cfg.tasks for s in TASK_STAGES if _given(common, s, "tasks") is None}
    if _given(common, "eval", "models") is None:
        out["eval.models"] = ["teachers", "students"]
    if _given(common, "stage1", "cache_dir") is None:
        out["stage1.cache_dir"] = str(root / "teacher_cache")
    if _given(common, "eval", "prediction_cache") is None:  # the task teachers, scored once for every run
        out["eval.prediction_cache"] = str(root / "prediction_cache")
    if _given(common, "stage2", "teacher_scores_cache") is None:  # and their scores of the pass-2b inputs
        out["stage2.teacher_scores_cache"] = str(root / "prediction_cache")
    return out


def _stage_values(common: dict[str, Any], stage: str, fields: list[str]) -> dict[str, Any]:
    return {k: v for k in fields if (v := _given(common, stage, k)) is not None}


def _vocab_tag(profile: str, common: dict[str, Any], own: dict[str, Any]) -> str:
    """"" when ``own`` vocab.* values resolve to the default vocabulary, else a tag naming them."""
    base = _stage_values(common, "vocab", VocabConfig.field_names())
    mine = {k.split(".", 1)[1]: v for k, v in own.items() if k.startswith("vocab.")}
    if VocabConfig.resolve(profile, run_dir="x", **base, **mine) == VocabConfig.resolve(profile, run_dir="x", **base):
        return ""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", "-".join(f"{k}{v}" for k, v in sorted(mine.items())))


def _run_params(profile: str, cfg: CompareConfig, common: dict, method: str, seed: int,
                keep_rate: float | None, root: Path) -> tuple[dict[str, Any], str]:
    """A run's parameters and its vocabulary tag."""
    own = dict(method_params(method))
    if keep_rate is not None and keep_rate >= 1.0:  # the whole vocabulary: no map at all (a map must prune)
        own.pop("vocab.keep_rate", None)
        own["stage1.use_vocab_map"] = False
    elif keep_rate is not None:
        own["vocab.keep_rate"] = keep_rate
    if own.get("stage2.task_loss") in BUDGET_LOSSES and _given(common, "stage2", "steps_2b") is None:
        s2 = Stage2Config.resolve(profile, run_dir="x", **_stage_values(common, "stage2", ["steps_2a", "steps_2b"]))
        own["stage2.steps_2b"] = s2.steps_2a + s2.steps_2b
    tag = "" if own.get("stage1.use_vocab_map") is False else _vocab_tag(profile, common, own)
    return {**_defaults(cfg, common, root), **common, **own, "seed": seed}, tag


def _stage1_identity(profile: str, params: dict[str, Any], vocab_tag: str) -> str:
    """What decides a run's stage 1: its resolved :class:`Stage1Config` (the ``stage1.*`` and bare parameters it
    declares on top of the profile, seed included; a value equal to the profile's counts as not given) and its
    vocabulary. Runs that differ only in stage 2 (glmd-no-2a, glmd-no-2b, glmd-t1 ...) share one stage 1."""
    fields = Stage1Config.field_names()
    mine = {n: v for k, v in params.items() if (n := k.removeprefix("stage1.")) in fields
            and ("." not in k or k.startswith("stage1."))}
    resolved = Stage1Config.resolve(profile, **{**mine, "run_dir": "x"}).to_dict()
    return json.dumps([vocab_tag, resolved], sort_keys=True, default=str)


def expand(profile: str, root: str | Path, params: dict[str, Any], methods: list[str] | None = None) -> ComparePlan:
    """The comparison as a plan (module docstring); every method name and value checked, nothing run."""
    compare_params, common = split_params(params, methods)
    cfg = CompareConfig.resolve(profile, run_dir=str(root), **compare_params)
    unknown = [m for m in cfg.methods + (cfg.ablations or []) if m not in METHODS]
    if unknown:
        raise ConfigError(f"compare.methods: unknown {unknown}; registered: {', '.join(METHODS)}")
    runs, vocab, stage1_of = [], {"": {}}, {}
    for p in points(cfg):
        run_params, tag = _run_params(profile, cfg, common, p.method, p.seed, p.keep_rate, Path(root))
        vocab.setdefault(tag, {k: v for k, v in run_params.items() if k.startswith("vocab.")})
        first = stage1_of.setdefault(_stage1_identity(profile, run_params, tag), p.name)
        runs.append(RunPoint(p.method, p.seed, p.name, p.keep_rate, run_params, tag, "" if first == p.name else first))
    untrained = []
    for k in cfg.seeds:
        run_params, _ = _run_params(profile, cfg, common, "glmd", k, None, Path(root))
        untrained.append(RunPoint(UNTRAINED, k, UNTRAINED, params={**run_params, "stage1.steps": 0}))
    return ComparePlan(Path(root), profile, cfg, {f"compare.{k}": v for k, v in compare_params.items()}, common,
                       vocab, runs, untrained)
