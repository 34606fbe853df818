"""What every notebook does before its work: :func:`start` (the one set-up cell), plus figure saving.

A notebook's set-up cell is ``cfg = start(XConfig, globals())``: the parameters cell's values (papermill
injects them) become a validated config, which is saved into the stage directory and shown as a table.
"""
from __future__ import annotations

from typing import Any, TypeVar

from glmd_lib.artifacts import begin_stage, save_figure  # noqa: F401  (save_figure: notebooks import it here)
from glmd_lib.config.base import StageConfig

C = TypeVar("C", bound=StageConfig)


def setup(precision: int = 4) -> None:
    """Pandas display settings and a quiet, readable matplotlib style for every notebook."""
    import matplotlib.pyplot as plt
    import pandas as pd

    pd.set_option("display.precision", precision)
    pd.set_option("display.max_colwidth", 80)
    plt.rcParams.update({"figure.figsize": (8, 4), "figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})


def start(config_class: type[C], namespace: dict[str, Any], *, precision: int = 4, show: bool = True) -> C:
    """Set up a notebook and return its config; call it as ``cfg = start(XConfig, globals())``.

    In order: display settings; the config from the notebook's parameter variables (profile defaults,
    then explicit values, validated before any work, so a typo fails here and not an hour later);
    :func:`~glmd_lib.artifacts.begin_stage`: a run directory another process writes into is refused, the
    stage's ``COMPLETE.json`` removed (a rerun is not complete until it finishes again, so neither the
    pipeline's resume nor a later stage trusts a half-rewritten directory) and the resolved config saved as
    ``<run_dir>/<stage>/config.json``; every core for torch; torch seeded with ``cfg.seed``; the config
    shown as a table (``show=False``: not shown).
    """
    import torch

    from glmd_lib.device import set_threads

    setup(precision)
    cfg = config_class.from_namespace(namespace)
    begin_stage(cfg)
    set_threads()
    torch.manual_seed(cfg.seed)
    if show:
        from IPython.display import display

        display(cfg)
    return cfg
