"""The report reads artifacts from disk: scores with intervals and n, retention = student / task teacher,
dev-selected marks, the differences and fidelity tables, the labels paragraph, mean ± sd across seeds."""
import json

import pandas as pd
import pytest

from glmd_lib.artifacts import ArtifactError, artifact, is_complete, mark_complete
from glmd_lib.config.stages import ReportConfig
from glmd_lib.report import model_group, results_table, run_report, sizes_table, write_report

MODELS = [("majority", None, None, {"CB": 0.5, "RTE": 0.53, "BoolQ": 0.62, "AX-b": 0.0}),
          ("zero_shot", 1000, None, {"CB": 0.4, "RTE": 0.55}),
          ("teacher", 1000, "train_holdout", {"CB": 0.8, "RTE": 0.7}),
          ("student", 250, "dev", {"CB": 0.6, "RTE": 0.63})]


def _results(shift: float = 0.0, intervals: bool = True) -> pd.DataFrame:
    """notebook 06's long format: metric rows, then the task score with its interval and counts."""
    rows = []
    for model, params, select_on, scores in MODELS:
        for task, s in scores.items():
            s = s + shift
            metrics = {"mcc": s} if task == "AX-b" else {"accuracy": s, "f1": s / 2} if task == "CB" else {"accuracy": s}
            for m, v in metrics.items():
                rows.append({"model": model, "task": task, "metric": m, "value": v, "params": params})
            if intervals:
                score = sum(metrics.values()) / len(metrics)
                rows.append({"model": model, "task": task, "metric": "score", "value": score, "ci_low": score - 0.1,
                             "ci_high": score + 0.1, "n_examples": 16 if task == "CB" else 277,
                             "n_split": 56 if task == "CB" else 277, "params": params, "select_on": select_on})
    return pd.DataFrame(rows)


@pytest.fixture
def run_dir(tmp_path):
    (tmp_path / "eval").mkdir()
    _results().to_csv(tmp_path / "eval" / "results.csv", index=False)
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "summary.json").write_text(json.dumps({"vocab_size": 100, "kept": 64}))
    return tmp_path


def test_groups():
    assert [model_group(n) for n in ("majority", "teacher (zero-shot)", "teacher CB", "GLMD student CB")] == \
        ["majority", "zero-shot teacher", "task teacher", "GLMD student"]


@pytest.mark.parametrize("intervals", [True, False], ids=["notebook-06", "older results.csv"])
def test_results_table_and_retention(tmp_path, intervals):
    (tmp_path / "eval").mkdir()
    _results(intervals=intervals).to_csv(tmp_path / "eval" / "results.csv", index=False)
    t = results_table(tmp_path)
    assert t.loc["RTE", "retention"] == pytest.approx(0.63 / 0.7)
    assert t.loc["CB", "task teacher"] == pytest.approx((0.8 + 0.4) / 2)  # CB: mean of accuracy and macro-F1
    assert t.loc["CB", "retention"] == pytest.approx(0.45 / 0.6)
    # averages compare like with like: over the tasks every model has, and over all only where complete
    assert t.loc["average (CB, RTE)", "GLMD student"] == pytest.approx((0.45 + 0.63) / 2)
    assert t.loc["average (all main tasks)", "majority"] == pytest.approx((0.375 + 0.53 + 0.62) / 3)
    assert pd.isna(t.loc["average (all main tasks)", "task teacher"])
    assert pd.isna(t.loc["AX-b", "retention"]) and list(t.index)[-1] == "AX-b"
    sizes = sizes_table(tmp_path)
    assert sizes.loc["GLMD student", "share of teacher"] == pytest.approx(0.25)
    text = write_report(tmp_path).path.read_text()
    assert ("0.450 [0.350, 0.550] n=16 of 56 (dev-selected)" in text) == intervals


def _eval_extras(run_dir):
    pd.DataFrame([{"task": "RTE", "model_a": "student", "model_b": "teacher", "difference": -0.07, "ci_low": -0.15,
                   "ci_high": 0.01, "n_examples": 277, "verdict": "not distinguishable"},
                  {"task": "RTE", "model_a": "student", "model_b": "majority", "difference": 0.1, "ci_low": 0.02,
                   "ci_high": 0.18, "n_examples": 277, "verdict": "A better"}]).to_csv(run_dir / "eval" / "differences.csv",
                                                                                     index=False)
    pd.DataFrame([{"task": "RTE", "metric": m, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n_examples": 300,
                   "splits": "dev+test"} for m, v in (("agreement", 0.81), ("kl_teacher_student", 0.12))]
                 ).to_csv(run_dir / "eval" / "fidelity.csv", index=False)
    for stage, config in (("teachers", {"select_on": "train_holdout", "selection_fraction": 0.1,
                                        "max_selection_examples": 120}), ("stage2", {"select_by_dev": True})):
        (run_dir / stage).mkdir(exist_ok=True)
        (run_dir / stage / "config.json").write_text(json.dumps({"stage": stage, "config": config}))


def test_report_written(run_dir):
    _eval_extras(run_dir)
    (run_dir / "teachers" / "CB").mkdir(parents=True)
    (run_dir / "teachers" / "CB" / "metrics.json").write_text(json.dumps({"dev_score": 0.8}))
    (run_dir / "stage2" / "CB").mkdir(parents=True)
    (run_dir / "stage2" / "CB" / "metrics.json").write_text(json.dumps({"selection_score_2b": 0.61, "steps_2a": 3}))
    (run_dir / "stage2" / "CB" / "history.png").write_bytes(b"png")
    (run_dir / "stage1").mkdir()
    (run_dir / "stage1" / "metrics.json").write_text(json.dumps(
        {"steps": 300, "valid_top1_agreement": 0.2569, "valid_top1_agreement_low": 0.241,
         "valid_top1_agreement_high": 0.2712, "valid_student_ppl": 682.37, "valid_student_ppl_low": 562.04,
         "valid_student_ppl_high": 855.01, "valid_blocks": 64, "valid_teacher_ppl": 98.76}))
    report = write_report(run_dir, title="T")
    assert report.path == artifact(run_dir, "report", "report.md")
    text = report.path.read_text()
    assert text.startswith("# T") and "retention" in text and "| RTE |" in text and "kept" in text
    scores = text.split("## Dev scores")[1].split("##")[0]
    # every score with its interval and n; the cap and the dev-selected student said where they apply
    assert "| RTE | 0.530 [0.430, 0.630] n=277 | 0.550 [0.450, 0.650] n=277 | 0.700 [0.600, 0.800] n=277 | " \
           "0.630 [0.530, 0.730] n=277 (dev-selected) | 0.900 |" in scores
    assert "0.600 [0.500, 0.700] n=16 of 56 |" in scores
    diffs = text.split("## Which differences are real")[1].split("##")[0]
    assert "| RTE | student − teacher | -0.070 [-0.150, 0.010] n=277 | not distinguishable |" in diffs
    assert "| RTE | student − majority | 0.100 [0.020, 0.180] n=277 | student better |" in diffs
    assert "| RTE | 0.810 [0.760, 0.860] n=300 | 0.120 [0.070, 0.170] n=300 | dev+test |" in text
    assert "holdout of 10% of the train split (at most 120 examples)" in text
    assert "dev labels chose their checkpoints" in text and "never saw" not in text
    assert "Across seeds" not in text  # one run: no spread to show
    stage1 = text.split("## Stage 1 (unlabeled text)")[1].split("##")[0]  # held-out figures with their intervals
    assert "| valid_top1_agreement | 0.257 [0.241, 0.271] n=64 blocks |" in stage1
    assert "| valid_student_ppl | 682.4 [562.0, 855.0] n=64 blocks |" in stage1
    stage2 = text.split("## Stage 2 per task")[1]
    assert "| CB | 0.610 | 3 |" in stage2  # per-task metrics, through the registry (columns nobody reports dropped)
    assert "| task | after 2b | steps 2a |" in stage2  # headings of words that wrap: the table fits a notebook
    assert (run_dir / "report" / "scores.png").exists()
    assert (run_dir / "report" / "figures" / "stage2_CB_history.png").exists()  # copied: self-contained
    assert report.scores.loc["RTE", "retention"] == pytest.approx(0.63 / 0.7)
    assert report.text.loc["RTE", "GLMD student"].endswith("(dev-selected)")
    assert "](data:image/png;base64," in report._repr_markdown_()  # figures inlined for the notebook


def test_constant_predictions_are_named_in_the_report(run_dir):
    """A model answering one label for every example is flagged (the majority baseline always is, so never)."""
    rows = [{"model": m, "task": t, "idx": i, "group": i, "label": "entailment", "prediction": p(i), "pattern_id": 0}
            for t in ("RTE", "CB") for i in range(4)
            for m, p in (("majority", lambda i: "entailment"), ("teacher", lambda i: ["entailment", "neutral"][i % 2]),
                         ("student", lambda i: "not_entailment" if t == "RTE" else ["entailment", "neutral"][i % 2]))]
    (run_dir / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(run_dir).path.read_text().split("## Dev scores")[1].split("##")[0]
    assert "**Constant predictions** (these scores say nothing about the task): student answers " \
           "'not_entailment' for all 4 RTE examples." in text
    assert "majority answers" not in text and "teacher answers" not in text and "CB examples" not in text


def test_mean_and_sd_across_seed_runs(tmp_path):
    """seed-<k>/ sub-runs (or further run directories) give mean ± sd per score; the first run's tables stay."""
    from glmd_lib.tasks.seeds import pooled_results, seed_runs, seed_summary

    for k, shift in enumerate((0.0, 0.02, 0.04)):
        (tmp_path / f"seed-{k}" / "eval").mkdir(parents=True)
        _results(shift).to_csv(tmp_path / f"seed-{k}" / "eval" / "results.csv", index=False)
    (tmp_path / "seed-x").mkdir()  # not a seed directory
    assert [r.name for r in seed_runs(tmp_path)] == ["seed-0", "seed-1", "seed-2"]
    summary = seed_summary(pooled_results(seed_runs(tmp_path))).set_index(["task", "model"])
    assert summary.loc[("RTE", "teacher"), "mean"] == pytest.approx(0.72)
    assert summary.loc[("RTE", "teacher"), "sd"] == pytest.approx(0.02) and summary.loc[("RTE", "teacher"), "seeds"] == 3
    report = write_report(tmp_path, title="S")
    text = report.path.read_text()
    assert "## Across seeds" in text and "0.720 ± 0.020 (3 seeds)" in text
    assert "0.700 [0.600, 0.800] n=277" in text.split("## Dev scores")[1].split("##")[0]  # seed-0's intervals
    assert report.runs[0].name == "seed-0" and report.seeds.loc["RTE", "task teacher"] == "0.720 ± 0.020 (3 seeds)"
    # one results.csv holding several seeds in a `seed` column
    other = tmp_path / "pooled"
    (other / "eval").mkdir(parents=True)
    pd.concat([_results(0.0).assign(seed=0), _results(0.04).assign(seed=1)]).to_csv(other / "eval" / "results.csv",
                                                                                     index=False)
    assert seed_summary(pooled_results([other])).set_index(["task", "model"]).loc[("RTE", "teacher"), "sd"] == \
        pytest.approx(0.04 / 2 ** 0.5)


def test_run_report_needs_the_evaluation_and_marks_complete(run_dir):
    cfg = ReportConfig.resolve(profile="smoke", run_dir=str(run_dir), title="R")
    with pytest.raises(ArtifactError, match="06_superglue_eval"):
        run_report(cfg)
    mark_complete(run_dir / "eval", ["results.csv"])
    report = run_report(cfg)
    assert report.path.read_text().startswith("# R") and is_complete(run_dir / "report")


def test_run_report_needs_every_seed_evaluated(tmp_path):
    for k in (0, 1):
        (tmp_path / f"seed-{k}" / "eval").mkdir(parents=True)
        _results().to_csv(tmp_path / f"seed-{k}" / "eval" / "results.csv", index=False)
    mark_complete(tmp_path / "seed-0" / "eval", ["results.csv"])
    cfg = ReportConfig.resolve(profile="smoke", run_dir=str(tmp_path), title="R")
    with pytest.raises(ArtifactError, match="seed-1"):
        run_report(cfg)
    mark_complete(tmp_path / "seed-1" / "eval", ["results.csv"])
    assert "## Across seeds" in run_report(cfg).path.read_text()


def test_report_in_a_notebook_embeds_its_figures(run_dir):
    """The notebook shows report.md from another folder than its own (and a Jupyter server may not serve the
    run directory): every figure must come inlined, not as a path the browser cannot fetch."""
    _eval_extras(run_dir)
    report = write_report(run_dir, title="T")
    text = report.path.read_text()
    assert "](scores.png)" in text  # the file itself links relative to report.md
    shown = report._repr_markdown_()
    assert "](data:image/png;base64," in shown and "](scores.png)" not in shown
    assert str(report.path.parent) not in shown
