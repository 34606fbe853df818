"""start(): the one set-up cell of every notebook."""
import json

import pytest
import torch

from glmd_lib.artifacts import is_complete, mark_complete
from glmd_lib.config.base import ConfigError
from glmd_lib.config.stages import OverviewConfig, Stage1Config
from glmd_lib.notebook import start


def test_start_resolves_saves_seeds_and_shows_the_config(tmp_path, capsys):
    namespace = {"run_dir": str(tmp_path), "profile": "smoke", "seed": 3, "top_k": 2, "unrelated": 1}
    cfg = start(OverviewConfig, namespace)
    assert isinstance(cfg, OverviewConfig) and cfg.top_k == 2 and cfg.teacher == "tiny-random-llama"
    saved = json.loads((tmp_path / "overview" / "config.json").read_text())
    assert saved["config"]["top_k"] == 2 and "git_commit" in saved
    assert torch.initial_seed() == 3
    assert "OverviewConfig" in capsys.readouterr().out  # displayed (outside Jupyter: printed)
    import pandas as pd

    assert pd.get_option("display.precision") == 4


def test_start_withdraws_the_complete_marker(tmp_path):
    """A rerun stage is not complete until it finishes again (the pipeline's resume relies on it)."""
    out = tmp_path / "overview"
    out.mkdir()
    mark_complete(out)
    start(OverviewConfig, {"run_dir": str(tmp_path), "profile": "smoke"}, show=False)
    assert not is_complete(out)


def test_start_fails_on_a_bad_parameter_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="steps"):
        start(Stage1Config, {"run_dir": str(tmp_path), "profile": "smoke", "steps": "many"}, show=False)
    assert not (tmp_path / "stage1").exists()


def test_start_refuses_a_run_dir_another_process_writes_into(tmp_path, monkeypatch):
    """A notebook run by hand while `glmd run` works in the same directory: refused before it touches
    anything (the finished stage keeps its marker)."""
    import subprocess
    import sys

    from glmd_lib.runlock import ENV, RunLockedError

    monkeypatch.delenv(ENV, raising=False)
    out = tmp_path / "overview"
    out.mkdir()
    mark_complete(out)
    hold = ("import sys, time; from glmd_lib.runlock import run_lock\n"
            "with run_lock(sys.argv[1], what='glmd run'):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {p.pid}.*glmd run"):
            start(OverviewConfig, {"run_dir": str(tmp_path), "profile": "smoke"}, show=False)
    finally:
        p.kill()
        p.wait()
    assert is_complete(out) and not (out / "config.json").exists()
