"""``<D>/compare/results.csv``: one row per method x task x seed, read from the runs' own artifacts, and the views
of it (the paper-style table, paired differences against GLMD and against the untrained student).

Per row: the dev score (``value``) with its bootstrap interval and ``n`` (``eval/results.csv``), the label-free
fidelity to the task teacher (``eval/fidelity.csv``: agreement, KL), the student's parameters, stage-1 tokens
(``stage1/metrics.json``), the forward FLOPs per token counted from the model's config
(:mod:`glmd_lib.models.flops`) and its measured forward tokens/s (stage 1's held-out evaluation timed the student
and the teacher on the same blocks, so nothing is timed again; both at stage 1's ``seq_len``; a masked-LM run has
no such evaluation, so no tokens/s), the wall time of the run's own notebooks (``pipeline/*.json``; the shared
stages are not counted: they are paid once for all rows), and which signals the method uses: gold labels (as stage
2's ``metrics.json`` recorded them, else the registry) and intermediate layers (the registry).

Reference rows: ``teacher`` (the one task-teacher set, as the first method's run of each seed scored it) and
``untrained`` (the initialised student, :mod:`glmd_lib.compare.grid`). A sweep point's rows carry its keep rate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from glmd_lib.compare.grid import TEACHER, UNTRAINED, UNTRAINED_CSV, UNTRAINED_PREDICTIONS, RunPoint, points, \
    run_dir
from glmd_lib.config.stages import CompareConfig
from glmd_lib.distill.methods import METHODS
from glmd_lib.models.flops import flops_per_token
from glmd_lib.superglue.data import DIAGNOSTICS
from glmd_lib.tasks.comparisons import DIFF_COLUMNS, differences, read_predictions
from glmd_lib.tasks.intervals import mean_sd

COLUMNS = ["method", "run", "seed", "keep_rate", "task", "value", "ci_low", "ci_high", "n", "agreement",
           "kl_teacher_student", "params", "flops_per_token", "infer_tokens_per_s", "stage1_tokens", "wall_s",
           "uses_gold_labels", "uses_intermediate_layers"]
MAIN_METHODS = tuple(CompareConfig.profiles["demo"]["methods"])  # the eight; the others are ablations


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _scores(csv: Path, model: str) -> pd.DataFrame:
    df = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["model", "task", "metric"])
    return df[(df.model == model) & (df.metric == "score") & ~df.task.isin(DIAGNOSTICS)]


def _fidelity(run: Path) -> dict[tuple[str, str], float]:
    path = run / "eval" / "fidelity.csv"
    return {} if not path.exists() else {(r.task, r.metric): r.value for r in pd.read_csv(path).itertuples()}


def _cost(run: Path, model_dir: Path, speed_key: str) -> dict[str, Any]:
    """``flops_per_token`` of the model in ``model_dir`` and ``infer_tokens_per_s`` (``speed_key`` of the run's
    ``stage1/metrics.json``), both at the run's stage-1 ``seq_len``; None where an artifact is missing."""
    seq_len = _json(run / "stage1" / "config.json").get("config", {}).get("seq_len")
    flops = flops_per_token(model_dir, seq_len) if seq_len and (model_dir / "config.json").exists() else None
    return {"flops_per_token": flops, "infer_tokens_per_s": _json(run / "stage1" / "metrics.json").get(speed_key)}


def _wall(run: Path) -> float:
    return round(sum(_json(p).get("seconds", 0.0) for p in sorted((run / "pipeline").glob("*.json"))), 1)


def time_table(root: str | Path) -> pd.DataFrame:
    """Where a comparison's time went: seconds per notebook (columns ``00``..``08``) of the shared parts (``D``
    itself, each vocabulary variant) and of every run, from the pipeline records of their last execution, with
    each row's ``total``; a notebook that was linked in or not run is blank."""
    root, rows = Path(root), {}
    places = [("shared", root), *((f"vocabulary {v.name}", v) for v in sorted((root / "variants").glob("*"))),
              *((f"{r.parent.name} {r.name}", r) for r in sorted((root / "runs").glob("*/seed-*")))]
    for name, where in places:
        seconds = {p.stem[:2]: _json(p).get("seconds") for p in sorted((where / "pipeline").glob("*.json"))}
        if seconds:
            rows[name] = seconds
    table = pd.DataFrame.from_dict(rows, orient="index").sort_index(axis=1)
    return table.assign(total=table.sum(axis=1).round(1)).rename_axis("run")


def _rows(scores: pd.DataFrame, base: dict[str, Any], extra=lambda task: {}) -> list[dict[str, Any]]:
    return [{**base, "task": r.task, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n_examples,
             "params": r.params, **extra(r.task)} for r in scores.itertuples()]


def method_rows(run: Path, point: RunPoint) -> list[dict[str, Any]]:
    """The student rows of one method run (empty where its evaluation is missing)."""
    method, fid = METHODS[point.method], _fidelity(run)
    base = {"method": point.name if point.keep_rate is not None else point.method, "run": str(run),
            "seed": point.seed, "keep_rate": point.keep_rate, "uses_intermediate_layers": method.uses_intermediate_layers,
            "stage1_tokens": _json(run / "stage1" / "metrics.json").get("tokens_seen"), "wall_s": _wall(run),
            **_cost(run, run / "stage1" / "student", "student_tokens_per_s")}

    def extra(task: str) -> dict[str, Any]:
        gold = _json(run / "stage2" / task / "metrics.json").get("gold_labels_in_loss", method.uses_gold_labels)
        return {"agreement": fid.get((task, "agreement")), "kl_teacher_student": fid.get((task, "kl_teacher_student")),
                "uses_gold_labels": bool(gold)}
    return _rows(_scores(run / "eval" / "results.csv", "student"), base, extra)


def reference_rows(root: Path, cfg: CompareConfig, seed: int) -> list[dict[str, Any]]:
    """``teacher`` (from the first method run of ``seed`` that has an evaluation) and ``untrained``."""
    rows = []
    for m in cfg.methods:
        run = run_dir(root, m, seed)
        teacher = _scores(run / "eval" / "results.csv", "teacher")
        if len(teacher):
            rows = _rows(teacher, {"method": TEACHER, "run": str(run / "teachers"), "seed": seed,
                                   "uses_gold_labels": True, "uses_intermediate_layers": False},
                         lambda task: _cost(run, run / "teachers" / task / "model", "teacher_tokens_per_s"))
            break
    run = run_dir(root, UNTRAINED, seed)
    return rows + _rows(_scores(run / UNTRAINED_CSV, UNTRAINED), {
        "method": UNTRAINED, "run": str(run), "seed": seed, "stage1_tokens": 0, "wall_s": _wall(run),
        "uses_gold_labels": False, "uses_intermediate_layers": False,
        **_cost(run, run / "stage1" / "student", "student_tokens_per_s")})


def collect(root: str | Path, cfg: CompareConfig) -> tuple[pd.DataFrame, list[str]]:
    """Every run of ``cfg`` under ``root`` as rows (:data:`COLUMNS`), and notes on the runs not (yet) evaluated."""
    root, rows, notes = Path(root), [], []
    for seed in cfg.seeds:
        rows += reference_rows(root, cfg, seed)
    for p in points(cfg):
        got = method_rows(p.dir(root), p)
        rows += got
        if not got:
            notes.append(f"{p.name} seed {p.seed}: no evaluation in {p.dir(root)} (run glmd compare)")
    return pd.DataFrame(rows, columns=COLUMNS), notes


def _cell(values: list[float], first: pd.Series | None) -> str:
    mean, sd, n = mean_sd(values)
    text = f"{mean:.3f}" + (f" ± {sd:.3f}" if n > 1 else "")
    if first is not None and not math.isnan(first.ci_low):
        text += f" [{first.ci_low:.3f}, {first.ci_high:.3f}]"
    return text


def summary_table(results: pd.DataFrame, methods: list[str] | None = None) -> pd.DataFrame:
    """The paper-style table: rows methods (references first), columns tasks, ``average`` (of each seed's task
    scores) and ``parameters``; cells ``mean ± sd [interval of the first seed]`` over seeds (no sd for one seed);
    each task's header gives its number of dev examples."""
    sweep = results.keep_rate.notna() & ~results.method.isin(list(METHODS))  # glmd-keep0.25 ..., not glmd(-vc)
    df = results[~sweep]
    order = [m for m in [TEACHER, UNTRAINED, *(methods or dict.fromkeys(df.method))] if m in set(df.method)]
    tasks = list(dict.fromkeys(df.task))
    out = {}
    for m in order:
        g = df[df.method == m].sort_values("seed")
        row = {t: _cell(g[g.task == t].value.tolist(), g[g.task == t].iloc[0]) if (g.task == t).any() else ""
               for t in tasks}
        row["average"] = _cell(g.groupby("seed").value.mean().tolist(), None)
        row["parameters"] = f"{int(g.params.dropna().iloc[0]):,}" if g.params.notna().any() else ""
        out[m] = row
    table = pd.DataFrame.from_dict(out, orient="index", columns=[*tasks, "average", "parameters"])
    return table.rename(columns=_with_n(df)).rename_axis("method")


def _with_n(df: pd.DataFrame) -> dict[str, str]:
    """Task column -> ``"CB (n=56)"``: every row of a task is scored on the same dev examples (a task whose rows
    differ in n, which a comparison never makes, keeps its bare name)."""
    out = {}
    for t, g in df.groupby("task"):
        ns = set(g.n.dropna().astype(int))
        if len(ns) == 1:
            out[t] = f"{t} (n={ns.pop()})"
    return out


def _predictions(run: Path, method: str) -> tuple[Path, str]:
    """Where a row's dev predictions are and the model name they carry there."""
    if method == UNTRAINED:
        return run / UNTRAINED_PREDICTIONS, UNTRAINED
    return run / "eval" / "predictions.jsonl", "student"


def paired_differences(results: pd.DataFrame, reference: str = "glmd", n_boot: int = 1000) -> pd.DataFrame:
    """Per method, task and seed: score(method) − score(``reference``) on the same dev examples (both runs'
    predictions), by the paired bootstrap of :func:`glmd_lib.tasks.comparisons.differences`; "not distinguishable"
    when the interval contains 0. ``reference``: ``glmd`` (what the method changes) or ``untrained`` (what the
    method adds over the initialised student); the untrained row is never a method here."""
    by_key = {}
    for r in results[results.method != TEACHER].itertuples():
        path, model = _predictions(Path(r.run), r.method)
        if path.exists():
            by_key[(r.method, r.seed)] = (path, model)
    frames = []
    for (method, seed), (path, model) in by_key.items():
        ref = by_key.get((reference, seed))
        if method in (reference, UNTRAINED) or ref is None:
            continue
        mine, theirs = read_predictions(path), read_predictions(ref[0])
        details = {**{(method, t): d for (m, t), d in mine.items() if m == model},
                   **{(reference, t): d for (m, t), d in theirs.items() if m == ref[1]}}
        frames.append(differences(details, n_boot, seed, pairs=((method, reference),)).assign(seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*DIFF_COLUMNS, "seed"])
