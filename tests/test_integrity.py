"""Run integrity (issue #11), through the command line where a user meets it.

* a failed rerun of a finished stage leaves nothing a later stage accepts (marker withdrawn first; a config
  or artifact changed after the marker is refused by name);
* one writer per run directory (``glmd run``, ``glmd stage1``), the holder named;
* wrong values refused before anything runs, naming the parameter and the allowed values;
* one-line errors for a bad parameter file, an unusable run directory, and Ctrl-C.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from glmd_lib.artifacts import STAGES, ArtifactError, atomic_write_json, is_complete, mark_complete
from glmd_lib.config.stages import FrequencyConfig
from glmd_lib.pipeline import PipelineError, run
from glmd_lib.runlock import ENV
from test_pipeline import _notebook  # the one writer of stand-in notebooks in the tests

GLMD = [sys.executable, "-m", "glmd_lib.cli"]


def _glmd(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    return subprocess.run([*GLMD, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _one_line_error(res: subprocess.CompletedProcess, *parts: str) -> str:
    """The command failed with exit code 2 and exactly one line on stderr holding every part."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------------------------
# 1. stale results
# --------------------------------------------------------------------------------------------

# Stand-ins for notebooks 01 and 02 with their real config classes (the pipeline knows them by name): 01
# starts as every notebook does, then fails when asked to; 02 needs 01's stage, as run_vocab does.
FREQUENCY = """
import pathlib
from glmd_lib.artifacts import mark_complete
from glmd_lib.config.stages import FrequencyConfig
from glmd_lib.notebook import start
cfg = start(FrequencyConfig, globals(), show=False)
if (pathlib.Path(cfg.run_dir) / "FAIL").exists():
    raise RuntimeError("the rerun failed")
(cfg.out_dir / "counts.csv").write_text(f"token_id,count\\n0,{cfg.max_lines}\\n")
mark_complete(cfg.out_dir, ["config.json", "counts.csv"])
"""
VOCAB = """
from glmd_lib.artifacts import STAGES, mark_complete
from glmd_lib.config.stages import VocabConfig
from glmd_lib.notebook import start
cfg = start(VocabConfig, globals(), show=False)
STAGES["frequency"].require(cfg.run_dir)
mark_complete(cfg.out_dir, ["config.json"])
"""


def test_failed_rerun_of_a_finished_stage_is_refused_downstream(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    common = {"run_dir": None, "profile": None}
    _notebook(nbs / "01_word_frequency.ipynb", {**common, "max_lines": None}, FREQUENCY)
    _notebook(nbs / "02_vocab_pruning.ipynb", {**common, "keep_tokens": None}, VOCAB)
    rd, quiet = tmp_path / "run", (lambda *_: None)
    assert [r["status"] for r in run("smoke", rd, notebook_dir=nbs, log=quiet)] == ["ran", "ran"]
    (rd / "FAIL").write_text("")
    with pytest.raises(PipelineError, match="01_word_frequency failed.*the rerun failed"):
        run("smoke", rd, params={"max_lines": 7}, notebook_dir=nbs, log=quiet)
    assert json.loads((rd / "frequency" / "config.json").read_text())["config"]["max_lines"] == 7
    # the old counts are still there, but no later stage takes them for max_lines=7
    with pytest.raises(ArtifactError, match="01_word_frequency"):
        STAGES["frequency"].require(rd)
    # 02's own results were made from the withdrawn ones: stale too, for anything after 02
    with pytest.raises(ArtifactError, match=r"stage 'vocab' is stale.*made from frequency/ results that were since "
                                            r"withdrawn or replaced \(a rerun of 01_word_frequency\)"):
        STAGES["vocab"].require(rd)
    # and the pipeline does not skip 02 as "complete": it runs it, and 02 refuses the stale input
    with pytest.raises(PipelineError, match=r"02_vocab_pruning failed.*stage 'frequency'.*run 01_word_frequency"):
        run("smoke", rd, only=["02"], notebook_dir=nbs, log=quiet)


def _finished_frequency(run_dir, **params) -> FrequencyConfig:
    cfg = FrequencyConfig.resolve(profile="smoke", run_dir=str(run_dir), **params)
    cfg.save()
    (cfg.out_dir / "counts.csv").write_text("token_id,count\n0,1\n")
    mark_complete(cfg.out_dir, ["config.json", "counts.csv"])
    return cfg


def test_config_rewritten_after_the_marker_is_refused_naming_what_differs(tmp_path):
    """A stage that saves its new config and then fails (without withdrawing its marker first) must not pass
    for the old results: the marker's digest of config.json no longer matches."""
    _finished_frequency(tmp_path, max_lines=3)
    assert STAGES["frequency"].require(tmp_path) == tmp_path / "frequency"
    FrequencyConfig.resolve(profile="smoke", run_dir=str(tmp_path), max_lines=8).save()  # then it fails
    assert not is_complete(tmp_path / "frequency")
    with pytest.raises(ArtifactError, match=r"stage 'frequency' is stale.*max_lines: 3 -> 8.*Rerun "
                                            r"01_word_frequency \(glmd run --only 01\)"):
        STAGES["frequency"].require(tmp_path)


def test_artifact_changed_or_lost_after_the_marker_is_refused(tmp_path):
    cfg = _finished_frequency(tmp_path)
    (cfg.out_dir / "counts.csv").write_text("token_id,count\n0,2\n")
    with pytest.raises(ArtifactError, match="counts.csv that changed after it finished"):
        STAGES["frequency"].require(tmp_path)
    (cfg.out_dir / "counts.csv").unlink()
    with pytest.raises(ArtifactError, match="lost counts.csv"):
        STAGES["frequency"].require(tmp_path)


def test_a_copied_run_stays_complete(tmp_path):
    """Content, not modification times, identifies an artifact: a copy (new mtimes) is still complete."""
    import shutil

    _finished_frequency(tmp_path / "a")
    (tmp_path / "a" / "frequency" / "student").mkdir()
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy)
    assert is_complete(tmp_path / "b" / "frequency")


# --------------------------------------------------------------------------------------------
# 3. strict JSON
# --------------------------------------------------------------------------------------------

def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_json_is_strict_and_non_finite_metrics_become_null(tmp_path):
    metrics = {"loss": float("nan"), "ppl": np.float32("inf"), "kl": torch.tensor(float("-inf")),
               "curve": [1.0, float("nan")], "pair": (np.float64("nan"), 2), "steps": np.int64(3), "ok": 0.5}
    path = atomic_write_json(tmp_path / "metrics.json", metrics)
    assert _strict(path.read_text()) == {"loss": None, "ppl": None, "kl": None, "curve": [1.0, None],
                                         "pair": [None, 2], "steps": 3, "ok": 0.5}


def test_eval_summary_with_a_nan_score_is_strict_json(tmp_path):
    """A real metrics writer (notebook 06's summary) with a score that came out NaN."""
    import pandas as pd

    from glmd_lib.tasks.evaluate import write_results

    results = pd.DataFrame([{"model": "m", "task": "CB", "metric": "score", "value": math.nan, "params": 1,
                             "n_examples": 0},
                            {"model": "m", "task": "RTE", "metric": "score", "value": 0.5, "params": 1,
                             "n_examples": 4}])
    write_results(results, tmp_path)
    summary = _strict((tmp_path / "eval" / "summary.json").read_text())
    assert summary["m"]["tasks"] == {"CB": None, "RTE": 0.5}


# --------------------------------------------------------------------------------------------
# 2. + 4. the command line: the run lock, Ctrl-C, early and one-line errors
# --------------------------------------------------------------------------------------------

# The cell runs until the test releases it (at most 10 minutes), not for a fixed time: glmd notices the Ctrl-C
# when the running cell ends, and on a loaded machine the test's second glmd run alone took longer than a fixed
# 120 s sleep, which then ended normally before the Ctrl-C (exit code 0).
SLEEPER = """
import pathlib, time
pathlib.Path(run_dir, "started").write_text("")
deadline = time.time() + 600
while not pathlib.Path(run_dir, "release").exists() and time.time() < deadline:
    time.sleep(0.1)
"""


def test_second_glmd_run_is_refused_and_ctrl_c_says_how_to_resume(tmp_path):
    nbs, rd = tmp_path / "notebooks", tmp_path / "run"
    nbs.mkdir()
    _notebook(nbs / "01_sleep.ipynb", {"run_dir": None, "profile": None}, SLEEPER)
    args = ["run", "--profile", "smoke", "--run-dir", str(rd), "--notebook-dir", str(nbs)]
    env = {k: v for k, v in os.environ.items() if k != ENV}
    # SIGINT back to its default in the child: a shell starts a background job (`make test &`, nohup) with SIGINT
    # ignored, the child inherits that, Python then installs no KeyboardInterrupt handler, and the Ctrl-C is lost
    first = subprocess.Popen([*GLMD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300  # generous: a loaded 2-core CI machine starts a kernel slowly
        while not (rd / "started").exists():
            assert first.poll() is None and time.time() < deadline, "the first glmd run did not start its notebook"
            time.sleep(0.2)
        line = _one_line_error(_glmd(*args), f"pid {first.pid}", "run --profile smoke", str(rd), "in use")
        assert "--run-dir" in line  # what to do
        first.send_signal(signal.SIGINT)
        time.sleep(2)  # the signal is in before the cell ends
        (rd / "release").write_text("")
        _, err = first.communicate(timeout=180)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert "interrupted in notebook 01_sleep" in last and "rerun the same command" in last
    assert not (rd / "pipeline" / "01_sleep.json").exists()  # not recorded as done: a rerun runs it again


HOLD = ("import sys, time; from glmd_lib.runlock import run_lock\n"
        "with run_lock(sys.argv[1], what='glmd run --profile demo'):\n    print('held', flush=True); time.sleep(60)\n")


def test_glmd_stage1_is_refused_while_the_run_dir_is_held(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = _glmd("stage1", "--profile", "smoke", "--run-dir", str(tmp_path), "--no-progress")
    finally:
        holder.kill()
        holder.wait()
    _one_line_error(res, "glmd stage1: error", f"pid {holder.pid}", "glmd run --profile demo")
    assert not (tmp_path / "stage1").exists()


@pytest.mark.parametrize("param,parts", [
    ("teachers.tasks=NOPE", ["'tasks'", "'NOPE' is not a SuperGLUE task", "allowed: BoolQ, CB"]),
    ("stage2.tasks=[cb, RTE]", ["'tasks'", "did you mean 'CB'", "allowed:"]),
    ("stage2.tasks=[AX-b]", ["'AX-b'", "without training data"]),
    ("eval.tasks=[CB, rte]", ["did you mean 'RTE'"]),
    ("stage1.temperature=inf", ["'temperature' must be a finite number"]),
    ("stage2.temperature=nan", ["'temperature' must be a finite number"]),
    ("stage1.lr=.nan", ["'lr' must be a finite number"]),
    ("keep_tokens=-5", ["'keep_tokens' must be >= 1 (or None), got -5"]),
    ("stage1.steps=-1", ["'steps' must be >= 0"]),
    ("stage1.mlm_probability=1.5", ["'mlm_probability' must be > 0 and < 1"]),
    ("student_layers=0", ["'student_layers' must be >= 1"]),
    ("eval.models=[teacher]", ["'models[0]'", "'teachers'"]),
])
def test_bad_values_fail_before_anything_runs(tmp_path, param, parts):
    rd = tmp_path / "run"
    _one_line_error(_glmd("run", "--profile", "smoke", "--run-dir", str(rd), "-p", param), "glmd run: error", *parts)
    assert not rd.exists()


def test_malformed_parameter_file_names_the_file_and_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("seed: 1\nstage1:\n  lr: [1, 2\n  steps: 3\n")
    _one_line_error(_glmd("run", "--profile", "smoke", "--run-dir", str(tmp_path / "r"), "-f", str(f)),
                    str(f), "line 4", "not valid YAML")
    f.write_text("- seed\n- 1\n")
    _one_line_error(_glmd("run", "--profile", "smoke", "--run-dir", str(tmp_path / "r"), "-f", str(f)),
                    str(f), "mapping")
    assert not (tmp_path / "r").exists()


def test_unusable_run_directory_is_one_line_naming_the_path(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    _one_line_error(_glmd("run", "--profile", "smoke", "--run-dir", str(afile), "--only", "00"),
                    str(afile), "is a file", "--run-dir")
    _one_line_error(_glmd("run", "--profile", "smoke", "--run-dir", str(afile / "sub"), "--only", "00"),
                    str(afile / "sub"), "cannot create", "--run-dir")
    _one_line_error(_glmd("stage1", "--profile", "smoke", "--run-dir", str(afile)), "glmd stage1", str(afile))
