"""glmd run: order, parameters, resume, --only, failures. Uses tiny throw-away notebooks (no models)."""
import json
import subprocess
import sys

import nbformat
import pytest

from glmd_lib.config.base import ConfigError
from glmd_lib.pipeline import PipelineError, discover, parse_params, run, validate


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
    _notebook(d / "01_alpha.ipynb", {**common, "alpha": 1},
              LOG.replace("NAME", "'01'").replace("KEYS", "('alpha', 'profile')"))
    _notebook(d / "02_beta.ipynb", {**common, "beta": "x", "fail": False},
              LOG.replace("NAME", "'02'").replace("KEYS", "('beta',)") + "\nif fail:\n    raise ValueError('boom')")
    _notebook(d / "03_gamma.ipynb", {**common, "alpha": 0},
              LOG.replace("NAME", "'03'").replace("KEYS", "('alpha',)"))
    return d


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_runs_in_order_routes_params_and_resumes(nbdir, tmp_path):
    rd = tmp_path / "run"
    res = run("smoke", rd, params={"alpha": 5}, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["ran"] * 3
    log = _log(rd)
    assert [e["nb"] for e in log] == ["01", "02", "03"]
    assert log[0]["params"] == {"alpha": 5, "profile": "smoke"} and log[2]["params"] == {"alpha": 5}
    assert log[1]["params"] == {"beta": "x"}  # not declared there: not injected
    assert sorted(p.name for p in (rd / "notebooks").iterdir()) == ["01_alpha.ipynb", "02_beta.ipynb",
                                                                    "03_gamma.ipynb"]
    # rerun with the same parameters: everything is skipped
    res = run("smoke", rd, params={"alpha": 5}, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped"] * 3 and len(_log(rd)) == 3
    # a parameter of 02 changed: 01 is skipped, 02 and everything after it run again
    res = run("smoke", rd, params={"alpha": 5, "beta": "y"}, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "ran", "ran"]
    # an edited notebook counts as changed too
    nb = nbformat.read(nbdir / "03_gamma.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("x = 1"))
    nbformat.write(nb, nbdir / "03_gamma.ipynb")
    res = run("smoke", rd, params={"alpha": 5, "beta": "y"}, notebook_dir=nbdir, log=lambda *_: None)
    assert [r["status"] for r in res] == ["skipped", "skipped", "ran"]


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
    f.write_text("steps: 3\ntasks: [CB, RTE]\n")
    params = parse_params(["lr=0.001", "name=abc", "flag=true"], [str(f)])
    assert params == {"steps": 3, "tasks": ["CB", "RTE"], "lr": 0.001, "name": "abc", "flag": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_params(["steps"])


def test_real_notebooks_validate_types_before_running(tmp_path):
    steps = discover()
    assert steps and all(s.config is not None for s in steps), "every notebook has a config class"
    with pytest.raises(ConfigError, match="steps"):
        validate(steps, "smoke", str(tmp_path), {"steps": "abc"})
    with pytest.raises(ConfigError, match="no_such_key"):
        validate(steps, "smoke", str(tmp_path), {"no_such_key": 1})


def test_cli_rejects_wrong_parameter_at_once(tmp_path):
    res = subprocess.run([sys.executable, "-m", "glmd_lib.cli", "run", "--profile", "smoke", "--run-dir",
                          str(tmp_path / "r"), "-p", "no_such_key=1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no_such_key" in res.stderr
    assert not (tmp_path / "r").exists()
