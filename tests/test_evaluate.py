"""Evaluation: model discovery, rows with intervals and summary, majority baselines on the models' examples,
students with a VocabMap, each model in its own pattern, predictions and paired differences, label-free
fidelity, submission format, and the stage (run_eval)."""
from __future__ import annotations

import json
import math
import types

import pandas as pd
import pytest

from glmd_lib.tasks.evaluate import ModelSpec, discover_models, evaluate_models, majority_rows
from glmd_lib.tasks.results import interval_table, summarize, write_results
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
    assert list(df.columns) == ["model", "task", "metric", "value", "ci_low", "ci_high", "n_examples", "n_split",
                                "params", "pattern_id", "select_on"]
    assert set(df.task) == set(tasks) and (df.params > 0).all() and (df.pattern_id == 0).all()
    assert ((df.ci_low <= df.value + 1e-12) & (df.value <= df.ci_high + 1e-12)).all()  # every metric, the score too
    assert (df.n_examples <= 4).all() and (df[df.task == "CB"].n_split == 6).all()
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


def test_majority_is_scored_on_the_models_examples(toy, teacher_dir):
    """Baseline and models see the same (capped) examples, so they can be compared pairwise."""
    models, details = evaluate_models([ModelSpec("zero_shot", {"*": str(teacher_dir)})], ["CB", "MultiRC"], toy,
                                      max_examples=4, log_fn=None)
    maj, maj_details = majority_rows(["CB", "MultiRC"], toy, max_examples=4)
    for task in ("CB", "MultiRC"):
        assert [ex.idx for ex in maj_details[("majority", task)]["examples"]] == \
            [ex.idx for ex in details[("zero_shot", task)]["examples"]]
    assert set(maj.n_examples) == set(models.n_examples) == {4} and set(maj.n_split) == {6, 12}


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
    """run_eval (notebook 06): results.csv with intervals, summary.json, predictions, differences, fidelity,
    figures and submission files; stage complete."""
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
    assert back[["ci_low", "ci_high"]].notna().all().all() and (back.n_examples == 4).all()
    assert list(res.scores.columns) == ["zero_shot", "teacher", "majority"]
    assert res.scores.loc["average", "zero_shot"] == pytest.approx(res.scores.loc[["CB", "RTE"], "zero_shot"].mean())
    assert res.table.loc["CB", "zero_shot"].endswith("n=4 of 6")  # the cap, printed next to the number
    every = interval_table(res.results, ["zero_shot", "majority"], every_metric=True)
    assert every.loc[("CB", "f1"), "majority"].endswith("n=4 of 6") and list(every.loc["CB"].index) == \
        ["accuracy", "f1", "score"]
    assert any("no teacher for CB" in n for n in res.notes) and any("not marked complete" in n for n in res.notes)
    assert {p.name for p in STAGES["eval"].figures(run)} == {"scores_per_task.png", "confusion.png"}
    # the teacher answers RTE and AX-b (an RTE problem); CB has no teacher, so it is not predicted
    assert sorted(p.name for p in res.submission) == ["AX-b.jsonl", "RTE.jsonl"]
    wrong = wrong_examples(res.details, 1)
    assert set(wrong.model) <= {"zero_shot", "teacher"} and wrong.groupby(["model", "task"]).size().max() <= 1
    diffs = pd.read_csv(artifact(run, "eval", "differences.csv"))
    assert set(zip(diffs.model_a, diffs.model_b, diffs.task)) == {("teacher", "zero_shot", "RTE"),
                                                                  ("teacher", "zero_shot", "AX-b")}
    assert set(diffs.verdict) <= {"A better", "B better", "not distinguishable"}
    lines = artifact(run, "eval", "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 4 + 2 * 4 + 3 * 4  # zero-shot and majority on 3 tasks, the teacher on 2
    assert pd.read_csv(artifact(run, "eval", "fidelity.csv")).empty  # no student: no fidelity, the file still there


def _task_model(run, stage, task, folder, metrics):
    """A task model in the run: ``folder`` copied as its model and ``metrics`` as its metrics.json."""
    import shutil

    from glmd_lib.artifacts import artifact

    leaf = "model" if stage == "teachers" else "student"
    shutil.copytree(folder, artifact(run, stage, leaf, task))
    artifact(run, stage, "metrics.json", task).write_text(json.dumps(metrics))


def test_task_models_are_scored_with_their_own_pattern(tmp_path, toy, teacher_dir):
    """A teacher trained with pattern 1 is scored with pattern 1 (not the config's 0), on RTE and on AX-b (an
    RTE problem); the zero-shot teacher with the config's; results.csv says which, and what selected them."""
    import torch

    from glmd_lib.config.stages import EvalConfig
    from glmd_lib.models.teacher import load_teacher
    from glmd_lib.superglue.patterns import build_cloze
    from glmd_lib.tasks.evaluate import run_eval
    from glmd_lib.tasks.scoring import predict_clozes

    run = tmp_path / "run"
    _task_model(run, "teachers", "RTE", teacher_dir, {"pattern_id": 1, "select_on": "train_holdout"})
    _task_model(run, "stage2", "RTE", teacher_dir, {"pattern_id": 1, "select_by_dev": True})
    cfg = EvalConfig.resolve("smoke", run_dir=str(run), teacher=str(teacher_dir), superglue_dir=str(toy),
                             tasks=["RTE", "AX-b"], pattern_id=0, max_eval_examples=None)
    res = run_eval(cfg, log_fn=None)
    back = pd.read_csv(run / "eval" / "results.csv")
    patterns = back.groupby("model").pattern_id.unique().to_dict()
    assert [list(patterns[m]) for m in ("zero_shot", "teacher", "student")] == [[0], [1], [1]]
    select_on = back.groupby("model").select_on.unique().to_dict()
    assert (select_on["teacher"][0], select_on["student"][0]) == ("train_holdout", "dev")
    model, tok = load_teacher(teacher_dir)
    exs = read_split("RTE", "val", toy)
    preds, scores = predict_clozes(model, build_cloze("RTE", exs, tok, pattern_id=1, max_len=cfg.max_seq_len))
    assert res.details[("teacher", "RTE")]["predictions"] == preds
    assert torch.equal(torch.stack(res.details[("teacher", "RTE")]["scores"]), torch.stack(scores))
    # the same weights in pattern 0 (the zero-shot rows) read a different prompt: other scores
    assert not torch.equal(torch.stack(res.details[("zero_shot", "RTE")]["scores"]), torch.stack(scores))


def test_fidelity_on_unseen_unlabeled_inputs(tmp_path, toy, teacher_dir, make_tiny_llama, smol_tokenizer):
    """Agreement 1 and KL 0 for a student identical to its teacher, less and more for another model; the inputs
    are dev + test (without test when stage 2 distilled on it), capped, and need no label."""
    from glmd_lib.tasks.evaluate import ModelSpec, evaluate_models
    from glmd_lib.tasks.fidelity import fidelity_inputs, fidelity_table

    run = tmp_path / "run"
    other = tmp_path / "other"
    make_tiny_llama(seed=7).save_pretrained(other)
    smol_tokenizer.save_pretrained(other)
    inputs = fidelity_inputs(run, ["CB", "MultiRC"], toy, cap=None)
    assert len(inputs["CB"]) == 12 and all(ex.label is None for ex in inputs["CB"])
    assert len({ex.group_key for ex in inputs["CB"]}) == 12  # dev 0..5 and test 0..5 are distinct units
    assert len(fidelity_inputs(run, ["CB"], toy, cap=5)["CB"]) == 5
    tables = {}
    for name, student in (("same", teacher_dir), ("other", other)):
        specs = [ModelSpec("teacher", {"CB": str(teacher_dir), "MultiRC": str(teacher_dir)}),
                 ModelSpec("student", {"CB": str(student), "MultiRC": str(student)})]
        _, details = evaluate_models(specs, ["CB", "MultiRC"], toy, log_fn=None, unlabeled=inputs, n_boot=100)
        tables[name] = fidelity_table(details, inputs, n_boot=100).set_index(["task", "metric"])
    same, diff = tables["same"], tables["other"]
    assert same.loc[("CB", "agreement"), "value"] == 1.0 and same.loc[("CB", "kl_teacher_student"), "value"] == 0
    assert diff.loc[("CB", "kl_teacher_student"), "value"] > 0
    assert same.loc[("MultiRC", "agreement"), "n_examples"] == 24 and same.loc[("CB", "agreement"), "splits"] == "dev+test"
    (run / "stage2").mkdir(parents=True)
    (run / "stage2" / "config.json").write_text(json.dumps({"config": {"add_unlabeled": True}}))
    assert len(fidelity_inputs(run, ["CB"], toy)["CB"]) == 6  # stage 2 trained on the test inputs: dev only


def test_predictions_file_and_paired_differences(tmp_path, toy, teacher_dir):
    """The saved predictions give back the same paired differences; a model against itself is not
    distinguishable; models scored on different examples are refused."""
    from glmd_lib.tasks.comparisons import differences, read_predictions, write_predictions

    specs = [ModelSpec("teacher", {"*": str(teacher_dir)}), ModelSpec("student", {"*": str(teacher_dir)})]
    _, details = evaluate_models(specs, ["CB", "MultiRC"], toy, log_fn=None, n_boot=100)
    details.update(majority_rows(["CB", "MultiRC"], toy)[1])
    diffs = differences(details, n_boot=200)
    assert set(zip(diffs.model_a, diffs.model_b)) == {("student", "teacher"), ("student", "majority")}
    same = diffs[(diffs.model_b == "teacher")]
    assert (same.difference == 0).all() and (same.verdict == "not distinguishable").all()
    path = write_predictions(details, tmp_path)
    back = read_predictions(path)
    assert back[("student", "MultiRC")]["examples"][0].group_key == details[("student", "MultiRC")]["examples"][0].group_key
    pd.testing.assert_frame_equal(differences(back, n_boot=200), diffs)
    details[("majority", "CB")]["examples"] = details[("majority", "CB")]["examples"][::-1]
    with pytest.raises(ValueError, match="different examples"):
        differences(details)


def test_frozen_teachers_predictions_are_reused_and_students_never(tmp_path, toy, teacher_dir, monkeypatch):
    """With a prediction cache, a second evaluation of the same task teacher on the same inputs reads its
    predictions back (none computed again) and gives the same rows; the student is computed every time; new
    weights in the teacher's folder are a new key."""
    import os

    from glmd_lib.tasks import evaluate, fidelity

    cache = tmp_path / "cache"
    inputs = fidelity.fidelity_inputs(tmp_path / "run", ["CB"], toy, cap=None)
    specs = [ModelSpec("teacher", {"CB": str(teacher_dir)}), ModelSpec("student", {"CB": str(teacher_dir)})]
    calls = []
    real = evaluate.predict_clozes
    monkeypatch.setattr(evaluate, "predict_clozes", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run():
        calls.clear()
        df, details = evaluate_models(specs, ["CB"], toy, log_fn=None, unlabeled=inputs, n_boot=50,
                                      prediction_cache=str(cache))
        return df, details, len(calls)

    first, d1, n1 = run()
    second, d2, n2 = run()
    assert n1 == 4 and n2 == 2  # teacher and student on dev + unlabeled; then the student's two only
    pd.testing.assert_frame_equal(first, second)
    assert d1[("teacher", "CB")]["unlabeled"][0] == d2[("teacher", "CB")]["unlabeled"][0]
    assert len(list(cache.iterdir())) == 2  # the teacher's dev and unlabeled predictions; none of the student's
    weights = next(teacher_dir.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert run()[2] == 4 and len(list(cache.iterdir())) == 4  # retrained (new mtime): computed again


def test_the_fidelity_sample_is_the_same_for_every_seed(tmp_path, toy, monkeypatch):
    """Runs of several seeds are compared on the same unlabeled inputs (their spread is the training's, and the
    shared prediction cache scores the teachers once); the dev bootstrap still follows the seed."""
    from glmd_lib.config.stages import EvalConfig
    from glmd_lib.tasks import evaluate as ev

    seen = []
    monkeypatch.setattr(ev, "evaluate_models", lambda *a, **k: (seen.append(a[5]), (pd.DataFrame(), {}))[1])
    specs = [ev.ModelSpec("teacher", {"CB": "t"}), ev.ModelSpec("student", {"CB": "s"})]
    for seed in (0, 1, 2):
        cfg = EvalConfig.resolve("smoke", run_dir=str(tmp_path / "run"), superglue_dir=str(toy), tasks=["CB"],
                                 max_fidelity_examples=5, seed=seed)
        ev._score(cfg, specs, {}, None)
    keys = [[ex.group for ex in inputs["CB"]] for inputs in seen]
    assert len(keys[0]) == 5 and keys[0] == keys[1] == keys[2]
