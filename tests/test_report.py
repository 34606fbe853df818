"""The report reads artifacts from disk and computes retention = student / task teacher."""
import json

import pandas as pd
import pytest

from glmd_lib.artifacts import ArtifactError, artifact, is_complete, mark_complete
from glmd_lib.config.stages import ReportConfig
from glmd_lib.report import model_group, results_table, run_report, sizes_table, write_report


@pytest.fixture
def run_dir(tmp_path):
    rows = []
    for model, params, scores in [("majority", None, {"CB": 0.5, "RTE": 0.53, "BoolQ": 0.62, "AX-b": 0.0}),
                                  ("teacher (zero-shot)", 1000, {"CB": 0.4, "RTE": 0.55}),
                                  ("task teacher", 1000, {"CB": 0.8, "RTE": 0.7}),
                                  ("GLMD student", 250, {"CB": 0.6, "RTE": 0.63})]:
        for task, s in scores.items():
            rows.append({"model": model, "task": task, "metric": "accuracy", "value": s, "params": params})
            if task == "AX-b":
                rows[-1]["metric"] = "mcc"
            if task == "CB":  # a two-metric task: the score is their mean
                rows.append({"model": model, "task": task, "metric": "f1", "value": s / 2, "params": params})
    (tmp_path / "eval").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "eval" / "results.csv", index=False)
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "summary.json").write_text(json.dumps({"vocab_size": 100, "kept": 64}))
    return tmp_path


def test_groups():
    assert [model_group(n) for n in ("majority", "teacher (zero-shot)", "teacher CB", "GLMD student CB")] == \
        ["majority", "zero-shot teacher", "task teacher", "GLMD student"]


def test_results_table_and_retention(run_dir):
    t = results_table(run_dir)
    assert t.loc["RTE", "retention"] == pytest.approx(0.63 / 0.7)
    assert t.loc["CB", "task teacher"] == pytest.approx((0.8 + 0.4) / 2)  # CB: mean of accuracy and macro-F1
    assert t.loc["CB", "retention"] == pytest.approx(0.45 / 0.6)
    # averages compare like with like: over the tasks every model has, and over all only where complete
    assert t.loc["average (CB, RTE)", "GLMD student"] == pytest.approx((0.45 + 0.63) / 2)
    assert t.loc["average (all main tasks)", "majority"] == pytest.approx((0.375 + 0.53 + 0.62) / 3)
    assert pd.isna(t.loc["average (all main tasks)", "task teacher"])
    assert pd.isna(t.loc["AX-b", "retention"]) and list(t.index)[-1] == "AX-b"
    sizes = sizes_table(run_dir)
    assert sizes.loc["GLMD student", "share of teacher"] == pytest.approx(0.25)


def test_report_written(run_dir):
    (run_dir / "teachers" / "CB").mkdir(parents=True)
    (run_dir / "teachers" / "CB" / "metrics.json").write_text(json.dumps({"dev_score": 0.8}))
    (run_dir / "stage2" / "CB").mkdir(parents=True)
    (run_dir / "stage2" / "CB" / "metrics.json").write_text(json.dumps({"dev_score_2b": 0.61, "steps_2a": 3}))
    (run_dir / "stage2" / "CB" / "history.png").write_bytes(b"png")
    report = write_report(run_dir, title="T")
    assert report.path == artifact(run_dir, "report", "report.md")
    text = report.path.read_text()
    assert text.startswith("# T") and "retention" in text and "| RTE |" in text and "kept" in text
    stage2 = text.split("## Stage 2 per task")[1]
    assert "| CB |  |  | 0.610 |" in stage2 and "| 3 |" in stage2  # per-task metrics, through the registry
    assert (run_dir / "report" / "scores.png").exists()
    assert (run_dir / "report" / "figures" / "stage2_CB_history.png").exists()  # copied: self-contained
    assert report.scores.loc["RTE", "retention"] == pytest.approx(0.63 / 0.7)
    assert str(run_dir / "report") in report._repr_markdown_()


def test_run_report_needs_the_evaluation_and_marks_complete(run_dir):
    cfg = ReportConfig.resolve(profile="smoke", run_dir=str(run_dir), title="R")
    with pytest.raises(ArtifactError, match="06_superglue_eval"):
        run_report(cfg)
    mark_complete(run_dir / "eval", ["results.csv"])
    report = run_report(cfg)
    assert report.path.read_text().startswith("# R") and is_complete(run_dir / "report")
