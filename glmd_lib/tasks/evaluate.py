"""SuperGLUE evaluation of any set of models on the dev splits (notebook 06).

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
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind
from glmd_lib.artifacts import atomic_write_json, atomic_write_text
from glmd_lib.tasks.scoring import score_clozes
from glmd_lib.superglue.data import DIAGNOSTICS, LABELS, has_split, read_split, subsample
from glmd_lib.superglue.metrics import majority_label, overall_score, task_metrics, task_score
from glmd_lib.superglue.patterns import build_cloze

COLUMNS = ["model", "task", "metric", "value", "params", "n_examples"]


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
    """The models asked for in ``which`` (zero_shot, teachers, students) that exist; plus notes on the rest."""
    run_dir = Path(run_dir)
    specs, notes = [], []
    for kind in which:
        if kind == "zero_shot":
            specs.append(ModelSpec("zero_shot", {"*": teacher}))
            continue
        sub, leaf, name = {"teachers": ("teachers", "model", "teacher"),
                           "students": ("stage2", "student", "student")}[kind]
        paths, missing = {}, []
        for task in sorted({model_task(t) for t in tasks}):
            folder = run_dir / sub / task / leaf
            if (folder / "config.json").exists():
                paths[task] = str(folder)
            else:
                missing.append(task)
        if paths:
            specs.append(ModelSpec(name, paths))
        if missing:
            nb = "04_teacher_finetune" if kind == "teachers" else "05_stage2_distillation"
            notes.append(f"no {name} for {', '.join(missing)} (expected {run_dir / sub}/<TASK>/{leaf}/; "
                         f"run notebook {nb} for them): skipped")
    return specs, notes


def load_for_eval(path: str, device: torch.device | str | None = None):
    """``(model, tokenizer, vocab_map)`` of a teacher name/folder or a student folder with vocab_map.json."""
    folder = Path(path)
    if folder.is_dir() and (folder / "vocab_map.json").exists():
        try:  # the student module knows its own format best
            from glmd_lib.models.student import load_student  # type: ignore[attr-defined]

            st = load_student(folder)
            model = st.model.to(device) if device is not None else st.model
            return model.eval(), st.tokenizer, st.vocab_map
        except ImportError:
            pass
        from glmd_lib.vocab.vocab_map import VocabMap  # type: ignore[attr-defined]

        model, tok = load_teacher(folder, device=device)
        return model, tok, VocabMap.load(folder, tok)
    model, tok = load_teacher(path, device=device)
    return model, tok, None


def evaluate_task(model, tokenizer, task: str, examples, vocab_map: Any = None, batch_size: int = 16,
                  pattern_id: int = 0, max_len: int = 256, bf16: bool = False) -> dict[str, Any]:
    """Metrics, score, predictions and scores of one model on one task's examples."""
    kind = model_kind(model.config)
    clozes = build_cloze(task, examples, tokenizer, kind=kind, pattern_id=pattern_id, max_len=max_len)
    scores = score_clozes(model, clozes, vocab_map=vocab_map, batch_size=batch_size, bf16=bf16)
    preds = [c.choices[int(torch.argmax(s))] if len(s) else None for c, s in zip(clozes, scores)]
    metrics = task_metrics(task, preds, examples)
    return {"metrics": metrics, "score": task_score(task, metrics), "predictions": preds, "scores": scores}


def _rows(name: str, task: str, metrics: dict[str, float], score: float, params: int | None, n: int) -> list[dict]:
    rows = [dict(model=name, task=task, metric=m, value=v, params=params, n_examples=n) for m, v in metrics.items()]
    rows.append(dict(model=name, task=task, metric="score", value=score, params=params, n_examples=n))
    return rows


def evaluate_models(specs: list[ModelSpec], tasks: list[str], data_dir=None, max_examples: int | None = None,
                    batch_size: int = 16, seed: int = 0, pattern_id: int = 0, max_len: int = 256,
                    bf16: bool = False, device=None, log_fn=print) -> tuple[pd.DataFrame, dict]:
    """Evaluate every spec on every task it has a model for; returns (rows, details).

    ``details[(model, task)]`` holds examples, predictions and scores (for confusion matrices and errors).
    Each model folder is loaded once, whatever the number of tasks it answers.
    """
    say = log_fn or (lambda s: None)
    rows, details = [], {}
    examples = {t: subsample(read_split(t, eval_split(t), data_dir), max_examples, seed=seed) for t in tasks}
    for spec in specs:
        by_path: dict[str, list[str]] = {}
        for t in tasks:
            p = spec.path_for(t)
            if p is not None:
                by_path.setdefault(p, []).append(t)
        for path, ptasks in by_path.items():
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


def write_results(results: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """``results.csv`` and ``summary.json`` in ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    csv = atomic_write_text(out_dir / "results.csv", results.to_csv(index=False))
    summ = atomic_write_json(out_dir / "summary.json", summarize(results))
    return csv, summ


# ----------------------------------------------------------------------------------------------
# leaderboard submission files
# ----------------------------------------------------------------------------------------------

SUBMISSION_NAMES = {"BoolQ": "BoolQ", "CB": "CB", "COPA": "COPA", "MultiRC": "MultiRC", "ReCoRD": "ReCoRD",
                    "RTE": "RTE", "WiC": "WiC", "WSC": "WSC", "AX-b": "AX-b", "AX-g": "AX-g"}


def submission_lines(task: str, examples, predictions) -> list[dict]:
    """Records in the leaderboard's format: ``{"idx", "label"}``, booleans as "true"/"false",
    MultiRC nested per paragraph and question."""
    if task == "MultiRC":
        paras: dict[int, dict[int, list]] = {}
        for ex, p in zip(examples, predictions):
            pi, qi, ai = ex.idx
            paras.setdefault(pi, {}).setdefault(qi, []).append({"idx": ai, "label": int(p)})
        return [{"idx": pi, "passage": {"questions": [{"idx": qi, "answers": ans} for qi, ans in qs.items()]}}
                for pi, qs in paras.items()]
    out = []
    for ex, p in zip(examples, predictions):
        label = str(p).lower() if isinstance(p, bool) else p
        out.append({"idx": ex.idx, "label": label})
    return out


def write_submission(task: str, examples, predictions, out_dir: str | Path) -> Path:
    """``<out_dir>/<Task>.jsonl`` for the leaderboard (zip the folder to submit)."""
    import json

    lines = submission_lines(task, examples, predictions)
    return atomic_write_text(Path(out_dir) / f"{SUBMISSION_NAMES[task]}.jsonl",
                             "\n".join(json.dumps(r) for r in lines) + "\n")


def predict_test(spec: ModelSpec, tasks: list[str], out_dir, data_dir=None, batch_size: int = 16,
                 pattern_id: int = 0, max_len: int = 256, bf16: bool = False, device=None) -> list[Path]:
    """Test-split predictions of ``spec`` written in the submission format (tasks without a model skipped)."""
    written = []
    for t in tasks:
        path = spec.path_for(t)
        if path is None:
            continue
        model, tok, vmap = load_for_eval(path, device=device)
        exs = read_split(t, "test", data_dir)
        clozes = build_cloze(t, exs, tok, kind=model_kind(model.config), pattern_id=pattern_id, max_len=max_len)
        scores = score_clozes(model, clozes, vocab_map=vmap, batch_size=batch_size, bf16=bf16)
        preds = [c.choices[int(torch.argmax(s))] for c, s in zip(clozes, scores)]
        written.append(write_submission(t, exs, preds, out_dir))
    return written


def confusion(task: str, examples, predictions) -> pd.DataFrame:
    """Confusion matrix (rows: gold, columns: predicted) of a classification task."""
    labels = LABELS.get(model_task(task)) or LABELS.get(task)
    m = pd.DataFrame(0, index=pd.Index([str(l) for l in labels], name="gold"),
                     columns=pd.Index([str(l) for l in labels], name="predicted"))
    for ex, p in zip(examples, predictions):
        m.loc[str(ex.label), str(p)] += 1
    return m
