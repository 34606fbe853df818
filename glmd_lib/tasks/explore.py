"""Notebook 06's error explorer: one model on one task, its confusion matrix and the examples it gets wrong.

Everything is read back from what :func:`~glmd_lib.tasks.evaluate.run_eval` wrote (``eval/predictions.jsonl``:
:func:`~glmd_lib.tasks.comparisons.read_predictions` for the confusion matrix of
:func:`~glmd_lib.tasks.figures.confusion`), so the explorer needs no model in memory. Each error is listed
with the teacher's and the student's choice scores on the same example (log-probabilities of the
verbalizers or candidates, in label order): where the student errs, did its teacher err too, and how sure
was it?
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from glmd_lib.explore import explorer
from glmd_lib.superglue.data import LABELS
from glmd_lib.superglue.data import example_texts as texts_of
from glmd_lib.tasks.comparisons import read_predictions
from glmd_lib.tasks.figures import confusion

COMPARED = ("teacher", "student")  # whose scores sit next to every error
PAGE = 10                          # errors per page of the explorer


def prediction_table(path: str | Path) -> pd.DataFrame:
    """Every record of a predictions file, one row each (values kept as written: labels may be bools,
    lists or strings, so no column is coerced)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    table = pd.DataFrame([json.loads(line) for line in lines if line.strip()], dtype=object)
    table["key"] = table["idx"].map(json.dumps)
    return table


def model_confusion(path: str | Path, task: str, model: str) -> pd.DataFrame | None:
    """The confusion matrix of ``model`` on ``task`` (None: not a classification task, or not scored)."""
    d = read_predictions(path).get((model, task))
    if d is None or task not in LABELS or task == "COPA":
        return None
    return confusion(task, d["examples"], d["predictions"])


def _scores(values: Any) -> str:
    return "" if not isinstance(values, list) else " ".join("—" if v is None else f"{v:.2f}" for v in values)


def error_table(table: pd.DataFrame, task: str, model: str, compared: Sequence[str] = COMPARED,
                texts: Mapping[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """The examples of ``task`` that ``model`` gets wrong: id, gold, prediction, and per model of
    ``compared`` its prediction and choice scores on that example (blank where it was not evaluated);
    ``texts[(task, idx as JSON)]``, when given, adds the example's text."""
    rows = table[(table["task"] == task)]
    own = rows[rows["model"] == model]
    wrong = own[own["prediction"].map(json.dumps) != own["label"].map(json.dumps)]
    out = pd.DataFrame({"idx": wrong["key"].values, "gold": wrong["label"].values,
                        "predicted": wrong["prediction"].values})
    for other in compared:
        theirs = rows[rows["model"] == other].set_index("key")
        out[f"{other} predicts"] = out["idx"].map(theirs["prediction"]) if len(theirs) else None
        out[f"{other} scores"] = out["idx"].map(theirs["scores"]).map(_scores) if len(theirs) else ""
    if texts is not None:
        out["text"] = [texts.get((task, k), "") for k in out["idx"]]
    return out


def example_texts(details: Mapping[tuple[str, str], Any], width: int = 200) -> dict[tuple[str, str], str]:
    """``{(task, idx as JSON): text}`` from ``run_eval``'s in-memory details (the predictions file keeps no
    text), shortened to ``width`` characters."""
    out = {}
    for (_, task), d in details.items():
        for ex in d["examples"]:
            text = " | ".join(texts_of(ex))
            out[(task, json.dumps(ex.idx))] = text[:width]  # a tuple id dumps as the list that was written
    return out


def _render(path: Path, table: pd.DataFrame, task: str, model: str, page: int,
            texts: Mapping[tuple[str, str], str] | None) -> list[Any]:
    errors = error_table(table, task, model, texts=texts)
    n = int((table["task"] == task).mul(table["model"] == model).sum())
    m = model_confusion(path, task, model)
    shown = errors.iloc[page * PAGE:(page + 1) * PAGE]
    head = (f"<b>{model} on {task}</b>: {len(errors)} errors of {n} examples; errors "
            f"{min(page * PAGE + 1, len(errors))}–{page * PAGE + len(shown)} below")
    return [head] + ([m] if m is not None else ["(no confusion matrix: not a classification task)"]) + [shown]


def error_explorer(path: str | Path, model: str = "student", task: str | None = None,
                   texts: Mapping[tuple[str, str], str] | None = None):
    """Pick a task and a model (and page through its errors): its confusion matrix and its errors, with
    the teacher's and the student's scores. Headless: ``model`` (else the first) on ``task`` (else the
    first), first page."""
    import ipywidgets as widgets

    path, table = Path(path), prediction_table(path)
    tasks, models = list(dict.fromkeys(table["task"])), list(dict.fromkeys(table["model"]))
    task = task if task in tasks else tasks[0]
    model = model if model in models else models[0]
    pick_task = widgets.Dropdown(options=tasks, value=task, description="task")
    pick_model = widgets.Dropdown(options=models, value=model, description="model")
    page = widgets.BoundedIntText(value=0, min=0, max=max(1, len(table) // PAGE), description="page")
    render = lambda t, m, p: _render(path, table, t, m, p, texts)  # noqa: E731
    return explorer([pick_task, pick_model, page], render, render(task, model, 0))
