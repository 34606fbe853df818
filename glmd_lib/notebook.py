"""Small conveniences shared by the notebooks (display settings, saving figures next to the artifacts)."""
from __future__ import annotations

from pathlib import Path

from glmd_lib.artifacts import atomic_path


def setup(precision: int = 4) -> None:
    """Pandas display settings and a quiet, readable matplotlib style for every notebook."""
    import matplotlib.pyplot as plt
    import pandas as pd

    pd.set_option("display.precision", precision)
    pd.set_option("display.max_colwidth", 80)
    plt.rcParams.update({"figure.figsize": (8, 4), "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})


def save_figure(fig, directory: Path | str, name: str) -> Path:
    """Save a figure as PNG into a stage directory (atomically), so reports can include it."""
    path = Path(directory) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path
