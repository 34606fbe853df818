"""SuperGLUE evaluation of any set of models on the dev splits: ``run_eval(cfg)`` is notebook 06's work.

Models:
* ``zero_shot``: the pre-trained teacher, prompted with the config's ``pattern_id``, no training;
* ``teacher``: the task teachers of notebook 04, ``<run_dir>/teachers/<TASK>/model/`` (one per task);
* ``student``: the students of notebook 05, ``<run_dir>/stage2/<TASK>/student/`` (an HF model folder,
  plus ``vocab_map.json`` when the student has a compressed vocabulary);
* ``majority``: the most frequent training label (dev label when there is no train split).

Each task model is scored with the pattern it was trained with (``pattern_id`` of its ``metrics.json``) and
its rows say which, and what chose its checkpoint (``select_on``: a ``dev`` there makes its dev score
optimistic: the report labels it dev-selected). Every model, the majority baseline included, is scored on
the same examples: the whole dev split unless ``max_eval_examples`` caps it (``n_examples`` of ``n_split``).

AX-b and AX-g are scored with RTE's patterns and, for task models, with the RTE model. Results are
long-format rows (:data:`COLUMNS`), every metric with its 95% bootstrap interval (:mod:`glmd_lib.tasks.intervals`);
one ``metric == "score"`` row per task holds the task score (two-metric tasks averaged), which ``summarize``
turns into per-model averages. Every prediction goes through :func:`glmd_lib.tasks.scoring.predict_clozes`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from glmd_lib.artifacts import artifact, atomic_write_csv, begin_stage, is_complete, mark_complete, read_json, save_figure, STAGES
from glmd_lib.device import get_device
from glmd_lib.models.student import load_student
from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind
from glmd_lib.superglue.data import DIAGNOSTICS, Example, example_texts, has_split, read_split, subsample
from glmd_lib.superglue.metrics import majority_label, task_metrics, task_score
from glmd_lib.superglue.patterns import build_cloze
from glmd_lib.tasks.comparisons import differences, write_predictions
from glmd_lib.tasks.fidelity import FIDELITY_MODELS, fidelity_inputs, fidelity_table
from glmd_lib.tasks.figures import confusion_figure, scores_figure
from glmd_lib.tasks.intervals import N_BOOT, Interval, interval_cell, metric_intervals
from glmd_lib.tasks.prediction_cache import CACHED_MODELS, cache_file, load_or_compute
from glmd_lib.tasks.results import interval_table, score_table, write_results
from glmd_lib.tasks.scoring import predict_clozes
from glmd_lib.tasks.submission import write_submission
from glmd_lib.models.export import EXPORT_FILE, load_exported

COLUMNS = ["model", "task", "metric", "value", "ci_low", "ci_high", "n_examples", "n_split", "params", "pattern_id",
           "select_on"]
# an entry of EvalConfig.models -> (the model's name, the stage that trains it, its per-task artifact)
TASK_MODELS = {"teachers": ("teacher", "teachers", "model"), "students": ("student", "stage2", "student")}


def eval_split(task: str) -> str:
    """The labelled split that is scored: dev (``val``), or ``test`` for the labelled diagnostics."""
    return "test" if task in DIAGNOSTICS else "val"


def model_task(task: str) -> str:
    """The task whose task model answers ``task`` (the diagnostics are RTE problems)."""
    return "RTE" if task in DIAGNOSTICS else task


@dataclass
class ModelSpec:
    """A model to evaluate: ``paths`` maps task -> folder (``"*"``: the same model for every task); ``patterns``
    and ``select_on`` what the task's model was trained with and what chose its checkpoint (from its
    ``metrics.json``; absent: the config's pattern, nothing known)."""

    name: str
    paths: dict[str, str] = field(default_factory=dict)
    patterns: dict[str, int] = field(default_factory=dict)
    select_on: dict[str, str | None] = field(default_factory=dict)

    def path_for(self, task: str) -> str | None:
        return self.paths.get(model_task(task)) or self.paths.get("*")

    def pattern_for(self, task: str, default: int) -> int:
        return self.patterns.get(model_task(task), default)

    def select_on_for(self, task: str) -> str | None:
        return self.select_on.get(model_task(task))


def trained_with(run_dir: str | Path, stage: str, task: str) -> tuple[int | None, str | None]:
    """``(pattern_id, select_on)`` a task model's ``metrics.json`` records (None where it does not). Stage 2
    before ``select_on`` recorded ``select_by_dev``: True means dev chose, False the last checkpoint."""
    path = artifact(run_dir, stage, "metrics.json", task)
    m = read_json(path) if path.exists() else {}
    select_on = m.get("select_on") or {True: "dev", False: "last"}.get(m.get("select_by_dev"))
    return (int(m["pattern_id"]) if m.get("pattern_id") is not None else None), select_on


def _task_model(run_dir, kind: str, tasks: list[str], pattern_id: int) -> tuple[ModelSpec, list[str]]:
    """The task models of ``kind`` (teachers, students) that exist, and the tasks that have none."""
    name, stage, leaf = TASK_MODELS[kind]
    spec, missing = ModelSpec(name), []
    for task in sorted({model_task(t) for t in tasks}):
        folder = artifact(run_dir, stage, leaf, task)
        if not (folder / "config.json").exists():
            missing.append(task)
            continue
        pattern, select_on = trained_with(run_dir, stage, task)
        spec.paths[task], spec.select_on[task] = str(folder), select_on
        spec.patterns[task] = pattern_id if pattern is None else pattern
    return spec, missing


def discover_models(run_dir: str | Path, teacher: str, tasks: list[str], which: list[str],
                    pattern_id: int = 0) -> tuple[list[ModelSpec], list[str]]:
    """The models asked for in ``which`` (zero_shot, teachers, students) that exist; plus notes on the rest
    (missing task models, and stages not marked complete whose models are used as found)."""
    specs, notes = [], []
    for kind in which:
        if kind == "zero_shot":
            specs.append(ModelSpec("zero_shot", {"*": teacher}))
            continue
        spec, missing = _task_model(run_dir, kind, tasks, pattern_id)
        stage = TASK_MODELS[kind][1]
        nb = STAGES[stage].notebook
        if spec.paths:
            specs.append(spec)
            if not is_complete(Path(run_dir) / stage):
                notes.append(f"{stage}/ is not marked complete (notebook {nb} interrupted?): its models are used "
                             f"as found")
        if missing:
            notes.append(f"no {spec.name} for {', '.join(missing)} (expected {Path(run_dir) / stage}/<TASK>/"
                         f"{TASK_MODELS[kind][2]}/; run notebook {nb} for them): skipped")
    return specs, notes


def load_for_eval(path: str, device: torch.device | str | None = None):
    """``(model, tokenizer, vocab_map)`` of a teacher name/folder, a student folder (``vocab_map.json``) or an
    exported student folder (``glmd export``: plain Hugging Face files, scored exactly as its student)."""
    folder = Path(path)
    if folder.is_dir() and (folder / EXPORT_FILE).exists():  # a `glmd export` folder scores as its student
        st = load_exported(folder, device=device)
        return st.model.eval(), st.tokenizer, st.vocab_map
    if folder.is_dir() and (folder / "vocab_map.json").exists():
        st = load_student(folder, device=device)
        return st.model.eval(), st.tokenizer, st.vocab_map
    model, tok = load_teacher(path, device=device)
    return model, tok, None


def evaluate_clozes(model, task: str, clozes, examples, batch_size: int = 16, vocab_map: Any = None,
                    bf16: bool | None = None, cache: Path | None = None) -> dict[str, Any]:
    """Dev metrics of ``model`` on prepared clozes (with their examples): metrics, score, predictions, scores.
    ``cache``: a frozen model's file of these predictions (:func:`glmd_lib.tasks.prediction_cache.cache_file`)."""
    preds, scores = load_or_compute(cache, lambda: predict_clozes(model, clozes, vocab_map=vocab_map,
                                                                  batch_size=batch_size, bf16=bf16))
    metrics = task_metrics(task, preds, examples)
    return {"metrics": metrics, "score": task_score(task, metrics), "predictions": preds, "scores": scores}


@dataclass
class EvalOptions:
    """How every model is scored (the same for all of them)."""

    batch_size: int = 16
    seed: int = 0  # of the capped subsets and of the bootstrap
    pattern_id: int = 0  # the zero-shot teacher's pattern (and a task model's that recorded none)
    max_len: int = 256
    bf16: bool | None = None
    device: Any = None
    n_boot: int = N_BOOT
    prediction_cache: str | None = None  # folder of frozen models' predictions (glmd_lib.tasks.prediction_cache)


def eval_examples(tasks: list[str], data_dir=None, max_examples: int | None = None,
                  seed: int = 0) -> dict[str, tuple[list[Example], int]]:
    """Per task: the examples every model is scored on (a seeded subset of whole groups when capped) and the
    size of the split they come from. Deterministic, so models and baselines get the same examples."""
    out = {}
    for t in tasks:
        full = read_split(t, eval_split(t), data_dir)
        out[t] = (subsample(full, max_examples, seed=seed), len(full))
    return out


def score_rows(name: str, task: str, predictions: list, examples: list[Example], n_split: int, opts: EvalOptions,
               **extra: Any) -> list[dict[str, Any]]:
    """One row per metric, then the task score, each with its bootstrap interval and the example counts."""
    ivs: dict[str, Interval] = metric_intervals(task, predictions, examples, opts.n_boot, opts.seed)
    return [dict(model=name, task=task, metric=m, value=iv.value, ci_low=iv.low, ci_high=iv.high,
                 n_examples=len(examples), n_split=n_split, **extra) for m, iv in ivs.items()]


def _log_line(rows: list[dict[str, Any]], seconds: float) -> str:
    """``student  RTE  score 0.6130 [0.5540, 0.6700] n=277  (accuracy 0.6130; 3.1s)``: the cap, if any, included."""
    r = rows[-1]  # the task score
    score = interval_cell(r["value"], r["ci_low"], r["ci_high"], r["n_examples"], r["n_split"], digits=4)
    metrics = ", ".join(f"{x['metric']} {x['value']:.4f}" for x in rows[:-1])
    return f"{r['model']:>10} {r['task']:<8} score {score}  ({metrics}; {seconds:.1f}s)"


def _predict(loaded: tuple, task: str, examples: list[Example], pattern_id: int, opts: EvalOptions,
             cached_from: str | None = None):
    """``(predictions, scores)``; ``cached_from``: the folder of a frozen model, whose predictions are read from
    (or written to) ``opts.prediction_cache``."""
    model, tok, vmap = loaded

    def compute():
        clozes = build_cloze(task, examples, tok, kind=model_kind(model.config), pattern_id=pattern_id,
                             max_len=opts.max_len)
        return predict_clozes(model, clozes, vocab_map=vmap, batch_size=opts.batch_size, bf16=opts.bf16)
    where = cache_file(opts.prediction_cache, cached_from, task, examples, pattern_id, opts.max_len, opts.bf16) \
        if cached_from else None
    return load_or_compute(where, compute)


def _by_path(spec: ModelSpec, tasks: list[str]) -> dict[str, list[str]]:
    """The tasks of ``spec`` grouped by model folder, so each folder is loaded once."""
    out: dict[str, list[str]] = {}
    for t in tasks:
        p = spec.path_for(t)
        if p is not None:
            out.setdefault(p, []).append(t)
    return out


def evaluate_models(specs: list[ModelSpec], tasks: list[str], data_dir=None, max_examples: int | None = None,
                    log_fn=print, unlabeled: dict[str, list[Example]] | None = None,
                    **options: Any) -> tuple[pd.DataFrame, dict]:
    """Evaluate every spec on every task it has a model for (``options``: :class:`EvalOptions`' fields);
    returns (rows, details). ``details[(model, task)]`` holds examples, predictions, scores and the pattern
    and, for task teachers and students, ``"unlabeled"``: ``(predictions, scores)`` on ``unlabeled[task]``."""
    opts, say = EvalOptions(**options), log_fn or (lambda s: None)
    rows, details = [], {}
    examples = eval_examples(tasks, data_dir, max_examples, opts.seed)
    for spec in specs:
        for path, ptasks in _by_path(spec, tasks).items():
            loaded = load_for_eval(path, device=opts.device)
            params, frozen = count_parameters(loaded[0]), path if spec.name in CACHED_MODELS else None
            for t in ptasks:
                t0 = time.perf_counter()
                (exs, n_split), pid = examples[t], spec.pattern_for(t, opts.pattern_id)
                preds, scores = _predict(loaded, t, exs, pid, opts, frozen)
                new = score_rows(spec.name, t, preds, exs, n_split, opts, params=params, pattern_id=pid,
                                 select_on=spec.select_on_for(t))
                rows += new
                details[(spec.name, t)] = {"examples": exs, "predictions": preds, "scores": scores, "pattern_id": pid,
                                           "score": new[-1]["value"]}
                if spec.name in FIDELITY_MODELS and t in (unlabeled or {}):
                    details[(spec.name, t)]["unlabeled"] = _predict(loaded, t, unlabeled[t], pid, opts, frozen)
                say(_log_line(new, time.perf_counter() - t0))
            del loaded
    return pd.DataFrame(rows, columns=COLUMNS), details


def majority_predictions(task: str, examples, data_dir=None) -> tuple[Any, str]:
    """The majority baseline's constant prediction for ``task`` and where its label came from."""
    src = model_task(task)
    if has_split(src, "train", data_dir):
        return majority_label(read_split(src, "train", data_dir)), f"{src} train"
    return majority_label(examples), f"{task} {eval_split(task)} (no train split)"


def majority_rows(tasks: list[str], data_dir=None, max_examples: int | None = None,
                  **options: Any) -> tuple[pd.DataFrame, dict]:
    """Majority-class baseline (ReCoRD: the first entity), on the examples the models are scored on."""
    opts = EvalOptions(**options)
    rows, details = [], {}
    for t, (exs, n_split) in eval_examples(tasks, data_dir, max_examples, opts.seed).items():
        if t == "ReCoRD":
            preds, source = [ex.candidates[0] if ex.candidates else "" for ex in exs], "first entity"
        else:
            label, source = majority_predictions(t, exs, data_dir)
            preds = [label] * len(exs)
        new = score_rows("majority", t, preds, exs, n_split, opts, params=0)
        details[("majority", t)] = {"examples": exs, "predictions": preds, "source": source, "score": new[-1]["value"]}
        rows += new
    return pd.DataFrame(rows, columns=COLUMNS), details


def write_test_predictions(spec: ModelSpec, tasks: list[str], out_dir, data_dir=None, **options: Any) -> list[Path]:
    """Test-split predictions of ``spec`` in the leaderboard's format (tasks without a model skipped), each task
    in the pattern its model was trained with."""
    opts, written = EvalOptions(**options), []
    for path, ptasks in _by_path(spec, tasks).items():
        loaded = load_for_eval(path, device=opts.device)
        for t in ptasks:
            exs = read_split(t, "test", data_dir)
            preds, _ = _predict(loaded, t, exs, spec.pattern_for(t, opts.pattern_id), opts)
            written.append(write_submission(t, exs, preds, out_dir))
    return written


# ----------------------------------------------------------------------------------------------
# the stage (notebook 06)
# ----------------------------------------------------------------------------------------------

@dataclass
class EvalRun:
    """What :func:`run_eval` computed: the long-format ``results`` (also in ``eval/results.csv``), the task
    ``scores`` (numbers) and ``table`` (with intervals), the paired ``differences`` and the label-free
    ``fidelity`` (also CSVs in ``eval/``), per-(model, task) ``details`` (examples, predictions), the models and
    notes, the figures (also PNGs in ``eval/``) and any submission files written."""

    results: pd.DataFrame
    scores: pd.DataFrame
    table: pd.DataFrame
    differences: pd.DataFrame
    fidelity: pd.DataFrame
    details: dict
    specs: list[ModelSpec]
    notes: list[str]
    figures: dict[str, Any] = field(default_factory=dict)
    submission: list[Path] = field(default_factory=list)


def _fidelity_tasks(specs: list[ModelSpec], tasks: list[str]) -> list[str]:
    """The main tasks of ``tasks`` that have both a task teacher and a student."""
    paths = {s.name: s.paths for s in specs}
    return [t for t in tasks if t not in DIAGNOSTICS and all(t in paths.get(m, {}) for m in FIDELITY_MODELS)]


def _score(cfg, specs: list[ModelSpec], opts: dict[str, Any], log_fn) -> tuple[pd.DataFrame, dict, dict]:
    """Every model and the majority baseline on the dev examples; teachers and students also on the fidelity
    inputs. Returns (results, details, fidelity inputs)."""
    # the same sample whatever the run's seed: runs of several seeds are compared on the same inputs (their
    # spread is then the training's alone), and a shared prediction cache scores the teachers on them once
    unlabeled = fidelity_inputs(cfg.run_dir, _fidelity_tasks(specs, cfg.tasks), cfg.superglue_dir,
                                cfg.max_fidelity_examples)
    scored, details = evaluate_models(specs, cfg.tasks, cfg.superglue_dir, cfg.max_eval_examples, log_fn, unlabeled,
                                      **opts)
    majority, maj_details = majority_rows(cfg.tasks, cfg.superglue_dir, cfg.max_eval_examples, seed=cfg.seed,
                                          n_boot=cfg.bootstrap_samples)
    details.update(maj_details)
    return pd.concat([df for df in (scored, majority) if len(df)], ignore_index=True), details, unlabeled


def _submission(cfg, specs: list[ModelSpec], notes: list[str], opts: dict[str, Any], say) -> list[Path]:
    if not cfg.write_test_predictions:
        return []
    by_name = {s.name: s for s in specs}
    spec = by_name.get("teacher") or by_name.get("zero_shot")
    if spec is None:
        notes.append("no test predictions: they need the task teachers or the zero-shot teacher in `models`")
        return []
    written = write_test_predictions(spec, cfg.tasks, cfg.out_dir / "submission", cfg.superglue_dir, **opts)
    say(f"{spec.name}: test predictions written: {', '.join(p.name for p in written)}")
    return written


def run_eval(cfg, log_fn=print) -> EvalRun:
    """Notebook 06: evaluate the run's models (and the majority baseline) on the dev splits; write
    ``eval/results.csv``, ``summary.json``, ``predictions.jsonl``, ``differences.csv``, ``fidelity.csv``, the
    figures and (``write_test_predictions``) ``eval/submission/``; mark the stage complete."""
    say = log_fn or (lambda s: None)
    t0 = time.perf_counter()
    begin_stage(cfg)
    specs, notes = discover_models(cfg.run_dir, cfg.teacher, cfg.tasks, cfg.models, cfg.pattern_id)
    opts = dict(batch_size=cfg.batch_size, seed=cfg.seed, pattern_id=cfg.pattern_id, max_len=cfg.max_seq_len,
                bf16=cfg.bf16, device=get_device(cfg.device), n_boot=cfg.bootstrap_samples,
                prediction_cache=cfg.prediction_cache)
    results, details, unlabeled = _score(cfg, specs, opts, log_fn)
    write_results(results, cfg.run_dir)
    write_predictions(details, cfg.run_dir)
    diffs = differences(details, cfg.bootstrap_samples, cfg.seed)
    fidelity = fidelity_table(details, unlabeled, cfg.bootstrap_samples, cfg.seed)
    atomic_write_csv(artifact(cfg.run_dir, "eval", "differences.csv"), diffs)
    atomic_write_csv(artifact(cfg.run_dir, "eval", "fidelity.csv"), fidelity)
    names = [s.name for s in specs] + ["majority"]
    run = EvalRun(results, score_table(results, names), interval_table(results, names), diffs, fidelity, details,
                  specs, notes, submission=_submission(cfg, specs, notes, opts, say))
    run.figures = {"scores_per_task": scores_figure(run.scores),
                   "confusion": confusion_figure(details, [s.name for s in specs], cfg.tasks)}
    for name, fig in run.figures.items():
        if fig is not None:
            save_figure(fig, cfg.out_dir, name)
    mark_complete(cfg.out_dir, list(STAGES["eval"].files))
    say(f"evaluation: {time.perf_counter() - t0:.0f}s")
    return run


def wrong_examples(details: dict, n: int) -> pd.DataFrame:
    """Up to ``n`` examples per model and task that the model gets wrong (texts shortened; majority left out)."""
    rows = []
    for (name, task), d in details.items():
        if name == "majority":
            continue
        wrong = [(ex, p) for ex, p in zip(d["examples"], d["predictions"]) if p != ex.label]
        for ex, p in wrong[:n]:
            text = " | ".join(t if len(t) < 120 else t[:117] + "..." for t in example_texts(ex))
            rows.append({"model": name, "task": task, "idx": str(ex.idx), "gold": ex.label, "predicted": p,
                         "text": text})
    return pd.DataFrame(rows, columns=["model", "task", "idx", "gold", "predicted", "text"])
