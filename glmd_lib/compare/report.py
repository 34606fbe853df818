"""Notebook 08's one call: :func:`comparison` reads every run of a comparison into ``<D>/compare/``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from glmd_lib.artifacts import atomic_write_csv, mark_complete, save_figure
from glmd_lib.compare.figures import sweep_figure, sweep_points
from glmd_lib.compare.results import MAIN_METHODS, collect, differences_vs_glmd, summary_table
from glmd_lib.config.stages import CompareConfig

FILES = ["config.json", "results.csv", "table.csv", "differences.csv"]


@dataclass
class Comparison:
    """``results`` (also ``compare/results.csv``), the paper-style ``table`` of the main methods, the ``ablations``
    table (GLMD and its ablations), the paired ``differences`` against GLMD, the ``sweep`` points and figure,
    and ``notes`` on runs not evaluated yet."""
    results: pd.DataFrame
    table: pd.DataFrame
    ablations: pd.DataFrame
    differences: pd.DataFrame
    sweep: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    figure: Any = None


def comparison(cfg: CompareConfig) -> Comparison:
    """Collect the runs of ``cfg`` (``glmd compare`` made them under ``cfg.run_dir``), write ``compare/`` and mark it
    complete."""
    results, notes = collect(cfg.run_dir, cfg)
    main = [m for m in cfg.methods if m in MAIN_METHODS]
    ablations = ["glmd", *(m for m in cfg.methods if m not in MAIN_METHODS)]
    out = Comparison(results, summary_table(results, main), summary_table(results, ablations)
                     .drop(index=[m for m in ("teacher", "untrained")], errors="ignore"),
                     differences_vs_glmd(results, cfg.bootstrap_samples), sweep_points(results), notes)
    out.figure = sweep_figure(results)
    for name, df in (("results", results), ("table", out.table), ("differences", out.differences)):
        atomic_write_csv(cfg.out_dir / f"{name}.csv", df, index=name == "table")
    if out.figure is not None:
        save_figure(out.figure, cfg.out_dir, "sweep")
    mark_complete(cfg.out_dir, FILES)
    return out
