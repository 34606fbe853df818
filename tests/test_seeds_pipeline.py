"""glmd run -p seeds=[...]: the untrained stages (00-02) once, the trained ones (03-06) per seed in
``<run_dir>/seed-<k>/`` with ``seed=k`` and the shared stages linked in, 07 once; resume per directory.

Stand-in notebooks (no models) named so that no real config matches them: each appends what it ran with to one
log file; the shared ones write ``<run_dir>/<stage>/done.txt``, the trained ones read it through their seed
directory's link, 06 writes a tiny ``eval/results.csv`` and 07 counts the seed runs the report would find.
"""
import json
import os

import pytest
from test_pipeline import _notebook

from glmd_lib.config.base import ConfigError, parse_params
from glmd_lib.pipeline import PipelineError, discover, link_shared, parse_seeds, plan, run, select
from glmd_lib.runlock import ENV, _exempt

LOG = """
import json, pathlib
rd = pathlib.Path(run_dir)
with open(LOGFILE, "a") as f:
    f.write(json.dumps({"nb": NAME, "run_dir": str(rd), "seed": globals().get("seed"),
                        "lr": globals().get("lr")}) + "\\n")
"""
SHARED = "\n(rd / STAGE).mkdir(parents=True, exist_ok=True)\n(rd / STAGE / 'done.txt').write_text('x')\n"
TRAINED = "\nassert (rd / 'vo' / 'done.txt').read_text() == 'x'  # the shared vocabulary, through the link\n"
EVAL = """
(rd / "eval").mkdir(parents=True, exist_ok=True)
(rd / "eval" / "results.csv").write_text(f"task,model,metric,value\\nCB,student,score,{0.5 + seed / 10}\\n")
"""
REPORT = """
from glmd_lib.tasks.seeds import seed_runs
with open(LOGFILE, "a") as f:
    f.write(json.dumps({"nb": "07-found", "runs": [p.name for p in seed_runs(rd)]}) + "\\n")
"""


@pytest.fixture
def nbdir(tmp_path):
    d = tmp_path / "notebooks"
    d.mkdir()
    logfile = str(tmp_path / "log.jsonl")
    common = {"run_dir": None, "profile": None, "seed": 0}

    def log(name):
        return LOG.replace("NAME", repr(name)).replace("LOGFILE", repr(logfile))

    for name in ("00_ov", "01_fr", "02_vo"):
        _notebook(d / f"{name}.ipynb", common, log(name[:2]) + SHARED.replace("STAGE", repr(name[3:])))
    _notebook(d / "03_sone.ipynb", {**common, "lr": 1}, log("03") + TRAINED)
    for name in ("04_te", "05_stwo"):
        _notebook(d / f"{name}.ipynb", common, log(name[:2]) + TRAINED)
    _notebook(d / "06_eval.ipynb", common, log("06") + EVAL)
    _notebook(d / "07_rep.ipynb", {"run_dir": None, "profile": None},
              log("07") + REPORT.replace("LOGFILE", repr(logfile)))
    return d


def _log(tmp_path):
    path = tmp_path / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def quiet(*_):
    pass


def test_seeds_run_trained_stages_per_seed_and_the_rest_once(nbdir, tmp_path):
    rd = tmp_path / "run"
    res = run("smoke", rd, params={"seeds": [0, 1], "lr": 3}, notebook_dir=nbdir, log=quiet)
    log = _log(tmp_path)
    ran = [(e["nb"], e.get("seed"), os.path.relpath(e["run_dir"], rd)) for e in log if e["nb"] != "07-found"]
    trained = ["03", "04", "05", "06"]
    assert ran == ([(n, 0, ".") for n in ("00", "01", "02")]
                   + [(n, k, f"seed-{k}") for k in (0, 1) for n in trained]
                   + [("07", None, ".")])
    assert all(e["lr"] == 3 for e in log if e["nb"] == "03")  # a stage's own key still reaches it per seed
    assert [r.get("seed") for r in res] == [None] * 3 + [0] * 4 + [1] * 4 + [None]
    for k in (0, 1):
        sub = rd / f"seed-{k}"
        for stage in ("ov", "fr", "vo"):  # relative links, so a moved or copied run stays whole
            assert (sub / stage).is_symlink() and os.readlink(sub / stage) == os.path.join("..", stage)
        assert (sub / "notebooks" / "03_sone.ipynb").exists() and (sub / "pipeline" / "06_eval.json").exists()
        assert not (sub / ".lock").exists()  # covered by the run directory's lock, never taken on its own
    assert log[-1] == {"nb": "07-found", "runs": ["seed-0", "seed-1"]}  # the report sees both seeds

    # resume: everything finished is skipped; one more seed runs only its own stages
    res = run("smoke", rd, params={"seeds": [0, 1], "lr": 3}, notebook_dir=nbdir, log=quiet)
    assert {r["status"] for r in res} == {"skipped"}
    only = ["03", "04", "05", "06"]
    res = run("smoke", rd, only=only, params={"seeds": [0, 1, 2], "lr": 3}, notebook_dir=nbdir, log=quiet)
    assert [(r["seed"], r["status"]) for r in res] == [(0, "skipped")] * 4 + [(1, "skipped")] * 4 + [(2, "ran")] * 4
    assert (rd / "seed-2" / "vo").is_symlink()


def test_plan_groups_seeds_from_yaml_and_with_only(nbdir, tmp_path):
    rd = tmp_path / "run"
    yml = tmp_path / "p.yaml"
    yml.write_text("seeds: [3, 4]\nsone: {lr: 5}\n")
    universe = discover(nbdir)
    groups = plan("smoke", rd, universe, universe, parse_params(files=[str(yml)]))
    assert [(g.run_dir.name, g.seed, [s.number for s in g.steps]) for g in groups] == [
        ("run", None, ["00", "01", "02"]), ("seed-3", 3, ["03", "04", "05", "06"]),
        ("seed-4", 4, ["03", "04", "05", "06"]), ("run", None, ["07"])]
    assert groups[1].per_notebook["03_sone"] == {"run_dir": str(rd / "seed-3"), "profile": "smoke", "seed": 3,
                                                  "lr": 5}
    groups = plan("smoke", rd, select(universe, ["04"]), universe, {"seeds": "1,2", "seed": 9})
    assert [(g.seed, [s.number for s in g.steps]) for g in groups] == [(1, ["04"]), (2, ["04"])]
    assert groups[0].per_notebook["04_te"]["seed"] == 1  # seed=k wins in a seed's own directory
    assert len(plan("smoke", rd, universe, universe, {"seeds": []})) == 1  # no seeds: one group, as before
    assert not rd.exists()  # planning touches nothing


@pytest.mark.parametrize("value", ["a", [-1], [1, 1], [0.5], [True]])
def test_bad_seeds_fail_before_anything_runs(nbdir, tmp_path, value):
    with pytest.raises(ConfigError, match="seeds"):
        parse_seeds(value)
    with pytest.raises(ConfigError, match="seeds"):
        run("smoke", tmp_path / "run", params={"seeds": value}, notebook_dir=nbdir, log=quiet)
    assert not (tmp_path / "run").exists() and not _log(tmp_path)


def test_a_real_stage_directory_in_a_seed_directory_is_refused(nbdir, tmp_path):
    rd = tmp_path / "run"
    (rd / "seed-0" / "vo").mkdir(parents=True)
    with pytest.raises(PipelineError, match="not a link"):
        link_shared(rd, rd / "seed-0", discover(nbdir))


def test_a_held_run_directory_covers_its_sub_directories(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv(ENV, str(tmp_path / "run"))
    assert _exempt((tmp_path / "run").resolve()) and _exempt((tmp_path / "run" / "seed-0").resolve())
    assert not _exempt((tmp_path / "other").resolve()) and not _exempt((tmp_path / "run-2").resolve())
