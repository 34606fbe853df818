"""glmd compare (issue #13): the grid and its sharing plan (pure), results.csv from fake run directories, and one
end-to-end smoke comparison (glmd vs kd, one seed, CB, tiny teacher; GLMD_COMPARE_SMOKE=1, `make compare-smoke`)."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from glmd_lib.compare.grid import UNTRAINED_CSV, expand, run_dir
from glmd_lib.compare.results import COLUMNS, collect, differences_vs_glmd, summary_table
from glmd_lib.config.base import ConfigError
from glmd_lib.config.stages import CompareConfig
from glmd_lib.pipeline import discover, link_stages, routable, select


def test_grid_expands_methods_seeds_and_sweep_with_shared_vocabularies(tmp_path):
    plan = expand("smoke", tmp_path, {"compare.seeds": [0, 1], "keep_rates": [0.5, 0.25], "stage1.steps": 3},
                  methods=["glmd", "kd", "glmd-sub-unk"])
    assert [(p.name, p.seed) for p in plan.runs] == [("glmd", 0), ("glmd", 1), ("kd", 0), ("kd", 1),
                                                     ("glmd-sub-unk", 0), ("glmd-sub-unk", 1), ("glmd-keep0.25", 0)]
    tags = {p.name: p.vocab for p in plan.runs}
    # glmd (keep 0.5 = the default) and kd (full vocabulary, no map) share D/vocab; unk and keep 0.25 get their own
    assert tags["glmd"] == tags["kd"] == "" and tags["glmd-sub-unk"] != "" and tags["glmd-keep0.25"] != ""
    assert set(plan.vocab) == {"", tags["glmd-sub-unk"], tags["glmd-keep0.25"]}
    assert plan.vocab_dir("") == tmp_path / "vocab" and plan.runs[0].dir(tmp_path) == tmp_path / "runs/glmd/seed-0"
    by = {(p.name, p.seed): p.params for p in plan.runs}
    assert by[("kd", 1)]["stage2.steps_2b"] == 4 and "stage2.steps_2b" not in by[("glmd", 0)]  # smoke: 2 + 2
    assert by[("kd", 1)]["seed"] == 1 and by[("glmd", 0)]["stage1.steps"] == 3
    assert by[("glmd", 0)]["eval.tasks"] == ["CB"] and by[("glmd", 0)]["eval.models"] == ["teachers", "students"]
    assert [(u.name, u.seed, u.params["stage1.steps"]) for u in plan.untrained] == [("untrained", 0, 0),
                                                                                    ("untrained", 1, 0)]
    assert plan.compare_params == {"compare.seeds": [0, 1], "compare.keep_rates": [0.5, 0.25],
                                   "compare.methods": ["glmd", "kd", "glmd-sub-unk"]}


def test_equal_budget_leaves_a_given_steps_2b_alone(tmp_path):
    plan = expand("smoke", tmp_path, {"stage2.steps_2b": 7}, methods=["kd"])
    assert plan.runs[0].params["stage2.steps_2b"] == 7


@pytest.mark.parametrize("params, methods, message", [
    ({}, ["glmd", "nope"], "unknown \\['nope'\\]"), ({"seed": 1}, None, "compare.seeds"),
    ({"compare.keep_rates": [1.5]}, None, "keep_rates")])
def test_bad_grid_fails_before_anything_runs(tmp_path, params, methods, message):
    with pytest.raises(ConfigError, match=message):
        expand("smoke", tmp_path, params, methods)
    assert not tmp_path.joinpath("runs").exists()


def test_notebook_08_runs_only_when_asked():
    names = [s.number for s in select(discover(), None)]
    assert "08" not in names and names[-1] == "07"
    assert [s.number for s in select(discover(), ["08"])] == ["08"]


def test_routable_keeps_what_reaches_the_chosen_notebooks_and_links_are_relative(tmp_path):
    params = {"vocab.keep_rate": 0.25, "stage1.steps": 3, "teacher": "x", "eval.tasks": ["CB"]}
    assert routable(params, ["03"]) == {"stage1.steps": 3, "teacher": "x"}
    with pytest.raises(ConfigError):
        routable({"no_such_key": 1}, ["03"])
    (tmp_path / "vocab").mkdir()
    link_stages(tmp_path / "runs" / "m" / "seed-0", {"vocab": tmp_path / "vocab"})
    link = tmp_path / "runs" / "m" / "seed-0" / "vocab"
    assert str(link.readlink()) == "../../../vocab" and link.resolve() == (tmp_path / "vocab").resolve()


def _fake_run(root, name, seed, score, preds, gold_in_loss=False):
    run = run_dir(root, name, seed)
    for sub in ("eval", "stage1", "pipeline", "stage2/CB"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"model": "student", "task": "CB", "metric": "score", "value": score, "ci_low": score - 0.1,
                   "ci_high": score + 0.1, "n_examples": 4, "params": 1000},
                  {"model": "teacher", "task": "CB", "metric": "score", "value": 0.9, "ci_low": 0.8, "ci_high": 1.0,
                   "n_examples": 4, "params": 5000}]).to_csv(run / "eval" / "results.csv", index=False)
    pd.DataFrame([{"task": "CB", "metric": "agreement", "value": 0.75}]).to_csv(run / "eval" / "fidelity.csv",
                                                                                 index=False)
    (run / "stage1" / "metrics.json").write_text(json.dumps({"tokens_seen": 128}))
    (run / "pipeline" / "03.json").write_text(json.dumps({"seconds": 2.0}))
    (run / "pipeline" / "05.json").write_text(json.dumps({"seconds": 3.5}))
    (run / "stage2" / "CB" / "metrics.json").write_text(json.dumps({"gold_labels_in_loss": gold_in_loss}))
    labels = ["entailment", "contradiction", "neutral", "entailment"]
    lines = [json.dumps({"model": "student", "task": "CB", "idx": i, "group": i, "label": lab, "prediction": p})
             for i, (lab, p) in enumerate(zip(labels, preds))]
    (run / "eval" / "predictions.jsonl").write_text("\n".join(lines) + "\n")


def test_results_from_fake_run_directories(tmp_path):
    cfg = CompareConfig.resolve("smoke", run_dir=str(tmp_path), methods=["glmd", "kd"], seeds=[0, 1])
    for seed in (0, 1):
        _fake_run(tmp_path, "glmd", seed, 0.5 + seed / 10, ["entailment"] * 4)
        _fake_run(tmp_path, "kd", seed, 0.4, ["entailment", "contradiction", "neutral", "neutral"], True)
    untrained = run_dir(tmp_path, "untrained", 0)
    untrained.mkdir(parents=True)
    pd.DataFrame([{"model": "untrained", "task": "CB", "metric": "score", "value": 0.2, "ci_low": 0.1,
                   "ci_high": 0.3, "n_examples": 4, "params": 1000}]).to_csv(untrained / UNTRAINED_CSV, index=False)
    results, notes = collect(tmp_path, cfg)
    assert list(results.columns) == COLUMNS and not notes
    assert results.groupby("method").size().to_dict() == {"glmd": 2, "kd": 2, "teacher": 2, "untrained": 1}
    kd0 = results[(results.method == "kd") & (results.seed == 0)].iloc[0]
    assert (kd0.agreement, kd0.stage1_tokens, kd0.wall_s, kd0.params, kd0.n) == (0.75, 128, 5.5, 1000, 4)
    assert kd0.uses_gold_labels and not results[results.method == "glmd"].uses_gold_labels.any()
    table = summary_table(results, ["glmd", "kd"])
    assert list(table.index) == ["teacher", "untrained", "glmd", "kd"]
    assert table.loc["glmd", "CB"] == "0.550 ± 0.071 [0.400, 0.600]" and table.loc["untrained", "CB"] == "0.200 [0.100, 0.300]"
    assert table.loc["kd", "parameters"] == "1,000"
    diffs = differences_vs_glmd(results, n_boot=50)
    assert list(diffs.seed) == [0, 1] and set(diffs.model_a) == {"kd"} and set(diffs.verdict) <= {
        "not distinguishable", "A better", "B better"}


def test_results_name_the_runs_not_yet_evaluated(tmp_path):
    cfg = CompareConfig.resolve("smoke", run_dir=str(tmp_path), methods=["glmd"], keep_rates=[0.25])
    results, notes = collect(tmp_path, cfg)
    assert results.empty and len(notes) == 2 and "glmd-keep0.25 seed 0" in notes[1]


@pytest.mark.skipif(os.environ.get("GLMD_COMPARE_SMOKE") != "1",
                    reason="end-to-end smoke comparison (minutes): `make compare-smoke` sets GLMD_COMPARE_SMOKE=1")
def test_compare_smoke_end_to_end(tmp_path):
    root = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "glmd_lib.cli", "compare", "--profile", "smoke", "--run-dir", str(root),
           "--methods", "glmd,kd", "--cell-timeout", "600"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    print(res.stdout[-3000:], res.stderr[-3000:])
    assert res.returncode == 0, res.stderr
    results = pd.read_csv(root / "compare" / "results.csv")
    assert set(results.method) == {"glmd", "kd", "teacher", "untrained"} and set(results.task) == {"CB"}
    assert (root / "runs" / "kd" / "seed-0" / "teachers").is_symlink()  # the one task-teacher set
    assert not (root / "runs" / "kd" / "seed-0" / "notebooks" / "04_teacher_finetune.ipynb").exists()
    again = subprocess.run(cmd, capture_output=True, text=True)  # complete: every notebook skipped
    assert again.returncode == 0 and " 0 ran" in again.stdout and "running" not in again.stdout
