"""The sweep plots of notebook 08: dev score and fidelity against the student's parameters and against its
inference speed (forward tokens/s, ``infer_tokens_per_s`` of ``results.csv``), one point per kept-vocabulary rate
(GLMD, first seed)."""
from __future__ import annotations

import pandas as pd

from glmd_lib.compare.grid import TEACHER, UNTRAINED

# the x axes a sweep can be plotted against: results.csv column -> axis label
X_AXES = {"params": "student parameters", "infer_tokens_per_s": "student forward tokens/s (stage-1 held-out text)"}
POINT_COLUMNS = ["keep_rate", "params", "flops_per_token", "infer_tokens_per_s", "score", "agreement"]


def sweep_points(results: pd.DataFrame) -> pd.DataFrame:
    """Per sweep point: keep rate, student parameters, FLOPs per token and tokens/s (one student per point), mean
    dev score and mean agreement over the tasks."""
    sweep = results[results.keep_rate.notna() & ~results.method.isin([TEACHER, UNTRAINED])]
    if sweep.empty:
        return pd.DataFrame(columns=POINT_COLUMNS)
    return (sweep.groupby("keep_rate").agg(params=("params", "first"), flops_per_token=("flops_per_token", "first"),
                                           infer_tokens_per_s=("infer_tokens_per_s", "first"),
                                           score=("value", "mean"), agreement=("agreement", "mean"))
            .reset_index().sort_values("params")[POINT_COLUMNS])


def sweep_figure(results: pd.DataFrame, x: str = "params"):
    """Two panels (dev score, agreement with the task teacher) against ``x`` (a key of :data:`X_AXES`); None
    without a sweep or without a value of ``x`` (a masked-LM run measures no tokens/s)."""
    import matplotlib.pyplot as plt

    if x not in X_AXES:
        raise ValueError(f"sweep_figure: x must be one of {sorted(X_AXES)}, got {x!r}")
    pts = sweep_points(results).dropna(subset=[x]).sort_values(x)
    if pts.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, col, label in zip(axes, ("score", "agreement"), ("dev score (mean over tasks)", "agreement with teacher")):
        ax.plot(pts[x], pts[col], marker="o")
        for r in pts.itertuples():
            ax.annotate(f"keep {r.keep_rate:g}", (getattr(r, x), getattr(r, col)), textcoords="offset points",
                        xytext=(4, 4))
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(label)
    fig.suptitle(f"GLMD: kept-vocabulary rate sweep (one seed), against {X_AXES[x].split(' (')[0]}")
    fig.tight_layout()
    plt.close(fig)  # shown where the notebook displays it, not where it was drawn
    return fig
