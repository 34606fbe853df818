"""Evaluation: model discovery, rows and summary, majority baselines, students with a VocabMap,
submission format, and the stage (run_eval)."""
from __future__ import annotations

import json
import math
import types

import pandas as pd
import pytest

from glmd_lib.tasks.evaluate import (ModelSpec, discover_models, evaluate_models, majority_rows, summarize,
                                     write_results)
from glmd_lib.tasks.figures import confusion
from glmd_lib.tasks.submission import submission_lines, write_submission
from glmd_lib.superglue.data import read_split
from glmd_lib.superglue.toy import write_toy_dataset


@pytest.fixture
def toy(tmp_path):
    return write_toy_dataset(tmp_path / "sg", n=6)


def test_discover_models_skips_missing_with_a_note(tmp_path, teacher_dir):
    import shutil

    shutil.copytree(teacher_dir, tmp_path / "run" / "teachers" / "RTE" / "model")
    specs, notes = discover_models(tmp_path / "run", str(teacher_dir), ["CB", "RTE", "AX-b"],
                                   ["zero_shot", "teachers", "students"])
    assert [s.name for s in specs] == ["zero_shot", "teacher"]
    assert specs[1].path_for("AX-b") == specs[1].path_for("RTE") and specs[1].path_for("CB") is None
    assert any("no teacher for CB" in n for n in notes) and any("no student for CB, RTE" in n for n in notes)


def test_evaluate_rows_summary_and_files(tmp_path, toy, teacher_dir):
    tasks = ["CB", "COPA", "RTE", "AX-b", "AX-g", "MultiRC", "ReCoRD"]
    df, details = evaluate_models([ModelSpec("zero_shot", {"*": str(teacher_dir)})], tasks, toy,
                                  max_examples=4, log_fn=None)
    assert list(df.columns)[:5] == ["model", "task", "metric", "value", "params"]
    assert set(df.task) == set(tasks) and (df.params > 0).all()
    cb = df[(df.task == "CB")].set_index("metric").value
    assert cb["score"] == pytest.approx((cb["accuracy"] + cb["f1"]) / 2)
    assert len(details[("zero_shot", "AX-g")]["predictions"]) == 4
    maj, _ = majority_rows(tasks, toy)
    allrows = pd.concat([df, maj])
    csv, summ = write_results(allrows, tmp_path / "run")
    assert csv == tmp_path / "run" / "eval" / "results.csv"
    back = pd.read_csv(csv)
    assert len(back) == len(allrows)
    s = json.loads(summ.read_text())
    main = [t for t in tasks if not t.startswith("AX")]
    assert s["zero_shot"]["average"] == pytest.approx(sum(s["zero_shot"]["tasks"][t] for t in main) / len(main))
    assert set(s) == {"zero_shot", "majority"}


def test_majority_uses_train_labels_on_the_full_dev_split(toy):
    df, details = majority_rows(["CB", "BoolQ", "AX-b"], toy)
    # toy CB train labels cycle entailment, contradiction, neutral: tie -> first seen
    assert details[("majority", "CB")]["predictions"][0] == "entailment"
    assert details[("majority", "AX-b")]["source"] == "RTE train"
    n = df[(df.task == "CB") & (df.metric == "accuracy")].n_examples.iloc[0]
    assert n == len(read_split("CB", "val", toy))
    acc = df[(df.task == "CB") & (df.metric == "accuracy")].value.iloc[0]
    assert acc == pytest.approx(2 / 6)


def test_student_folder_with_vocab_map(tmp_path, toy, teacher_dir, monkeypatch):
    """A student folder holding vocab_map.json is loaded through glmd_lib.models.student.load_student."""
    from glmd_lib.tasks import evaluate
    import shutil

    from test_scoring import StandInVocabMap

    from glmd_lib.models.teacher import load_teacher

    folder = tmp_path / "run" / "stage2" / "CB" / "student"
    shutil.copytree(teacher_dir, folder)
    (folder / "vocab_map.json").write_text("{}")
    model, tok = load_teacher(folder)
    vm = StandInVocabMap(range(len(tok)), len(tok))
    calls = []

    def load_student(path, device=None):
        calls.append(path)
        return types.SimpleNamespace(model=model, tokenizer=tok, vocab_map=vm)

    monkeypatch.setattr(evaluate, "load_student", load_student)
    specs, _ = discover_models(tmp_path / "run", str(teacher_dir), ["CB"], ["students"])
    df, _ = evaluate_models(specs, ["CB"], toy, log_fn=None)
    assert calls and set(df.model) == {"student"}
    ref, _ = evaluate_models([ModelSpec("t", {"*": str(teacher_dir)})], ["CB"], toy, log_fn=None)
    assert df.value.tolist() == pytest.approx(ref.value.tolist())  # identity map: same scores


def test_submission_format(toy, tmp_path):
    boolq = read_split("BoolQ", "test", toy)
    lines = submission_lines("BoolQ", boolq, [True, False] * 3)
    assert lines[0] == {"idx": 0, "label": "true"} and lines[1]["label"] == "false"
    mrc = read_split("MultiRC", "test", toy)
    lines = submission_lines("MultiRC", mrc, [1, 0] * 6)
    assert lines[0] == {"idx": 0, "passage": {"questions": [{"idx": 0, "answers": [
        {"idx": 0, "label": 1}, {"idx": 1, "label": 0}]}]}}
    path = write_submission("AX-b", read_split("AX-b", "test", toy), ["entailment"] * 6, tmp_path / "sub")
    assert path.name == "AX-b.jsonl" and json.loads(path.read_text().splitlines()[0]) == {"idx": 0,
                                                                                          "label": "entailment"}


def test_confusion_and_summary_of_nan():
    from glmd_lib.superglue.data import Example

    exs = [Example("RTE", i, l, {}) for i, l in enumerate(["entailment", "not_entailment", "entailment"])]
    m = confusion("RTE", exs, ["entailment", "entailment", "not_entailment"])
    assert m.loc["entailment", "entailment"] == 1 and m.loc["not_entailment", "entailment"] == 1
    assert m.values.sum() == 3
    s = summarize(pd.DataFrame([dict(model="m", task="AX-b", metric="score", value=0.1, params=1, n_examples=1)]))
    assert math.isnan(s["m"]["average"])


def test_run_eval_writes_the_stage(tmp_path, toy, teacher_dir):
    """run_eval (notebook 06): results.csv, summary.json, figures and submission files; stage complete."""
    import shutil

    from glmd_lib.artifacts import STAGES, artifact
    from glmd_lib.config.stages import EvalConfig
    from glmd_lib.tasks.evaluate import run_eval, wrong_examples

    run = tmp_path / "run"
    shutil.copytree(teacher_dir, run / "teachers" / "RTE" / "model")
    cfg = EvalConfig.resolve("smoke", run_dir=str(run), teacher=str(teacher_dir), superglue_dir=str(toy),
                             tasks=["CB", "RTE", "AX-b"], models=["zero_shot", "teachers"], max_eval_examples=4,
                             write_test_predictions=True)
    res = run_eval(cfg, log_fn=None)
    STAGES["eval"].require(run)
    back = pd.read_csv(artifact(run, "eval", "results.csv"))
    assert set(back.model) == {"zero_shot", "teacher", "majority"} and len(back) == len(res.results)
    assert list(res.scores.columns) == ["zero_shot", "teacher", "majority"]
    assert res.scores.loc["average", "zero_shot"] == pytest.approx(res.scores.loc[["CB", "RTE"], "zero_shot"].mean())
    assert any("no teacher for CB" in n for n in res.notes) and any("not marked complete" in n for n in res.notes)
    assert {p.name for p in STAGES["eval"].figures(run)} == {"scores_per_task.png", "confusion.png"}
    # the teacher answers RTE and AX-b (an RTE problem); CB has no teacher, so it is not predicted
    assert sorted(p.name for p in res.submission) == ["AX-b.jsonl", "RTE.jsonl"]
    wrong = wrong_examples(res.details, 1)
    assert set(wrong.model) <= {"zero_shot", "teacher"} and wrong.groupby(["model", "task"]).size().max() <= 1
