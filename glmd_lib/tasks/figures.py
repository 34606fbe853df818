"""Notebook 06's figures: dev scores per task and model, and confusion matrices per model and task.

Built on ``matplotlib.figure.Figure`` (no pyplot): the library draws without touching the notebook's
backend or global figure list; a notebook shows one with ``display(fig)``, and ``run_eval`` saves them as
PNGs in ``eval/`` for the report.
"""
from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from glmd_lib.superglue.data import DIAGNOSTICS, LABELS, Example


def confusion(task: str, examples: Sequence[Example], predictions: Sequence[Any]) -> pd.DataFrame:
    """Confusion matrix (rows: gold, columns: predicted) of a classification task."""
    labels = LABELS.get("RTE" if task in DIAGNOSTICS else task) or LABELS.get(task)
    m = pd.DataFrame(0, index=pd.Index([str(lab) for lab in labels], name="gold"),
                     columns=pd.Index([str(lab) for lab in labels], name="predicted"))
    for ex, p in zip(examples, predictions):
        m.loc[str(ex.label), str(p)] += 1
    return m


def scores_figure(scores: pd.DataFrame):
    """Bars of the task scores (rows: tasks, columns: models; the average rows are left out)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax = fig.subplots()
    scores.drop(index=[i for i in scores.index if str(i).startswith("average")]).plot.bar(ax=ax, rot=0, width=0.8)
    ax.set_ylabel("task score")
    ax.set_title("SuperGLUE dev scores (AX-b: MCC; AX-g: mean of parity and accuracy)")
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    return fig


def _draw_confusion(ax, m: pd.DataFrame, title: str) -> None:
    ax.imshow(m.values, cmap="Blues")
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            ax.text(c, r, str(m.iat[r, c]), ha="center", va="center", fontsize=8)
    short = [s[:6] for s in m.columns]
    ax.set_xticks(range(len(short)), short, fontsize=7, rotation=30)
    ax.set_yticks(range(len(short)), short, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.grid(False)


def confusion_figure(details: dict, models: list[str], tasks: list[str]):
    """One confusion matrix per model (rows) and classification task (columns; MultiRC per answer option);
    None when there is nothing to draw. ``details[(model, task)]`` holds examples and predictions."""
    from matplotlib.figure import Figure

    cls_tasks = [t for t in tasks if t in LABELS and t != "COPA"]
    if not cls_tasks or not models:
        return None
    fig = Figure(figsize=(2.6 * len(cls_tasks), 2.4 * len(models)))
    axes = fig.subplots(len(models), len(cls_tasks), squeeze=False)
    for i, name in enumerate(models):
        for j, task in enumerate(cls_tasks):
            ax, d = axes[i][j], details.get((name, task))
            ax.set_xticks([]), ax.set_yticks([])
            if d is None:
                ax.set_title(f"{name} · {task}\n(no model)", fontsize=8)
            else:
                _draw_confusion(ax, confusion(task, d["examples"], d["predictions"]), f"{name} · {task}")
    fig.tight_layout()
    return fig
