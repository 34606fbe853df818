"""The run report (notebook 07, :func:`run_report`): every model's dev scores with their intervals, which
differences the intervals support, how closely each student follows its teacher, sizes, coverage, retention.

Everything is read from the run directory's artifacts, never from kernel state, and every path comes from
the artifact registry (:data:`glmd_lib.artifacts.STAGES`):

* ``eval/results.csv``        dev scores of every evaluated model with 95% intervals and example counts
  (notebook 06), the majority baseline included, and what chose each model's checkpoint
* ``eval/differences.csv``    paired bootstrap differences with a verdict; ``eval/fidelity.csv`` the label-free
  agreement and KL between each student and its task teacher
* ``teachers/config.json``, ``stage2/config.json``  what labels chose the checkpoints (one generated paragraph)
* ``stage2/<TASK>/metrics.json``, ``vocab/summary.json``, ``frequency/summary.json``, ``stage1/metrics.json``
* every stage's PNG plots, copied into ``report/figures/``

No sentence of the report claims a difference: the differences table says, per pair and task, whether the
interval of the difference excludes 0. Models whose checkpoint dev labels chose are marked *dev-selected*.
With several seeds (``seed-<k>/`` sub-runs, :mod:`glmd_lib.tasks.seeds`) the report adds mean ± sd per score;
its other tables are those of the first run.

:func:`write_report` renders ``report/report.md`` (and ``scores.png`` beside it); notebook 07 shows the same.
"""
from __future__ import annotations

import base64
import re
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from glmd_lib.artifacts import artifact, ArtifactError, atomic_write_text, begin_stage, mark_complete, read_json, STAGES
from glmd_lib.tasks.comparisons import constant_predictions, read_predictions
from glmd_lib.tasks.intervals import interval_cell
from glmd_lib.tasks.results import difference_table, fidelity_text
from glmd_lib.tasks.seeds import pooled_results, seed_cells, seed_runs, seed_summary
from glmd_lib.tasks.selection import labels_touched

GROUPS = ("majority", "zero-shot teacher", "task teacher", "GLMD student")


def _read(path: Path) -> Any:
    """A JSON artifact, or None where that stage has not run (the report also covers partial runs)."""
    try:
        return read_json(path)
    except ArtifactError:
        return None


def model_group(name: str) -> str:
    """Which of GROUPS an evaluated model belongs to, from the names notebook 06 gives them."""
    n = name.lower()
    if n.startswith("majority"):
        return "majority"
    if "student" in n or "glmd" in n or "stage2" in n:
        return "GLMD student"
    if "zero" in n:
        return "zero-shot teacher"
    if "teacher" in n:
        return "task teacher"
    return "other"


SCORE_FIELDS = ("ci_low", "ci_high", "n_examples", "n_split", "select_on")  # beside each score, where recorded


def _field(row: Any, key: str) -> Any:
    value = None if row is None else row.get(key)
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def task_scores(run_dir: Path | str) -> pd.DataFrame:
    """One row per (model, task): the official task score (two-metric tasks averaged), its interval and example
    counts, what chose the model's checkpoint, and the parameters."""
    from glmd_lib.superglue.metrics import task_score

    path = artifact(run_dir, "eval", "results.csv")
    if not path.exists():
        return pd.DataFrame(columns=["model", "group", "task", "score", "params", *SCORE_FIELDS])
    df = pd.read_csv(path)
    rows = []
    for (model, task), g in df.groupby(["model", "task"], sort=False):
        metrics = dict(zip(g["metric"], g["value"]))
        score = metrics["score"] if "score" in metrics else task_score(task, metrics)
        row = g[g.metric == "score"].iloc[0].to_dict() if "score" in metrics else None
        params = g["params"].dropna()
        rows.append({"model": model, "group": model_group(model), "task": task, "score": float(score),
                     "params": int(params.iloc[0]) if len(params) else None,
                     **{k: _field(row, k) for k in SCORE_FIELDS}})
    return pd.DataFrame(rows)


def results_table(run_dir: Path | str) -> pd.DataFrame:
    """Per task: majority, zero-shot teacher, task teacher, GLMD student, retention = student / task teacher."""
    scores = task_scores(run_dir)
    if scores.empty:
        return pd.DataFrame()
    best = scores[scores.group.isin(GROUPS)].groupby(["task", "group"])["score"].max().unstack("group")
    table = best.reindex(columns=[g for g in GROUPS if g in best.columns])
    # main tasks first, then an average over them (as the leaderboard), then the diagnostics
    main = [t for t in table.index if not t.startswith("AX-")]
    diag = [t for t in table.index if t.startswith("AX-")]
    rows = [table.loc[main]]
    if main:
        # averages only over tasks that every model column has, so the models are compared like for like
        common = [t for t in main if table.loc[t].notna().all()]
        if common and len(common) < len(main):
            rows.append(table.loc[common].mean().rename(f"average ({', '.join(common)})").to_frame().T)
        if table.loc[main].notna().all().any():
            rows.append(table.loc[main].mean(skipna=False).rename("average (all main tasks)").to_frame().T)
    table = pd.concat(rows + [table.loc[diag]])
    table.index.name = "task"
    if {"GLMD student", "task teacher"} <= set(table.columns):
        table["retention"] = table["GLMD student"] / table["task teacher"]
        # a ratio of Matthews correlations or parities means nothing: no retention for the diagnostics
        table.loc[[t for t in table.index if t.startswith("AX-")], "retention"] = float("nan")
    return table


def score_text(scores: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """:func:`results_table` as text: every score with its interval and n (``n=16 of 56`` where capped) and, where
    dev labels chose the model's checkpoint, *dev-selected*; averages and retention as plain numbers."""
    cells = {}
    for r in scores[scores.group.isin(GROUPS)].itertuples():
        mark = " (dev-selected)" if r.select_on == "dev" else ""
        cells[(r.task, r.group)] = interval_cell(r.score, r.ci_low, r.ci_high, r.n_examples, r.n_split) + mark
    out = table.astype(object).copy()
    for task in table.index:
        for col in table.columns:
            value = table.loc[task, col]
            out.loc[task, col] = cells.get((task, col)) or ("" if pd.isna(value) else f"{value:.3f}")
    return out


def sizes_table(run_dir: Path | str) -> pd.DataFrame:
    scores = task_scores(run_dir)
    if scores.empty:
        return pd.DataFrame()
    sizes = scores.dropna(subset=["params"]).groupby("group")["params"].max()
    out = sizes.reindex([g for g in GROUPS if g in sizes.index and g != "majority"]).to_frame("parameters")
    if "zero-shot teacher" in out.index or "task teacher" in out.index:
        teacher = out.loc[[g for g in ("task teacher", "zero-shot teacher") if g in out.index]].iloc[0, 0]
        out["share of teacher"] = out["parameters"] / teacher
    out["parameters"] = out["parameters"].astype(int).astype(object)  # printed as 1,000, not 1000.000
    return out


def stage_summaries(run_dir: Path | str) -> dict[str, Any]:
    per_task = {stage: {task: _read(p) for task, p in STAGES[stage].task_paths(run_dir, "metrics.json").items()}
                for stage in ("teachers", "stage2")}
    return {"frequency": _read(artifact(run_dir, "frequency", "summary.json")),
            "vocab": _read(artifact(run_dir, "vocab", "summary.json")),
            "stage1": _read(artifact(run_dir, "stage1", "metrics.json")),
            **per_task}


def _kv_table(d: dict[str, Any], keys: list[str]) -> pd.DataFrame:
    """A one-column table of selected keys; values keep their own types (ints stay ints)."""
    return pd.DataFrame({"value": pd.Series([d[k] for k in keys], index=pd.Index(keys, name=""), dtype=object)})


# stage 2's metrics.json keys and their column headings: short words that wrap, because eleven one-word
# headings like "selection_score_stage1" made the table wider than a notebook (cut off at the right)
STAGE2_COLUMNS = {"select_on": "chosen on", "selection_examples": "selection examples",
                  "selection_score_stage1": "stage 1 alone", "selection_score_2a": "after 2a",
                  "selection_score_2b": "after 2b", "teacher_selection_score": "task teacher",
                  "majority_selection_score": "majority", "train_inputs": "train inputs", "steps_2a": "steps 2a",
                  "steps_2b": "steps 2b", "select_by_dev": "chosen by dev"}  # select_by_dev: runs before select_on


def _md_cell(v: Any, floatfmt: str) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""  # that stage did not report it
    if isinstance(v, float):
        return floatfmt.format(v)
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)


def _md_table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    """A GitHub markdown table (pandas' to_markdown needs the optional tabulate package)."""
    if df.empty:
        return "_(nothing to show yet)_\n"
    df = df.reset_index()
    cells = [[_md_cell(v, floatfmt) for v in row] for row in df.itertuples(index=False)]
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"


def plot_scores(table: pd.DataFrame, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    cols = [c for c in GROUPS if c in table.columns]
    if table.empty or not cols:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(table)), 3.8))
    table[cols].plot.bar(ax=ax, rot=0, width=0.8)
    ax.set_xticklabels([textwrap.fill(str(t), 14) for t in table.index], fontsize=8)
    ax.set_ylabel("dev score")
    ax.set_xlabel("")
    ax.set_ylim(min(0.0, float(table[cols].min().min())), 1)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8, ncols=len(cols), loc="upper center", bbox_to_anchor=(0.5, 1.15))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def collect_figures(run_dir: Path | str, out_dir: Path) -> list[Path]:
    """Copy every earlier stage's PNG plots into ``report/figures/`` so the report is self-contained."""
    run_dir = Path(run_dir)
    figs = out_dir / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    copied = []
    for stage in STAGES.values():
        if stage.stage == "report":
            continue
        for png in stage.figures(run_dir):
            dest = figs / "_".join(png.relative_to(run_dir).parts)
            shutil.copyfile(png, dest)
            copied.append(dest)
    return copied


SCORES_TEXT = ("Official SuperGLUE metrics on the dev splits (two-metric tasks averaged), each with its 95% bootstrap "
               "interval and its number of examples (resampled by MultiRC question and AX-g pair); `n=16 of 56` marks "
               "a capped subset (`max_eval_examples`). Every model and the majority baseline are scored on the same "
               "examples, each task model in the pattern it was trained with. Averages over tasks and *retention* "
               "(GLMD student ÷ task teacher, a ratio of point estimates) carry no interval: whether two models "
               "differ is read from the next table, not from these numbers.")
DIFF_TEXT = ("Paired bootstrap of the difference of task scores on the same examples (95%). A verdict names a better "
             "model only where the interval excludes 0; *not distinguishable* means these dev examples cannot tell "
             "the two apart.")
FIDELITY_TEXT = ("How closely each student follows its task teacher, on unlabeled dev and test inputs no training step "
                 "saw (no label involved): the share of inputs where both predict the same, and KL(teacher ‖ student) "
                 "over the task's choices (0: identical). Bootstrap intervals over the inputs (MultiRC: questions).")


def _section(title: str, text: str | None, table: pd.DataFrame) -> list[str]:
    return [f"## {title}", ""] + ([text, ""] if text else []) + [_md_table(table)]


def _config(run_dir: Path, stage: str) -> dict[str, Any] | None:
    data = _read(artifact(run_dir, stage, "config.json"))
    return data.get("config", data) if isinstance(data, dict) else None


def _gold_tasks(run_dir: Path) -> list[str]:
    """Tasks whose stage-2 student had gold labels in a loss (``gold_labels_in_loss`` of its metrics.json)."""
    tasks = (_config(run_dir, "stage2") or {}).get("tasks") or []
    return [t for t in tasks if (_read(artifact(run_dir, "stage2", "metrics.json", t)) or {}).get("gold_labels_in_loss")]


def _eval_sections(run_dir: Path, table: pd.DataFrame, out_dir: Path) -> list[str]:
    """Dev scores with intervals (and their plot), the paired differences, the label-free fidelity."""
    lines = _section("Dev scores", SCORES_TEXT, score_text(task_scores(run_dir), table))
    predictions = artifact(run_dir, "eval", "predictions.jsonl")
    constant = constant_predictions(read_predictions(predictions)) if predictions.exists() else []
    if constant:
        lines += [f"**Constant predictions** (these scores say nothing about the task): {'; '.join(constant)}.", ""]
    if plot_scores(table, out_dir / "scores.png"):
        lines += ["![dev scores](scores.png)", ""]
    for name, title, text, view in (("differences.csv", "Which differences are real", DIFF_TEXT, difference_table),
                                    ("fidelity.csv", "Label-free fidelity: student vs. task teacher", FIDELITY_TEXT,
                                     fidelity_text)):
        path = artifact(run_dir, "eval", name)
        if path.exists():
            lines += _section(title, text, view(pd.read_csv(path)))
    return lines


def _seed_section(runs: list[Path]) -> tuple[list[str], pd.DataFrame]:
    cells = seed_cells(seed_summary(pooled_results([r for r in runs if artifact(r, "eval", "results.csv").exists()])))
    cells = cells.rename(columns=model_group)
    if cells.empty or not cells.apply(lambda c: c.str.contains("±", regex=False)).any().any():
        return [], pd.DataFrame()  # one seed: nothing to add
    text = (f"Mean ± sample standard deviation of each task score across seeds ({len(runs)} run director"
            f"{'y' if len(runs) == 1 else 'ies'}: {', '.join(f'`{r}`' for r in runs)}): what retraining moves. "
            f"The intervals above are those of the first run: what the choice of dev examples moves.")
    return _section("Across seeds", text, cells), cells


def _with_intervals(st1: dict[str, Any]) -> dict[str, Any]:
    """Stage 1's held-out agreement and perplexity as ``value [low, high] n=<blocks> blocks`` where the metrics
    carry their block-bootstrap intervals (runs before they did keep the bare values)."""
    out = dict(st1)
    for key, digits in (("valid_top1_agreement", 3), ("valid_student_ppl", 1)):
        if f"{key}_low" in st1 and key in st1:
            out[key] = interval_cell(st1[key], st1[f"{key}_low"], st1[f"{key}_high"], st1.get("valid_blocks"),
                                     digits=digits) + " blocks" * ("valid_blocks" in st1)
    return out


def _stage_sections(run_dir: Path, sizes: pd.DataFrame) -> list[str]:
    """Sizes, vocabulary compression, stage 1, stage 2 per task."""
    s = stage_summaries(run_dir)
    lines = ["## Sizes", "", _md_table(sizes, "{:.3f}")]
    v = s.get("vocab") or {}
    if v:
        keys = ["vocab_size", "kept", "protected", "corpus_coverage", "superglue_coverage", "substitute_method"]
        keys += [k for k in v if "param" in k]
        lines += ["## Vocabulary compression", "", _md_table(_kv_table(v, [k for k in keys if k in v]))]
    st1 = s.get("stage1") or {}
    if st1:
        keys = [k for k in ("steps", "tokens_seen", "student_params", "teacher_params", "valid_kl",
                            "valid_top1_agreement", "valid_student_ppl", "valid_teacher_ppl") if k in st1]
        lines += ["## Stage 1 (unlabeled text)", "", _md_table(_kv_table(_with_intervals(st1), keys))]
    if s.get("stage2"):
        # orient="index" with dtype=object keeps ints as ints (steps print as 30, not 30.000)
        st2 = pd.DataFrame.from_dict({t: {k: (m or {}).get(k) for k in STAGE2_COLUMNS} for t, m in s["stage2"].items()},
                                     orient="index", dtype=object).dropna(axis=1, how="all")
        lines += ["## Stage 2 per task", "",
                  "What notebook 05 recorded (`stage2/<task>/metrics.json`): the student's scores after stage 1 "
                  "alone, after pass 2a (vocabulary KL on the task inputs) and after pass 2b (soft task scores), "
                  "next to its task teacher and the majority class, on the split that chose its checkpoints (*chosen "
                  "on*: `select_on`); then the training inputs and the steps of each pass.", "",
                  _md_table(st2.rename(columns=STAGE2_COLUMNS).rename_axis("task"))]
    return lines


def render(run_dir: Path | str, title: str, table: pd.DataFrame, sizes: pd.DataFrame, out_dir: Path,
           runs: list[Path] | None = None) -> tuple[str, pd.DataFrame]:
    """``report.md``'s text and the across-seeds table; writes the plots (``scores.png``, ``figures/``) into
    ``out_dir``. ``run_dir``: the run whose tables are shown; ``runs``: every seed's run (default: that one)."""
    run_dir = Path(run_dir)
    where = f"Run directory: `{out_dir.parent}`" + (f" (tables of `{run_dir}`)" if run_dir != out_dir.parent else "")
    lines = [f"# {title}", "", where, "",
             labels_touched(_config(run_dir, "teachers"), _config(run_dir, "stage2"), _gold_tasks(run_dir)), ""]
    lines += _eval_sections(run_dir, table, out_dir)
    seed_lines, seeds = _seed_section(runs or [run_dir])
    lines += seed_lines + _stage_sections(run_dir, sizes)
    figures = collect_figures(run_dir, out_dir)
    if figures:
        lines += ["## Figures", ""] + [f"![{f.stem}](figures/{f.name})" for f in figures] + [""]
    return "\n".join(lines), seeds


@dataclass(repr=False)
class Report:
    """What :func:`write_report` wrote; shows itself in a notebook as the rendered ``report.md``."""

    path: Path
    scores: pd.DataFrame  # :func:`results_table` (numbers)
    sizes: pd.DataFrame  # :func:`sizes_table`
    text: pd.DataFrame  # :func:`score_text`: the scores with their intervals, as in report.md
    seeds: pd.DataFrame  # mean ± sd per task and model across seeds (empty for one run)
    runs: list[Path]  # the runs read (the first is the one whose tables are shown)

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r})"

    def _repr_markdown_(self) -> str:
        # report.md links its figures relative to itself; a notebook renders it from elsewhere (and a Jupyter
        # server may not serve the run directory at all), so the figures are embedded as data URIs
        return _IMAGE.sub(lambda m: _embedded(m, self.path.parent), self.path.read_text(encoding="utf-8"))


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def _embedded(match: re.Match, base: Path) -> str:
    """``![alt](file.png)`` with the PNG inlined (``data:image/png;base64,...``); a missing file stays a link."""
    png = base / match.group(2)
    if not png.is_file():
        return match.group(0)
    return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode('ascii')})"


def write_report(run_dir: Path | str, title: str = "GLMD Workbench run", more_runs: Sequence[Path | str] = ()) -> Report:
    """Render ``<run_dir>/report/report.md`` (plots beside it) from whatever stages the run has; with several
    seeds (``seed-<k>/`` sub-runs, or ``more_runs``) the first one's tables and mean ± sd across all."""
    runs = seed_runs(run_dir, more_runs) or [Path(run_dir)]
    table, sizes = results_table(runs[0]), sizes_table(runs[0])
    path = artifact(run_dir, "report", "report.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    text, seeds = render(runs[0], title, table, sizes, path.parent, runs)
    atomic_write_text(path, text)
    return Report(path, table, sizes, score_text(task_scores(runs[0]), table), seeds, runs)


def run_report(cfg) -> Report:
    """Notebook 07's work (``cfg``: a :class:`~glmd_lib.config.stages.ReportConfig`): needs a finished
    evaluation (notebook 06) in every run it reads, writes the report and marks the stage complete."""
    begin_stage(cfg)
    for run in seed_runs(cfg.run_dir, cfg.seed_runs) or [Path(cfg.run_dir)]:
        STAGES["eval"].require(run)
    report = write_report(cfg.run_dir, cfg.title, tuple(cfg.seed_runs))
    mark_complete(report.path.parent, list(STAGES["report"].files))
    return report
