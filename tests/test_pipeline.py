"""glmd run: order, parameter routing (stage-qualified keys), resume, --only, failures.

Uses tiny throw-away notebooks (no models): 01_alpha and 03_gamma both declare ``lr`` (different meanings,
so it must be written ``alpha.lr`` / ``gamma.lr``) and ``seed`` (shared: a bare value reaches both).
"""
import json
import subprocess
import sys

import nbformat
import pytest

from glmd_lib.config.base import ConfigError, parse_params
from glmd_lib.pipeline import PipelineError, addressing, discover, run, validate


def _notebook(path, params: dict, body: str):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


LOG = """
import json, pathlib
p = pathlib.Path(run_dir) / "log.jsonl"
p.parent.mkdir(parents=True, exist_ok=True)
with p.open("a") as f:
    f.write(json.dumps({"nb": NAME, "params": {k: v for k, v in globals().items() if k in KEYS}}) + "\\n")
"""


@pytest.fixture
def nbdir(tmp_path):
    d = tmp_path / "notebooks"
    d.mkdir()
    common = {"run_dir": None, "profile": None}
    _notebook(d / "01_alpha.ipynb", {**common, "seed": 0, "lr": 1},
              LOG.replace("NAME", "'01'").replace("KEYS", "('seed', 'lr', 'profile')"))
    _notebook(d / "02_beta.ipynb", {**common, "beta": "x", "fail": False},
              LOG.replace("NAME", "'02'").replace("KEYS", "('beta',)") + "\nif fail:\n    raise ValueError('boom')")
    _notebook(d / "03_gamma.ipynb", {**common, "seed": 0, "lr": 0},
              LOG.replace("NAME", "'03'").replace("KEYS", "('seed', 'lr')"))
    return d


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_runs_in_order_routes_params_and_resumes(nbdir, tmp_path):
    rd = tmp_path / "run"
    params = {"seed": 5, "alpha.lr": 7}
    res = run("smoke", rd, params=params, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["ran"] * 3
    log = _log(rd)
    assert [e["nb"] for e in log] == ["01", "02", "03"]
    # the shared key reaches both notebooks declaring it, the qualified key only its own
    assert log[0]["params"] == {"seed": 5, "lr": 7, "profile": "smoke"}
    assert log[2]["params"] == {"seed": 5, "lr": 0}
    assert log[1]["params"] == {"beta": "x"}  # not declared there: not injected
    assert sorted(p.name for p in (rd / "notebooks").iterdir()) == ["01_alpha.ipynb", "02_beta.ipynb",
                                                                    "03_gamma.ipynb"]
    # rerun with the same parameters: everything is skipped
    res = run("smoke", rd, params=params, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped"] * 3 and len(_log(rd)) == 3
    # a parameter of 02 changed (a bare key only 02 declares): 01 is skipped, 02 and everything after it run
    res = run("smoke", rd, params={**params, "beta": "y"}, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "ran", "ran"]
    # an edited notebook counts as changed too
    nb = nbformat.read(nbdir / "03_gamma.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("x = 1"))
    nbformat.write(nb, nbdir / "03_gamma.ipynb")
    res = run("smoke", rd, params={**params, "beta": "y"}, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "skipped", "ran"]


def test_qualified_value_overrides_shared_one_for_its_stage(nbdir, tmp_path):
    rd = tmp_path / "run"
    run("smoke", rd, params={"seed": 5, "gamma.seed": 6}, notebook_dir=nbdir, log=lambda *_: None)
    assert [e["params"]["seed"] for e in _log(rd) if "seed" in e["params"]] == [5, 6]


def test_ambiguous_bare_key_fails_before_anything_runs(nbdir, tmp_path):
    rd = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"'lr' is declared by alpha, gamma: write alpha\.lr=\.\.\., gamma\.lr="):
        run("smoke", rd, params={"lr": 5}, notebook_dir=nbdir, log=lambda *_: None)
    # ambiguity is judged against every notebook, so --only does not change what a key means
    with pytest.raises(ConfigError, match="alpha.lr"):
        run("smoke", rd, only=["01"], params={"lr": 5}, notebook_dir=nbdir, log=lambda *_: None)
    assert not rd.exists()


@pytest.mark.parametrize("key,message", [("delta.lr", "no stage 'delta'; stages: alpha, beta, gamma"),
                                         ("beta.lr", "02_beta declares no 'lr' .did you mean alpha.lr, gamma.lr"),
                                         ("beta.run_dir", "--run-dir"),
                                         ("gamma.lr", "not among the selected")])
def test_wrong_qualified_key_names_the_choices(nbdir, tmp_path, key, message):
    with pytest.raises(ConfigError, match=message):
        run("smoke", tmp_path / "run", only=["01"], params={key: 1}, notebook_dir=nbdir, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_changed_profile_default_reruns_the_notebook(monkeypatch, tmp_path):
    from glmd_lib.config.stages import OverviewConfig
    from glmd_lib.pipeline import NotebookStep, _fingerprint

    step = NotebookStep(discover()[0].path, OverviewConfig)
    params = {"run_dir": str(tmp_path), "profile": "smoke"}
    before = _fingerprint(step, params)
    monkeypatch.setitem(OverviewConfig.profiles, "smoke", {**OverviewConfig.profiles["smoke"], "top_k": 3})
    assert _fingerprint(step, params) != before


def test_only_is_repeatable(nbdir, tmp_path):
    rd = tmp_path / "run"
    res = run("smoke", rd, only=["03", "01"], notebook_dir=nbdir, log=lambda *_: None)
    assert [r["notebook"] for r in res] == ["01_alpha", "03_gamma"]
    with pytest.raises(PipelineError, match="--only 09"):
        run("smoke", rd, only=["09"], notebook_dir=nbdir, log=lambda *_: None)


def test_failure_names_notebook_and_cell_and_stops(nbdir, tmp_path):
    rd = tmp_path / "run"
    with pytest.raises(PipelineError, match=r"02_beta failed in cell \d.*ValueError: boom"):
        run("smoke", rd, params={"fail": True}, notebook_dir=nbdir, log=lambda *_: None)
    assert [e["nb"] for e in _log(rd)] == ["01", "02"]  # 03 never started
    assert not (rd / "pipeline" / "02_beta.json").exists()  # not recorded as complete
    res = run("smoke", rd, params={"fail": False}, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "ran", "ran"]  # resumes at the failed notebook


def test_cell_timeout_stops_a_hanging_notebook(tmp_path):
    d = tmp_path / "nbs"
    d.mkdir()
    _notebook(d / "01_hang.ipynb", {"run_dir": None, "profile": None}, "import time\ntime.sleep(60)")
    with pytest.raises(PipelineError, match="01_hang"):
        run("smoke", tmp_path / "run", notebook_dir=d, log=lambda *_: None, cell_timeout=2)
    assert not (tmp_path / "run" / "pipeline" / "01_hang.json").exists()


def test_unknown_parameter_fails_before_anything_runs(nbdir, tmp_path):
    rd = tmp_path / "run"
    with pytest.raises(ConfigError, match="no_such_key"):
        run("smoke", rd, params={"no_such_key": 1}, notebook_dir=nbdir, log=lambda *_: None)
    assert not rd.exists()


def test_parse_params(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("steps: 3\ntasks: [CB, RTE]\nstage1:\n  lr: 0.002\n  steps: 9\n")
    params = parse_params(["lr=0.001", "name=abc", "flag=true", "stage1.steps=4", "empty="], [str(f)])
    assert params == {"steps": 3, "tasks": ["CB", "RTE"], "lr": 0.001, "name": "abc", "flag": True,
                      "stage1.lr": 0.002, "stage1.steps": 4, "empty": None}  # the pair wins over the file
    assert parse_params(["stage2={lr: 0.1}"]) == {"stage2.lr": 0.1}
    with pytest.raises(ConfigError, match="key=value"):
        parse_params(["steps"])
    f.write_text("stage1:\n  lr:\n    deeper: 1\n")
    with pytest.raises(ConfigError, match="one level"):
        parse_params([], [str(f)])


def test_real_notebooks_validate_types_before_running(tmp_path):
    steps = discover()
    assert steps and all(s.config is not None for s in steps), "every notebook has a config class"
    with pytest.raises(ConfigError, match="steps"):
        validate(steps, "smoke", str(tmp_path), {"stage1.steps": "abc"})
    with pytest.raises(ConfigError, match="no_such_key"):
        validate(steps, "smoke", str(tmp_path), {"no_such_key": 1})


def test_real_notebooks_qualified_key_reaches_only_its_notebook(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("teacher: tiny-random-llama\nstage1:\n  lr: 2.0e-3\nteachers: {lr: 1.0e-5}\n")
    per_nb = validate(discover(), "smoke", str(tmp_path), parse_params(["stage2.lr=3e-4"], [str(f)]))
    lrs = {name: p["lr"] for name, p in per_nb.items() if "lr" in p}
    assert lrs == {"03_stage1_distillation": 0.002, "04_teacher_finetune": 1e-5, "05_stage2_distillation": 3e-4}
    assert isinstance(lrs["05_stage2_distillation"], float)  # "3e-4" is a YAML string; injected typed
    # a shared key reaches every notebook that declares it
    assert {n for n, p in per_nb.items() if "teacher" in p} == {s.name for s in discover()
                                                               if "teacher" in s.config.field_names()}


def test_real_notebooks_ambiguous_bare_key_names_qualified_forms(tmp_path):
    with pytest.raises(ConfigError, match=r"'lr' is declared by stage1, teachers, stage2: write stage1\.lr=\.\.\., "
                                          r"teachers\.lr=\.\.\., stage2\.lr=\.\.\."):
        validate(discover(), "smoke", str(tmp_path), {"lr": 1e-3})
    with pytest.raises(ConfigError, match="eval.tasks"):  # tasks differ per stage: qualified too
        validate(discover(), "smoke", str(tmp_path), {"tasks": ["CB"]})


def test_shared_keys_are_marked_consistently():
    """A key is shared in every config that declares it or in none (else routing depends on the class)."""
    from glmd_lib.pipeline import config_classes

    classes = list(config_classes().values())
    for key in set().union(*(c.shared_keys() for c in classes)):
        assert all(key in c.shared_keys() for c in classes if key in c.field_names()), key
    names = addressing(discover())
    assert names["03_stage1_distillation"]["lr"] == "stage1.lr"
    assert names["03_stage1_distillation"]["teacher"] == "teacher"
    assert names["06_superglue_eval"]["tasks"] == "eval.tasks"


def test_cli_rejects_wrong_parameter_at_once(tmp_path):
    res = subprocess.run([sys.executable, "-m", "glmd_lib.cli", "run", "--profile", "smoke", "--run-dir",
                          str(tmp_path / "r"), "-p", "no_such_key=1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no_such_key" in res.stderr
    assert not (tmp_path / "r").exists()


def test_cli_rejects_ambiguous_parameter_and_lists_qualified_names(tmp_path):
    res = subprocess.run([sys.executable, "-m", "glmd_lib.cli", "run", "--profile", "smoke", "--run-dir",
                          str(tmp_path / "r"), "-p", "batch_size=2"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "stage1.batch_size=..." in res.stderr and not (tmp_path / "r").exists()
    res = subprocess.run([sys.executable, "-m", "glmd_lib.cli", "params", "03"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "stage1.lr" in res.stdout and "\n  teacher " in res.stdout


def test_run_holds_the_run_directory_lock(nbdir, tmp_path):
    """A second pipeline on a held directory fails at once, naming the holder, and runs nothing."""
    import os

    from glmd_lib.runlock import ENV, RunLockedError

    rd = tmp_path / "run"
    hold = ("import sys, time; from glmd_lib.runlock import run_lock\n"
            "with run_lock(sys.argv[1], what='glmd run -p x=1'):\n    print('held', flush=True); time.sleep(60)\n")
    env = {k: v for k, v in os.environ.items() if k != ENV}
    p = subprocess.Popen([sys.executable, "-c", hold, str(rd)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {p.pid} .*glmd run -p x=1"):
            run("smoke", rd, notebook_dir=nbdir, log=lambda *_: None)
    finally:
        p.kill()
        p.wait()
    assert not (rd / "notebooks").exists() and not (rd / "log.jsonl").exists()
