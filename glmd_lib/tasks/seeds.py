"""Scores across seeds: mean ± standard deviation of every (model, task) score over repeated runs.

A bootstrap interval says how much the *dev examples* could move a score; rerunning with another seed says how
much *training* moves it (initialisation, data order, the capped subsets). The report shows both. Runs of one
experiment are found as

* the run directory itself, where it holds ``eval/results.csv``;
* its ``seed-<k>/`` sub-directories holding one (``glmd run -p seeds=[0,1,2]`` writes one per seed);
* any further run directories given (``ReportConfig.seed_runs``);

and a ``results.csv`` may itself hold several seeds in a ``seed`` column. The seed of a run without that
column is its evaluation's ``seed`` setting (``eval/config.json``), else its place in the list.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from glmd_lib.artifacts import artifact, read_json
from glmd_lib.tasks.intervals import mean_sd

SEED_DIR = re.compile(r"^seed-(\d+)$")


def seed_runs(run_dir: str | Path, extra: Sequence[str | Path] = ()) -> list[Path]:
    """The run directories of one experiment that hold an evaluation (see the module docstring), in order."""
    run_dir = Path(run_dir)
    subs = sorted((d for d in run_dir.glob("seed-*") if SEED_DIR.match(d.name)),
                  key=lambda d: int(SEED_DIR.match(d.name).group(1)))
    runs = [run_dir, *subs, *(Path(p) for p in extra)]
    return [r for r in dict.fromkeys(runs) if artifact(r, "eval", "results.csv").exists()]


def _run_seed(run: Path, position: int) -> int:
    config = artifact(run, "eval", "config.json")
    seed = read_json(config).get("config", {}).get("seed") if config.exists() else None
    return int(seed) if seed is not None else position


def pooled_results(runs: Sequence[str | Path]) -> pd.DataFrame:
    """Every run's ``results.csv`` in one table with a ``seed`` column (and ``run``, its directory)."""
    frames = []
    for i, run in enumerate(Path(r) for r in runs):
        df = pd.read_csv(artifact(run, "eval", "results.csv"))
        if "seed" not in df.columns:
            df["seed"] = _run_seed(run, i)
        frames.append(df.assign(run=str(run)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def seed_summary(pooled: pd.DataFrame) -> pd.DataFrame:
    """Per (task, model): the task score's mean, sample sd and number of seeds: one score per run and seed (two
    runs count twice even where both record the same seed number)."""
    if pooled.empty or "seed" not in pooled.columns:
        return pd.DataFrame(columns=["task", "model", "mean", "sd", "seeds"])
    scores = pooled[pooled.metric == "score"]
    replicate = [c for c in ("run", "seed") if c in scores.columns]
    rows = []
    for (task, model), g in scores.groupby(["task", "model"], sort=False):
        mean, sd, n = mean_sd(g.groupby(replicate)["value"].first().tolist())
        rows.append({"task": task, "model": model, "mean": mean, "sd": sd, "seeds": n})
    return pd.DataFrame(rows, columns=["task", "model", "mean", "sd", "seeds"])


def seed_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """``0.612 ± 0.021 (3 seeds)`` per task (rows) and model (columns)."""
    if summary.empty:
        return pd.DataFrame()
    text = summary.apply(lambda r: f"{r['mean']:.3f} ± {r['sd']:.3f} ({r['seeds']} seeds)" if r["seeds"] > 1
                         else f"{r['mean']:.3f} (1 seed)", axis=1)
    table = summary.assign(text=text).pivot(index="task", columns="model", values="text")
    return table.reindex(index=list(dict.fromkeys(summary.task)), columns=list(dict.fromkeys(summary.model)))
