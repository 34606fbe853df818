"""SuperGLUE evaluation of any set of models on the dev splits: ``run_eval(cfg)`` is notebook 06's work.

Models:
* ``zero_shot``: the pre-trained teacher, prompted with the task patterns, no training;
* ``teacher``: the task teachers of notebook 04, ``<run_dir>/teachers/<TASK>/model/`` (one per task);
* ``student``: the students of notebook 05, ``<run_dir>/stage2/<TASK>/student/`` (an HF model folder,
  plus ``vocab_map.json`` when the student has a compressed vocabulary);
* ``majority``: the most frequent training label (dev label when there is no train split, e.g. BoolQ
  here), scored on the *full* dev split: it costs nothing.

AX-b and AX-g are scored with RTE's patterns and, for task models, with the RTE model. Results are
long-format rows ``(model, task, metric, value, params, n_examples)``; one ``metric == "score"`` row per
task holds the task score (two-metric tasks averaged), which ``summarize`` turns into per-model averages.
Every prediction goes through :func:`glmd_lib.tasks.scoring.predict_clozes`, the one predict path.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from glmd_lib.artifacts import STAGES, artifact, atomic_write_csv, atomic_write_json, is_complete, mark_complete, \
    save_figure
from glmd_lib.device import get_device
from glmd_lib.models.student import load_student
from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind
from glmd_lib.superglue.data import DIAGNOSTICS, example_texts, has_split, read_split, subsample
from glmd_lib.superglue.metrics import majority_label, overall_score, task_metrics, task_score
from glmd_lib.superglue.patterns import build_cloze
from glmd_lib.tasks.figures import confusion_figure, scores_figure
from glmd_lib.tasks.scoring import predict_clozes
from glmd_lib.tasks.submission import write_submission

COLUMNS = ["model", "task", "metric", "value", "params", "n_examples"]
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
    """A model to evaluate: ``paths`` maps task -> folder (``"*"``: the same model for every task)."""

    name: str
    paths: dict[str, str] = field(default_factory=dict)

    def path_for(self, task: str) -> str | None:
        return self.paths.get(model_task(task)) or self.paths.get("*")


def discover_models(run_dir: str | Path, teacher: str, tasks: list[str], which: list[str]) -> tuple[list[ModelSpec], list[str]]:
    """The models asked for in ``which`` (zero_shot, teachers, students) that exist; plus notes on the rest
    (missing task models, and stages not marked complete whose models are used as found)."""
    specs, notes = [], []
    for kind in which:
        if kind == "zero_shot":
            specs.append(ModelSpec("zero_shot", {"*": teacher}))
            continue
        name, stage, leaf = TASK_MODELS[kind]
        paths, missing = {}, []
        for task in sorted({model_task(t) for t in tasks}):
            folder = artifact(run_dir, stage, leaf, task)
            if (folder / "config.json").exists():
                paths[task] = str(folder)
            else:
                missing.append(task)
        nb = STAGES[stage].notebook
        if paths:
            specs.append(ModelSpec(name, paths))
            if not is_complete(Path(run_dir) / stage):
                notes.append(f"{stage}/ is not marked complete (notebook {nb} interrupted?): its models are used "
                             f"as found")
        if missing:
            notes.append(f"no {name} for {', '.join(missing)} (expected {Path(run_dir) / stage}/<TASK>/{leaf}/; "
                         f"run notebook {nb} for them): skipped")
    return specs, notes


def load_for_eval(path: str, device: torch.device | str | None = None):
    """``(model, tokenizer, vocab_map)`` of a teacher name/folder, or of a student folder (``vocab_map.json``)."""
    folder = Path(path)
    if folder.is_dir() and (folder / "vocab_map.json").exists():
        st = load_student(folder, device=device)
        return st.model.eval(), st.tokenizer, st.vocab_map
    model, tok = load_teacher(path, device=device)
    return model, tok, None


def evaluate_clozes(model, task: str, clozes, examples, batch_size: int = 16, vocab_map: Any = None,
                    bf16: bool | None = None) -> dict[str, Any]:
    """Dev metrics of ``model`` on prepared clozes (with their examples): metrics, score, predictions, scores."""
    preds, scores = predict_clozes(model, clozes, vocab_map=vocab_map, batch_size=batch_size, bf16=bf16)
    metrics = task_metrics(task, preds, examples)
    return {"metrics": metrics, "score": task_score(task, metrics), "predictions": preds, "scores": scores}


def evaluate_task(model, tokenizer, task: str, examples, vocab_map: Any = None, batch_size: int = 16,
                  pattern_id: int = 0, max_len: int = 256, bf16: bool | None = None) -> dict[str, Any]:
    """Metrics, score, predictions and scores of one model on one task's examples."""
    kind = model_kind(model.config)
    clozes = build_cloze(task, examples, tokenizer, kind=kind, pattern_id=pattern_id, max_len=max_len)
    return evaluate_clozes(model, task, clozes, examples, batch_size, vocab_map, bf16)


def _rows(name: str, task: str, metrics: dict[str, float], score: float, params: int | None, n: int) -> list[dict]:
    rows = [dict(model=name, task=task, metric=m, value=v, params=params, n_examples=n) for m, v in metrics.items()]
    rows.append(dict(model=name, task=task, metric="score", value=score, params=params, n_examples=n))
    return rows


def _by_path(spec: ModelSpec, tasks: list[str]) -> dict[str, list[str]]:
    """The tasks of ``spec`` grouped by model folder, so each folder is loaded once."""
    out: dict[str, list[str]] = {}
    for t in tasks:
        p = spec.path_for(t)
        if p is not None:
            out.setdefault(p, []).append(t)
    return out


def evaluate_models(specs: list[ModelSpec], tasks: list[str], data_dir=None, max_examples: int | None = None,
                    batch_size: int = 16, seed: int = 0, pattern_id: int = 0, max_len: int = 256,
                    bf16: bool | None = None, device=None, log_fn=print) -> tuple[pd.DataFrame, dict]:
    """Evaluate every spec on every task it has a model for; returns (rows, details).

    ``details[(model, task)]`` holds examples, predictions and scores (for confusion matrices and errors).
    """
    say = log_fn or (lambda s: None)
    rows, details = [], {}
    examples = {t: subsample(read_split(t, eval_split(t), data_dir), max_examples, seed=seed) for t in tasks}
    for spec in specs:
        for path, ptasks in _by_path(spec, tasks).items():
            model, tok, vmap = load_for_eval(path, device=device)
            params = count_parameters(model)
            for t in ptasks:
                t0 = time.perf_counter()
                res = evaluate_task(model, tok, t, examples[t], vmap, batch_size, pattern_id, max_len, bf16)
                details[(spec.name, t)] = {"examples": examples[t], **res}
                rows += _rows(spec.name, t, res["metrics"], res["score"], params, len(examples[t]))
                say(f"{spec.name:>10} {t:<8} score {res['score']:.4f}  "
                    + ", ".join(f"{k} {v:.4f}" for k, v in res["metrics"].items())
                    + f"  ({len(examples[t])} ex, {time.perf_counter() - t0:.1f}s)")
            del model
    return pd.DataFrame(rows, columns=COLUMNS), details


def majority_predictions(task: str, examples, data_dir=None) -> tuple[Any, str]:
    """The majority baseline's constant prediction for ``task`` and where its label came from."""
    src = model_task(task)
    if has_split(src, "train", data_dir):
        return majority_label(read_split(src, "train", data_dir)), f"{src} train"
    return majority_label(examples), f"{task} {eval_split(task)} (no train split)"


def majority_rows(tasks: list[str], data_dir=None) -> tuple[pd.DataFrame, dict]:
    """Majority-class baseline on the full dev split of each task (ReCoRD: the first entity)."""
    rows, details = [], {}
    for t in tasks:
        exs = read_split(t, eval_split(t), data_dir)
        if t == "ReCoRD":
            preds, source = [ex.candidates[0] if ex.candidates else "" for ex in exs], "first entity"
        else:
            label, source = majority_predictions(t, exs, data_dir)
            preds = [label] * len(exs)
        metrics = task_metrics(t, preds, exs)
        details[("majority", t)] = {"examples": exs, "predictions": preds, "source": source,
                                    "metrics": metrics, "score": task_score(t, metrics)}
        rows += _rows("majority", t, metrics, task_score(t, metrics), 0, len(exs))
    return pd.DataFrame(rows, columns=COLUMNS), details


def summarize(results: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per model: task scores and their average (the eight main tasks only, as the leaderboard)."""
    out = {}
    scores = results[results.metric == "score"]
    for name, g in scores.groupby("model", sort=False):
        per_task = {r.task: float(r.value) for r in g.itertuples()}
        out[name] = {"tasks": per_task, "average": overall_score(per_task),
                     "average_tasks": sorted(t for t in per_task if t not in DIAGNOSTICS)}
    return out


def score_table(results: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """Task scores (rows: tasks; columns: ``models`` in that order, those present) plus ``average`` (each model
    over its own main tasks, as ``summary.json``) and ``average (common tasks)`` (only the main tasks every
    model has, so it compares like with like)."""
    summary = summarize(results)
    scores = results[results.metric == "score"].pivot_table(index="task", columns="model", values="value",
                                                            sort=False)
    scores = scores[[m for m in dict.fromkeys(models) if m in scores.columns]]
    common = [t for t in scores.index if t not in DIAGNOSTICS and scores.loc[t].notna().all()]
    scores.loc["average"] = [summary[m]["average"] for m in scores.columns]
    scores.loc["average (common tasks)"] = scores.loc[common].mean() if common else float("nan")
    return scores


def write_results(results: pd.DataFrame, run_dir: str | Path) -> tuple[Path, Path]:
    """``eval/results.csv`` and ``eval/summary.json`` of ``run_dir`` (atomically)."""
    csv = atomic_write_csv(artifact(run_dir, "eval", "results.csv"), results)
    summ = atomic_write_json(artifact(run_dir, "eval", "summary.json"), summarize(results))
    return csv, summ


def write_test_predictions(spec: ModelSpec, tasks: list[str], out_dir, data_dir=None, batch_size: int = 16,
                           pattern_id: int = 0, max_len: int = 256, bf16: bool | None = None,
                           device=None) -> list[Path]:
    """Test-split predictions of ``spec`` in the leaderboard's format (tasks without a model skipped)."""
    written = []
    for path, ptasks in _by_path(spec, tasks).items():
        model, tok, vmap = load_for_eval(path, device=device)
        for t in ptasks:
            exs = read_split(t, "test", data_dir)
            clozes = build_cloze(t, exs, tok, kind=model_kind(model.config), pattern_id=pattern_id, max_len=max_len)
            preds, _ = predict_clozes(model, clozes, vocab_map=vmap, batch_size=batch_size, bf16=bf16)
            written.append(write_submission(t, exs, preds, out_dir))
    return written


# ----------------------------------------------------------------------------------------------
# the stage (notebook 06)
# ----------------------------------------------------------------------------------------------

@dataclass
class EvalRun:
    """What :func:`run_eval` computed: the long-format ``results`` (also in ``eval/results.csv``), the task
    ``scores`` table, per-(model, task) ``details`` (examples, predictions), the models and notes, the
    figures (also saved as PNGs in ``eval/``) and any submission files written."""

    results: pd.DataFrame
    scores: pd.DataFrame
    details: dict
    specs: list[ModelSpec]
    notes: list[str]
    figures: dict[str, Any]
    submission: list[Path]


def run_eval(cfg, log_fn=print) -> EvalRun:
    """Notebook 06: evaluate the run's models (and the majority baseline) on the dev splits; write
    ``eval/results.csv``, ``summary.json``, the figures and (``write_test_predictions``) ``eval/submission/``;
    mark the stage complete."""
    say = log_fn or (lambda s: None)
    t0 = time.perf_counter()
    cfg.save()
    specs, notes = discover_models(cfg.run_dir, cfg.teacher, cfg.tasks, cfg.models)
    device = get_device(cfg.device)
    scored, details = evaluate_models(specs, cfg.tasks, cfg.superglue_dir, max_examples=cfg.max_eval_examples,
                                      batch_size=cfg.batch_size, seed=cfg.seed, pattern_id=cfg.pattern_id,
                                      max_len=cfg.max_seq_len, bf16=cfg.bf16, device=device, log_fn=log_fn)
    majority, maj_details = majority_rows(cfg.tasks, cfg.superglue_dir)
    details.update(maj_details)
    results = pd.concat([df for df in (scored, majority) if len(df)], ignore_index=True)
    write_results(results, cfg.run_dir)
    scores = score_table(results, [s.name for s in specs] + ["majority"])
    submission = []
    if cfg.write_test_predictions:
        by_name = {s.name: s for s in specs}
        spec = by_name.get("teacher") or by_name.get("zero_shot")
        if spec is None:
            notes.append("no test predictions: they need the task teachers or the zero-shot teacher in `models`")
        else:
            submission = write_test_predictions(spec, cfg.tasks, cfg.out_dir / "submission", cfg.superglue_dir,
                                                cfg.batch_size, cfg.pattern_id, cfg.max_seq_len, cfg.bf16, device)
            say(f"{spec.name}: test predictions written: {', '.join(p.name for p in submission)}")
    figures = {"scores_per_task": scores_figure(scores),
               "confusion": confusion_figure(details, [s.name for s in specs], cfg.tasks)}
    for name, fig in figures.items():
        if fig is not None:
            save_figure(fig, cfg.out_dir, name)
    mark_complete(cfg.out_dir, list(STAGES["eval"].files))
    say(f"evaluation: {time.perf_counter() - t0:.0f}s")
    return EvalRun(results, scores, details, specs, notes, figures, submission)


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
