"""Notebook 08's one call: :func:`comparison` reads every run of a comparison into ``<D>/compare/``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from glmd_lib.artifacts import atomic_write_csv, mark_complete, save_figure
from glmd_lib.compare.figures import sweep_figure, sweep_points
from glmd_lib.compare.grid import UNTRAINED
from glmd_lib.compare.results import MAIN_METHODS, collect, paired_differences, summary_table, time_table
from glmd_lib.config.stages import CompareConfig

FILES = ["config.json", "results.csv", "table.csv", "differences.csv", "differences_untrained.csv", "times.csv"]


@dataclass
class Comparison:
    """``results`` (also ``compare/results.csv``), the paper-style ``table`` of the main methods, the ``ablations``
    table (GLMD and its ablations), the paired differences against GLMD (``differences``) and against the untrained
    student (``gains``: what each method adds), the ``sweep`` points and their figures against parameters
    (``figure``) and against inference tokens/s (``speed_figure``), the seconds of every notebook of every run and
    shared part (``times``), and ``notes`` on runs not evaluated yet."""
    results: pd.DataFrame
    table: pd.DataFrame
    ablations: pd.DataFrame
    differences: pd.DataFrame
    gains: pd.DataFrame
    sweep: pd.DataFrame
    times: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)
    figure: Any = None
    speed_figure: Any = None


def comparison(cfg: CompareConfig) -> Comparison:
    """Collect the runs of ``cfg`` (``glmd compare`` made them under ``cfg.run_dir``), write ``compare/`` and mark it
    complete."""
    results, notes = collect(cfg.run_dir, cfg)
    main = [m for m in cfg.methods if m in MAIN_METHODS]
    ablations = ["glmd", *(m for m in cfg.methods + (cfg.ablations or []) if m not in MAIN_METHODS)]
    out = Comparison(results, summary_table(results, main), summary_table(results, ablations)
                     .drop(index=[m for m in ("teacher", "untrained")], errors="ignore"),
                     paired_differences(results, "glmd", cfg.bootstrap_samples),
                     paired_differences(results, UNTRAINED, cfg.bootstrap_samples), sweep_points(results),
                     time_table(cfg.run_dir), notes)
    out.figure, out.speed_figure = sweep_figure(results), sweep_figure(results, "infer_tokens_per_s")
    for name, df in (("results", results), ("table", out.table), ("differences", out.differences),
                     ("differences_untrained", out.gains), ("times", out.times)):
        atomic_write_csv(cfg.out_dir / f"{name}.csv", df, index=name in ("table", "times"))
    for name, fig in (("sweep", out.figure), ("sweep_speed", out.speed_figure)):
        if fig is not None:
            save_figure(fig, cfg.out_dir, name)
    mark_complete(cfg.out_dir, FILES)
    return out
