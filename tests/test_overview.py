"""run_overview: notebook 00's work writes the overview stage through the artifact registry."""
import json

import pandas as pd

from glmd_lib.artifacts import STAGES, artifact, is_complete
from glmd_lib.config.stages import OverviewConfig
from glmd_lib.models.inspect import run_overview


def test_run_overview_writes_the_stage(tmp_path):
    cfg = OverviewConfig.resolve(profile="smoke", run_dir=str(tmp_path), top_k=3, prompts=["a b", "c"])
    result = run_overview(cfg)
    assert is_complete(tmp_path / "overview")
    for name in STAGES["overview"].files + ("next_tokens.png",):
        assert (tmp_path / "overview" / name).exists(), name
    table = pd.read_csv(artifact(tmp_path, "overview", "next_tokens.csv"))
    assert len(table) == 2 * 3 and list(table["prompt"].unique()) == ["a b", "c"]
    summary = json.loads(artifact(tmp_path, "overview", "summary.json").read_text())
    assert summary["teacher"] == "tiny-random-llama" and summary["parameters"] == result.info["parameters"]
    assert summary["speed"]["tokens"] == cfg.speed_batches * 8 * 128
    assert len(result.figure.axes) == 2
