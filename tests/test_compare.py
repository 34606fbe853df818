"""glmd compare (issue #13): the grid and its sharing plan (pure), results.csv from fake run directories, and one
end-to-end smoke comparison (glmd vs kd, one seed, CB, tiny teacher; GLMD_COMPARE_SMOKE=1, `make compare-smoke`)."""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from transformers import LlamaConfig

from glmd_lib.compare.figures import X_AXES, sweep_figure, sweep_points
from glmd_lib.compare.grid import UNTRAINED_CSV, UNTRAINED_PREDICTIONS, expand, run_dir
from glmd_lib.compare.results import COLUMNS, collect, paired_differences, summary_table
from glmd_lib.config.base import ConfigError
from glmd_lib.config.stages import CompareConfig
from glmd_lib.pipeline import discover, link_stages, routable, select


def test_grid_expands_methods_seeds_and_sweep_with_shared_vocabularies(tmp_path):
    plan = expand("smoke", tmp_path, {"compare.seeds": [0, 1], "keep_rates": [0.5, 0.25], "stage1.steps": 3},
                  methods=["glmd", "kd", "glmd-sub-unk"])
    assert [(p.name, p.seed) for p in plan.runs] == [("glmd", 0), ("kd", 0), ("glmd-sub-unk", 0), ("glmd-keep0.25", 0),
                                                     ("glmd", 1), ("kd", 1), ("glmd-sub-unk", 1)]  # seed by seed
    assert [p.keep_rate for p in plan.runs if p.name == "glmd"] == [0.5, None]  # its first seed: the point at 0.5
    swept = expand("smoke", tmp_path, {"keep_rates": [0.5, 0.25]}, methods=["glmd"])
    assert [(p.name, p.keep_rate) for p in swept.runs] == [("glmd", 0.5), ("glmd-keep0.25", 0.25)]  # own rate: glmd
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


def test_ablations_run_once_and_every_stage1_shares_one_teacher_cache_folder(tmp_path):
    plan = expand("smoke", tmp_path, {"compare.seeds": [3, 4], "compare.ablations": ["glmd-no-2a", "glmd"]},
                  methods=["glmd"])
    assert [(p.name, p.seed) for p in plan.runs] == [("glmd", 3), ("glmd-no-2a", 3), ("glmd", 4)]
    from glmd_lib.compare.runner import _seed_by_seed
    assert [(p.name, p.seed) for p in _seed_by_seed(plan)] == [("glmd", 3), ("glmd-no-2a", 3), ("untrained", 3),
                                                               ("glmd", 4), ("untrained", 4)]
    assert {p.params["stage1.cache_dir"] for p in plan.runs + plan.untrained} == {str(tmp_path / "teacher_cache")}
    mine = expand("smoke", tmp_path, {"stage1.cache_dir": "/elsewhere"}, methods=["glmd"])
    assert mine.runs[0].params["stage1.cache_dir"] == "/elsewhere"  # the user's folder wins
    with pytest.raises(ConfigError, match="unknown \\['nope'\\]"):
        expand("smoke", tmp_path, {"compare.ablations": ["nope"]}, methods=["glmd"])


def test_runs_that_differ_only_in_stage_2_share_one_stage_1(tmp_path):
    plan = expand("smoke", tmp_path, {"compare.seeds": [0, 1], "compare.ablations": ["glmd-no-2a", "glmd-no-stage1",
                                                                                     "glmd-sub-unk"]},
                  methods=["glmd", "kd"])
    by = {(p.name, p.seed): p for p in plan.runs}
    assert by[("glmd-no-2a", 0)].stage1_from == "glmd"  # its stage 1 is glmd's of the same seed
    # glmd-t1 names stage1.temperature=1.0: under the compare profile that is the profile's own value, so the same
    # stage 1 as glmd's; under smoke (T = 15) it is another stage 1
    grid = {"compare.seeds": [0], "compare.ablations": ["glmd-t1"], "compare.keep_rates": []}
    t1 = {prof: expand(prof, tmp_path, grid, methods=["glmd"]).runs[-1] for prof in ("compare", "smoke")}
    assert t1["compare"].stage1_from == "glmd" and t1["smoke"].stage1_from == ""
    assert all(not by[k].stage1_from for k in [("glmd", 0), ("glmd", 1), ("kd", 0), ("glmd-no-stage1", 0),
                                               ("glmd-sub-unk", 0)])  # other loss, steps or vocabulary: their own


def test_the_compare_profile_is_the_issues_grid(tmp_path):
    """8 methods x 3 seeds on CB, COPA, RTE; the ablations and the 4-point sweep with the first seed."""
    plan = expand("compare", tmp_path, {})
    main = [p for p in plan.runs if p.name in CompareConfig.profiles["demo"]["methods"]]
    assert len(main) == 24 and {p.seed for p in main} == {0, 1, 2} and plan.cfg.tasks == ["CB", "COPA", "RTE"]
    rest = [p for p in plan.runs if p not in main]
    assert {p.seed for p in rest} == {0} and sorted(p.keep_rate for p in rest if p.keep_rate) == [0.125, 0.25]
    assert [p.keep_rate for p in main if p.name == "glmd"] == [0.5, None, None]  # the sweep's 0.5 is glmd seed 0
    # and its 1.0 is glmd-vc seed 0 (GLMD with no vocabulary map: a VocabMap must prune), not a second such run
    assert [p.keep_rate for p in main if p.name == "glmd-vc"] == [1.0, None, None]
    alone = [p for p in expand("compare", tmp_path, {}, methods=["glmd"]).runs if p.keep_rate == 1.0]
    assert [(p.name, p.params["stage1.use_vocab_map"], p.vocab) for p in alone] == [("glmd-keep1", False, "")]
    vc = next(p for p in main if p.name == "glmd-vc" and p.seed == 0)
    assert alone[0].params == vc.params  # why it may stand for the sweep's point


@pytest.mark.parametrize("profile", ["demo", "compare"])
def test_every_run_of_the_profiles_grid_is_accepted_by_the_pipeline(tmp_path, profile):
    """What glmd compare checks before anything runs: each run's notebooks resolve with its parameters (e.g. the
    losses the teacher cache cannot feed switch it off)."""
    from glmd_lib import pipeline

    plan = expand(profile, tmp_path, {"compare.ablations": list(CompareConfig.profiles["compare"]["ablations"])})
    universe = pipeline.discover()
    trained = pipeline.select(universe, ["03", "05", "06"])
    for p in plan.runs + plan.untrained:
        pipeline.plan(profile, p.dir(tmp_path), trained, universe, routable(p.params, ["03", "05", "06"]))


def test_dim_reduction_gets_glmds_parameter_count_from_the_vocabulary_stage(tmp_path):
    """Once notebook 02 has written the default map, dim-reduction's E is the width at which its full-vocabulary
    factorised embedding costs what GLMD's pruned one does; other runs keep their parameters."""
    from glmd_lib.compare.runner import match_glmd_size
    from glmd_lib.distill.methods import matched_embedding_dim

    plan = expand("smoke", tmp_path, {}, methods=["glmd", "dim-reduction"])
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab_map.json").write_text(json.dumps({"num_kept": 1000, "vocab_size": 3000}))
    before = {p.name: dict(p.params) for p in plan.runs}
    logged = []
    match_glmd_size(plan, logged.append)
    dim = next(p for p in plan.runs if p.name == "dim-reduction")
    E = matched_embedding_dim(1000, 3000, 64)  # the smoke student is 64 wide
    assert dim.params["stage1.embedding_dim"] == E == 20 and "E = 20" in logged[0]
    gap = [abs(3000 * e + 2 * e * 64 - 1000 * 64) for e in (E - 1, E, E + 1)]  # V*E + 2*E*H against K*H
    assert gap[1] < min(gap[0], gap[2])  # the nearest whole width
    assert {k: v for k, v in dim.params.items() if k != "stage1.embedding_dim"} == \
        {k: v for k, v in before["dim-reduction"].items() if k != "stage1.embedding_dim"}
    assert next(p for p in plan.runs if p.name == "glmd").params == before["glmd"]


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


def _tiny_config(vocab_size):
    """FLOPs per token at seq_len 8, by hand: body 2 x 2 layers x (q 16x16 + k, v 16x8 + o 16x16 + MLP 3 x 16x32)
    = 9216, attention 2 x 2 x 2 layers x 8 x 16 = 1024, output 2 x vocab_size x 16."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=4, bos_token_id=1, eos_token_id=2,
                       pad_token_id=2)


def _predictions_file(path, model, preds):
    labels = ["entailment", "contradiction", "neutral", "entailment"]
    lines = [json.dumps({"model": model, "task": "CB", "idx": i, "group": i, "label": lab, "prediction": p})
             for i, (lab, p) in enumerate(zip(labels, preds))]
    path.write_text("\n".join(lines) + "\n")


def _fake_stage1(run, speed):
    (run / "stage1").mkdir(parents=True, exist_ok=True)
    (run / "stage1" / "config.json").write_text(json.dumps({"stage": "stage1", "config": {"seq_len": 8}}))
    (run / "stage1" / "metrics.json").write_text(json.dumps({"tokens_seen": 128, "student_tokens_per_s": speed,
                                                             "teacher_tokens_per_s": 200.0}))
    _tiny_config(100).save_pretrained(run / "stage1" / "student")


def _fake_run(root, name, seed, score, preds, gold_in_loss=False):
    run = run_dir(root, name, seed)
    for sub in ("eval", "stage1", "pipeline", "stage2/CB"):
        (run / sub).mkdir(parents=True, exist_ok=True)
    _fake_stage1(run, 500.0 + seed)
    _tiny_config(200).save_pretrained(run / "teachers" / "CB" / "model")
    pd.DataFrame([{"model": "student", "task": "CB", "metric": "score", "value": score, "ci_low": score - 0.1,
                   "ci_high": score + 0.1, "n_examples": 4, "params": 1000},
                  {"model": "teacher", "task": "CB", "metric": "score", "value": 0.9, "ci_low": 0.8, "ci_high": 1.0,
                   "n_examples": 4, "params": 5000}]).to_csv(run / "eval" / "results.csv", index=False)
    pd.DataFrame([{"task": "CB", "metric": "agreement", "value": 0.75}]).to_csv(run / "eval" / "fidelity.csv",
                                                                                 index=False)
    (run / "pipeline" / "03.json").write_text(json.dumps({"seconds": 2.0}))
    (run / "pipeline" / "05.json").write_text(json.dumps({"seconds": 3.5}))
    (run / "stage2" / "CB" / "metrics.json").write_text(json.dumps({"gold_labels_in_loss": gold_in_loss}))
    _predictions_file(run / "eval" / "predictions.jsonl", "student", preds)


def test_results_from_fake_run_directories(tmp_path):
    cfg = CompareConfig.resolve("smoke", run_dir=str(tmp_path), methods=["glmd", "kd"], seeds=[0, 1])
    for seed in (0, 1):
        _fake_run(tmp_path, "glmd", seed, 0.5 + seed / 10, ["entailment"] * 4)
        _fake_run(tmp_path, "kd", seed, 0.4, ["entailment", "contradiction", "neutral", "neutral"], True)
    untrained = run_dir(tmp_path, "untrained", 0)
    _fake_stage1(untrained, 700.0)
    _predictions_file(untrained / UNTRAINED_PREDICTIONS, "untrained", ["entailment"] * 4)  # as glmd's
    pd.DataFrame([{"model": "untrained", "task": "CB", "metric": "score", "value": 0.2, "ci_low": 0.1,
                   "ci_high": 0.3, "n_examples": 4, "params": 1000}]).to_csv(untrained / UNTRAINED_CSV, index=False)
    results, notes = collect(tmp_path, cfg)
    assert list(results.columns) == COLUMNS and not notes
    assert results.groupby("method").size().to_dict() == {"glmd": 2, "kd": 2, "teacher": 2, "untrained": 1}
    kd0 = results[(results.method == "kd") & (results.seed == 0)].iloc[0]
    assert (kd0.agreement, kd0.stage1_tokens, kd0.wall_s, kd0.params, kd0.n) == (0.75, 128, 5.5, 1000, 4)
    # FLOPs from the student's config at stage 1's seq_len (hand count in _tiny_config); tokens/s from stage 1
    by = results.set_index(["method", "seed"])
    assert (kd0.flops_per_token, kd0.infer_tokens_per_s) == (9216 + 1024 + 3200, 500.0)
    assert by.loc[("glmd", 1), "infer_tokens_per_s"] == 501.0
    assert by.loc[("untrained", 0), "infer_tokens_per_s"] == 700
    assert by.loc[("untrained", 0), "flops_per_token"] == 13440
    assert by.loc[("teacher", 0), "flops_per_token"] == 9216 + 1024 + 6400  # the task teacher's own config
    assert by.loc[("teacher", 0), "infer_tokens_per_s"] == 200.0
    assert kd0.uses_gold_labels and not results[results.method == "glmd"].uses_gold_labels.any()
    table = summary_table(results, ["glmd", "kd"])
    assert list(table.index) == ["teacher", "untrained", "glmd", "kd"]
    assert list(table.columns) == ["CB (n=4)", "average", "parameters"]  # every row scored on the same 4 examples
    assert table.loc["glmd", "CB (n=4)"] == "0.550 ± 0.071 [0.400, 0.600]"
    assert table.loc["untrained", "CB (n=4)"] == "0.200 [0.100, 0.300]"
    assert table.loc["kd", "parameters"] == "1,000"
    diffs = paired_differences(results, "glmd", n_boot=50)
    assert list(diffs.seed) == [0, 1] and set(diffs.model_a) == {"kd"} and set(diffs.verdict) <= {
        "not distinguishable", "A better", "B better"}
    # against the untrained student (seed 0 only; its predictions are glmd's, so kd's gain is its gap to glmd)
    gains = paired_differences(results, "untrained", n_boot=50)
    assert sorted(gains.model_a) == ["glmd", "kd"] and set(gains.model_b) == {"untrained"} and set(gains.seed) == {0}
    g = gains.set_index("model_a")
    assert g.loc["glmd", "difference"] == 0.0 and g.loc["glmd", "verdict"] == "not distinguishable"
    kd_vs_glmd = diffs[diffs.seed == 0].iloc[0]
    assert (g.loc["kd", "difference"], g.loc["kd", "ci_low"], g.loc["kd", "ci_high"]) == (
        kd_vs_glmd.difference, kd_vs_glmd.ci_low, kd_vs_glmd.ci_high)


def test_notebook_08_tables_hold_the_ablations_of_compare_ablations(tmp_path):
    from glmd_lib.compare.report import comparison

    cfg = CompareConfig.resolve("smoke", run_dir=str(tmp_path), methods=["glmd", "kd"], ablations=["glmd-no-2a"])
    _fake_run(tmp_path, "glmd", 0, 0.5, ["entailment"] * 4)
    _fake_run(tmp_path, "kd", 0, 0.4, ["entailment", "contradiction", "neutral", "neutral"], True)
    _fake_run(tmp_path, "glmd-no-2a", 0, 0.45, ["entailment", "neutral", "entailment", "entailment"])
    cfg.save()  # the notebook's start() writes it before the call
    cmp = comparison(cfg)
    assert list(cmp.ablations.index) == ["glmd", "glmd-no-2a"] and "glmd-no-2a" not in cmp.table.index
    assert set(cmp.differences.model_a) == {"kd", "glmd-no-2a"}
    assert (tmp_path / "compare" / "times.csv").exists()


def test_time_table_reads_every_notebooks_seconds(tmp_path):
    from glmd_lib.compare.results import time_table

    def record(where, nb, seconds):
        (where / "pipeline").mkdir(parents=True, exist_ok=True)
        (where / "pipeline" / f"{nb}.json").write_text(json.dumps({"notebook": nb, "seconds": seconds}))

    record(tmp_path, "00_overview", 10.0)
    record(tmp_path, "04_teacher_finetune", 200.0)
    record(tmp_path / "variants" / "keep_rate0.25", "02_vocab_pruning", 30.0)
    for nb, s in (("03_stage1_distillation", 100.0), ("05_stage2_distillation", 50.5), ("06_superglue_eval", 9.5)):
        record(run_dir(tmp_path, "glmd", 0), nb, s)
    record(run_dir(tmp_path, "glmd-no-2a", 0), "05_stage2_distillation", 20.0)  # its stage 1 was linked
    t = time_table(tmp_path)
    assert list(t.index) == ["shared", "vocabulary keep_rate0.25", "glmd seed-0", "glmd-no-2a seed-0"]
    assert list(t.columns) == ["00", "02", "03", "04", "05", "06", "total"]
    assert t.loc["glmd seed-0", "total"] == 160.0 and t.loc["shared", "total"] == 210.0
    assert pd.isna(t.loc["glmd-no-2a seed-0", "03"]) and t.loc["glmd-no-2a seed-0", "total"] == 20.0


def test_sweep_plotted_against_parameters_and_tokens_per_s():
    rows = [{"method": m, "keep_rate": k, "params": p, "flops_per_token": f, "infer_tokens_per_s": s, "value": v,
             "agreement": a, "task": t} for m, k, p, f, s, v, a in [
        ("glmd", 0.5, 2000, 900, 300.0, 0.5, 0.7), ("glmd-keep0.25", 0.25, 1500, 700, 450.0, 0.4, 0.6),
        ("glmd-keep1", 1.0, 3000, 1300, 250.0, 0.6, 0.8)] for t in ("CB", "RTE")]
    results = pd.DataFrame(rows + [{"method": "untrained", "keep_rate": None, "params": 2000, "value": 0.1,
                                    "task": "CB"}])
    pts = sweep_points(results)
    assert list(pts.keep_rate) == [0.25, 0.5, 1.0] and list(pts.flops_per_token) == [700, 900, 1300]
    fig = sweep_figure(results, "infer_tokens_per_s")
    score, agreement = fig.axes
    assert list(score.lines[0].get_xdata()) == [250.0, 300.0, 450.0]
    assert list(score.lines[0].get_ydata()) == [0.6, 0.5, 0.4]
    assert agreement.get_xlabel() == X_AXES["infer_tokens_per_s"]
    assert list(sweep_figure(results).axes[0].lines[0].get_xdata()) == [1500, 2000, 3000]
    assert sweep_figure(results.assign(infer_tokens_per_s=None), "infer_tokens_per_s") is None  # masked LM
    with pytest.raises(ValueError, match="infer_tokens_per_s"):
        sweep_figure(results, "seconds")


def test_results_name_the_runs_not_yet_evaluated(tmp_path):
    cfg = CompareConfig.resolve("smoke", run_dir=str(tmp_path), methods=["glmd"], keep_rates=[0.25])
    results, notes = collect(tmp_path, cfg)
    assert results.empty and len(notes) == 2 and "glmd-keep0.25 seed 0" in notes[1]


@pytest.mark.skipif(os.environ.get("GLMD_COMPARE_SMOKE") != "1",
                    reason="end-to-end smoke comparison (minutes): `make compare-smoke` sets GLMD_COMPARE_SMOKE=1")
def test_compare_smoke_end_to_end(tmp_path):
    root = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "glmd_lib.cli", "compare", "--profile", "smoke", "--run-dir", str(root),
           "--methods", "glmd,kd", "-p", "compare.ablations=[glmd-no-2a]", "--cell-timeout", "600"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    print(res.stdout[-3000:], res.stderr[-3000:])
    assert res.returncode == 0, res.stderr
    results = pd.read_csv(root / "compare" / "results.csv")
    assert set(results.method) == {"glmd", "kd", "glmd-no-2a", "teacher", "untrained"} and set(results.task) == {"CB"}
    assert (root / "runs" / "glmd-no-2a" / "seed-0" / "stage1").is_symlink()  # glmd's stage 1, not trained again
    assert any((root / "prediction_cache").iterdir()) and (root / "compare" / "times.csv").exists()
    assert results.flops_per_token.gt(0).all() and results.infer_tokens_per_s.gt(0).all()
    gains = pd.read_csv(root / "compare" / "differences_untrained.csv")
    assert set(gains.model_a) == {"glmd", "kd", "glmd-no-2a"} and set(gains.model_b) == {"untrained"}
    assert (root / "runs" / "kd" / "seed-0" / "teachers").is_symlink()  # the one task-teacher set
    assert not (root / "runs" / "kd" / "seed-0" / "notebooks" / "04_teacher_finetune.ipynb").exists()
    again = subprocess.run(cmd, capture_output=True, text=True)  # complete: every notebook skipped
    assert again.returncode == 0 and " 0 ran" in again.stdout and "running" not in again.stdout
