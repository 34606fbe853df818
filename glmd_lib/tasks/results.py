"""Notebook 06's results table (``eval/results.csv``, long format: :data:`glmd_lib.tasks.evaluate.COLUMNS`) and
the views of it: per-model averages (``eval/summary.json``), task scores as numbers and as text with intervals.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from glmd_lib.artifacts import artifact, atomic_write_csv, atomic_write_json
from glmd_lib.superglue.data import DIAGNOSTICS
from glmd_lib.superglue.metrics import overall_score
from glmd_lib.tasks.intervals import interval_cell


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


def interval_table(results: pd.DataFrame, models: list[str], every_metric: bool = False) -> pd.DataFrame:
    """Task scores as text, ``value [low, high] n=N`` (``n=N of M`` where capped); rows tasks (``every_metric``:
    (task, metric), the score last), columns ``models`` (those present, in that order)."""
    rows = results if every_metric else results[results.metric == "score"]
    keys = ["task", "metric"] if every_metric else ["task"]
    # (an older results.csv has no intervals: its cells show what there is)
    cells = {(*(getattr(r, k) for k in keys), r.model): interval_cell(
        r.value, *(getattr(r, k, None) for k in ("ci_low", "ci_high", "n_examples", "n_split")))
        for r in rows.itertuples()}
    index = list(dict.fromkeys(tuple(getattr(r, k) for k in keys) for r in rows.itertuples()))
    present = [m for m in dict.fromkeys(models) if m in set(rows.model)]
    return pd.DataFrame([[cells.get((*i, m), "") for m in present] for i in index],
                        index=pd.MultiIndex.from_tuples(index, names=keys) if every_metric
                        else pd.Index([i[0] for i in index], name="task"), columns=present)


def difference_table(diffs: pd.DataFrame) -> pd.DataFrame:
    """``eval/differences.csv`` to read: ``A − B`` with its paired interval and the verdict in the models' names
    (a difference is called only where its interval excludes 0)."""
    from glmd_lib.tasks.comparisons import verdict_text

    if diffs.empty:
        return pd.DataFrame()
    return pd.DataFrame({"task": diffs.task, "comparison": diffs.model_a + " − " + diffs.model_b,
                         "difference": [interval_cell(r.difference, r.ci_low, r.ci_high, r.n_examples)
                                        for r in diffs.itertuples()],
                         "verdict": [verdict_text(r) for r in diffs.itertuples()]}).set_index("task")


def fidelity_text(fidelity: pd.DataFrame) -> pd.DataFrame:
    """``eval/fidelity.csv`` to read: per task, agreement and KL(teacher ‖ student) with intervals and inputs."""
    if fidelity.empty:
        return pd.DataFrame()
    names = {"agreement": "agreement with the teacher", "kl_teacher_student": "KL(teacher ‖ student), nats"}
    cells = {(r.task, names.get(r.metric, r.metric)): interval_cell(r.value, r.ci_low, r.ci_high, r.n_examples)
             for r in fidelity.itertuples()}
    table = pd.Series(cells).unstack()[[names.get(m, m) for m in dict.fromkeys(fidelity.metric)]]
    table["inputs"] = fidelity.groupby("task", sort=False).splits.first()
    return table.reindex(list(dict.fromkeys(fidelity.task))).rename_axis("task")
