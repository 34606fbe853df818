"""The run report (notebook 07, :func:`run_report`): teachers vs. GLMD students, sizes, coverage, retention.

Everything is read from the run directory's artifacts, never from kernel state, and every path comes from
the artifact registry (:data:`glmd_lib.artifacts.STAGES`):

* ``eval/results.csv``        dev scores of every evaluated model (notebook 06), majority baselines included
* ``stage2/<TASK>/metrics.json``  the student's dev score after passes 2a and 2b (notebook 05)
* ``teachers/<TASK>/metrics.json`` the task teacher's dev score before/after fine-tuning (notebook 04)
* ``vocab/summary.json``, ``frequency/summary.json``, ``stage1/metrics.json``  sizes, coverage, stage-1 quality
* every stage's PNG plots, copied into ``report/figures/``

:func:`write_report` renders ``report/report.md`` (and ``scores.png`` beside it); notebook 07 shows the same.
"""
from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from glmd_lib.artifacts import STAGES, ArtifactError, artifact, atomic_write_text, mark_complete, read_json

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


def task_scores(run_dir: Path | str) -> pd.DataFrame:
    """One row per (model, task): the official task score (two-metric tasks averaged) and the parameters."""
    from glmd_lib.superglue.metrics import task_score

    path = artifact(run_dir, "eval", "results.csv")
    if not path.exists():
        return pd.DataFrame(columns=["model", "group", "task", "score", "params"])
    df = pd.read_csv(path)
    rows = []
    for (model, task), g in df.groupby(["model", "task"], sort=False):
        metrics = dict(zip(g["metric"], g["value"]))
        score = metrics["score"] if "score" in metrics else task_score(task, metrics)
        params = g["params"].dropna()
        rows.append({"model": model, "group": model_group(model), "task": task, "score": float(score),
                     "params": int(params.iloc[0]) if len(params) else None})
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


def sizes_table(run_dir: Path | str) -> pd.DataFrame:
    scores = task_scores(run_dir)
    if scores.empty:
        return pd.DataFrame()
    sizes = scores.dropna(subset=["params"]).groupby("group")["params"].max()
    out = sizes.reindex([g for g in GROUPS if g in sizes.index and g != "majority"]).to_frame("parameters")
    if "zero-shot teacher" in out.index or "task teacher" in out.index:
        teacher = out.loc[[g for g in ("task teacher", "zero-shot teacher") if g in out.index]].iloc[0, 0]
        out["share of teacher"] = out["parameters"] / teacher
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


STAGE2_COLUMNS = ["dev_score_stage1", "dev_score_2a", "dev_score_2b", "teacher_dev_score", "majority_dev_score",
                  "train_inputs", "steps_2a", "steps_2b", "select_by_dev"]


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


def render(run_dir: Path | str, title: str, table: pd.DataFrame, sizes: pd.DataFrame) -> str:
    """``report.md``'s text; writes its plots (``scores.png``, ``figures/``) into the report directory."""
    run_dir = Path(run_dir)
    out_dir = artifact(run_dir, "report", "report.md").parent
    s = stage_summaries(run_dir)
    lines = [f"# {title}", "", f"Run directory: `{run_dir}`", ""]
    lines += ["## Dev scores", "",
              "Official SuperGLUE metrics on the dev splits (two-metric tasks averaged). *retention* = GLMD "
              "student ÷ task teacher. Majority baselines use the full dev split; model scores may use a capped "
              "subset (see `eval/config.json`).", "", _md_table(table)]
    if plot_scores(table, out_dir / "scores.png"):
        lines += ["![dev scores](scores.png)", ""]
    lines += ["## Sizes", "", _md_table(sizes, "{:.3f}")]
    v = s.get("vocab") or {}
    if v:
        keys = ["vocab_size", "kept", "protected", "corpus_coverage", "superglue_coverage", "substitute_method"]
        keys += [k for k in v if "param" in k]
        lines += ["## Vocabulary compression", "", _md_table(_kv_table(v, [k for k in keys if k in v]))]
    st1 = s.get("stage1") or {}
    if st1:
        keys = [k for k in ("steps", "tokens_seen", "student_params", "teacher_params", "valid_kl",
                            "valid_top1_agreement", "valid_student_ppl", "valid_teacher_ppl") if k in st1]
        lines += ["## Stage 1 (unlabeled text)", "", _md_table(_kv_table(st1, keys))]
    if s.get("stage2"):
        # orient="index" with dtype=object keeps ints as ints (steps print as 30, not 30.000)
        st2 = pd.DataFrame.from_dict({t: {k: (m or {}).get(k) for k in STAGE2_COLUMNS} for t, m in s["stage2"].items()},
                                     orient="index", dtype=object)
        lines += ["## Stage 2 per task", "",
                  "Dev score of the student after stage 1 alone, after pass 2a (vocabulary KL on the task inputs) "
                  "and after pass 2b (soft task scores), next to its task teacher and the majority class.", "",
                  _md_table(st2.rename_axis("task"))]
    figures = collect_figures(run_dir, out_dir)
    if figures:
        lines += ["## Figures", ""] + [f"![{f.stem}](figures/{f.name})" for f in figures] + [""]
    return "\n".join(lines)


@dataclass(repr=False)
class Report:
    """What :func:`write_report` wrote; shows itself in a notebook as the rendered ``report.md``."""

    path: Path
    scores: pd.DataFrame  # :func:`results_table`
    sizes: pd.DataFrame  # :func:`sizes_table`

    def __repr__(self) -> str:
        return f"Report({str(self.path)!r})"

    def _repr_markdown_(self) -> str:
        # image links are relative to report.md; the notebook renders them from elsewhere
        return self.path.read_text(encoding="utf-8").replace("](", f"]({self.path.parent}/")


def write_report(run_dir: Path | str, title: str = "GLMD Workbench run") -> Report:
    """Render ``<run_dir>/report/report.md`` (plots beside it) from whatever stages the run has."""
    table, sizes = results_table(run_dir), sizes_table(run_dir)
    path = artifact(run_dir, "report", "report.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render(run_dir, title, table, sizes))
    return Report(path, table, sizes)


def run_report(cfg) -> Report:
    """Notebook 07's work (``cfg``: a :class:`~glmd_lib.config.stages.ReportConfig`): needs a finished
    evaluation (notebook 06), writes the report and marks the stage complete."""
    STAGES["eval"].require(cfg.run_dir)
    report = write_report(cfg.run_dir, cfg.title)
    cfg.save()
    mark_complete(report.path.parent, list(STAGES["report"].files))
    return report
