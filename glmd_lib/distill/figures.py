"""The figures the two distillation stages save next to their artifacts (``curves.png``, ``stage2_scores.png``).

The stages draw them themselves (not the notebooks), so a run from the command line or the pipeline leaves
the same files as one from Jupyter, and the report (which collects every stage's PNGs) finds them. They are
plain :class:`matplotlib.figure.Figure` objects, not pyplot ones: no GUI backend and no global figure state,
so they work headless and under ``accelerate launch``. :class:`LiveLossPlot` is the exception: a notebook's
live curve while a stage trains (an ``on_log`` hook of :class:`glmd_lib.trainer.Trainer`), shown, not saved.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd
from matplotlib.figure import Figure

# scores on the split that chose the checkpoints (select_on: a holdout carved from train by default, dev only
# when asked); dev itself is scored once per final model in notebook 06
STAGE2_BARS = {"majority_selection_score": ("majority", "#cccccc"),
               "selection_score_stage1": ("stage-1 student", "#999999"),
               "selection_score_2a": ("after 2a", "#8fb8de"), "selection_score_2b": ("after 2b", "#3b75af"),
               "teacher_selection_score": ("task teacher", "#d62728")}


def stage1_curves(history: pd.DataFrame) -> Figure:
    """Stage 1's ``history.csv``: the trained ``T^2 KL``, the student's cross-entropy (logged only), the LR."""
    fig = Figure(figsize=(13, 3.5), layout="tight")
    axes = fig.subplots(1, 3)
    panels = [("loss", "distillation loss (T² KL)", "C0"), ("ce", "student cross-entropy (logged only)", "C1"),
              ("lr", "learning rate", "C2")]
    for ax, (col, title, color) in zip(axes, panels):
        if col in history:
            ax.plot(history["step"], history[col], color=color)
        ax.set_title(title)
        ax.set_xlabel("step")
    return fig


def stage2_scores(table: pd.DataFrame, histories: Mapping[str, pd.DataFrame]) -> Figure:
    """Selection-split scores per task (majority, stage-1 student, after 2a/2b, task teacher) and each task's training loss
    relative to each pass's first step (2a, then 2b, on one axis)."""
    fig = Figure(figsize=(12, 3.8), layout="tight")
    bars, curves = fig.subplots(1, 2)
    cols = [c for c in STAGE2_BARS if c in table and table[c].notna().any()]
    if cols:
        table[cols].astype(float).rename(columns={c: STAGE2_BARS[c][0] for c in cols}).plot.bar(
            ax=bars, rot=0, color=[STAGE2_BARS[c][1] for c in cols])
    else:  # select_on='last': no split scored any checkpoint, so there is nothing to draw
        bars.text(0.5, 0.5, "no selection split (select_on='last')", ha="center", va="center",
                  transform=bars.transAxes)
    bars.set_ylim(0, 1)
    bars.set_xlabel("")
    bars.set_title("score on the selection split (select_on)")
    if cols:
        bars.legend(fontsize=8, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    for task, h in histories.items():
        offset = max(h.loc[h["pass"] == "2a", "step"], default=0)  # 0: pass 2a skipped
        x = h["step"] + (h["pass"] == "2b") * offset
        curves.plot(x, h["loss"] / h.groupby("pass")["loss"].transform("first"), label=task)
        curves.axvline(offset + 0.5, color="#999999", lw=0.8)
    curves.set_xlabel("step (2a, then 2b)")
    curves.set_title("training loss relative to each pass's first step")
    if histories:
        curves.legend()
    return fig


class LiveLossPlot:
    """An ``on_log`` callback that redraws the loss curve in a notebook every ``every`` steps."""

    def __init__(self, keys: tuple[str, ...] = ("loss",), every: int = 5, title: str = "training loss"):
        self.keys, self.every, self.title = keys, every, title
        self.rows: list[dict[str, Any]] = []
        self.handle = None

    def __call__(self, row: dict[str, Any]) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.rows.append(row)
        # every step at first (a short run still shows a curve), then every ``every`` steps
        if len(self.rows) > self.every and len(self.rows) % self.every:
            return
        fig, ax = plt.subplots(figsize=(7, 3))
        steps = [r["step"] for r in self.rows]
        for k in self.keys:
            ax.plot(steps, [r.get(k, math.nan) for r in self.rows], marker="o", markersize=3, label=k)
        ax.set_xlabel("step"), ax.set_title(self.title), ax.legend()
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)
