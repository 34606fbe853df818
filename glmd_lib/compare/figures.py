"""The sweep plot of notebook 08: dev score and fidelity against the student's parameters, one point per kept-
vocabulary rate (GLMD, first seed)."""
from __future__ import annotations

import pandas as pd

from glmd_lib.compare.grid import TEACHER, UNTRAINED


def sweep_points(results: pd.DataFrame) -> pd.DataFrame:
    """Per sweep point: keep rate, student parameters, mean dev score and mean agreement over the tasks."""
    sweep = results[results.keep_rate.notna() & ~results.method.isin([TEACHER, UNTRAINED])]
    if sweep.empty:
        return pd.DataFrame(columns=["keep_rate", "params", "score", "agreement"])
    return (sweep.groupby("keep_rate").agg(params=("params", "first"), score=("value", "mean"),
                                           agreement=("agreement", "mean")).reset_index().sort_values("params"))


def sweep_figure(results: pd.DataFrame):
    """Two panels (dev score, agreement with the task teacher) against parameters; None without a sweep."""
    import matplotlib.pyplot as plt

    pts = sweep_points(results)
    if pts.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col, label in zip(axes, ("score", "agreement"), ("dev score (mean over tasks)", "agreement with teacher")):
        ax.plot(pts.params, pts[col], marker="o")
        for r in pts.itertuples():
            ax.annotate(f"keep {r.keep_rate:g}", (r.params, getattr(r, col)), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("student parameters")
        ax.set_ylabel(label)
    fig.suptitle("GLMD: kept-vocabulary rate sweep (one seed)")
    fig.tight_layout()
    return fig
