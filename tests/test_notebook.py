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
