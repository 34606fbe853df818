import json

import pytest

from glmd_lib.artifacts import (ArtifactError, atomic_path, atomic_write_json, is_complete, mark_complete, read_json,
                           require_complete)


def test_atomic_file_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2')  # half-written
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_atomic_directory_replace(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "w.bin").write_text("one")
    with pytest.raises(ValueError):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "w.bin").write_text("two")
            raise ValueError
    assert (target / "w.bin").read_text() == "one"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "w.bin").write_text("three")
    assert (target / "w.bin").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_complete_marker(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        mark_complete(tmp_path, ["result.csv"])
    assert not is_complete(tmp_path)
    with pytest.raises(ArtifactError, match="run 02_vocab"):
        require_complete(tmp_path, "02_vocab_pruning")
    (tmp_path / "result.csv").write_text("x")
    mark_complete(tmp_path, ["result.csv"])
    assert require_complete(tmp_path, "02") == tmp_path


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(ArtifactError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ArtifactError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def _stage(run_dir, name, settings: dict):
    """A finished stage ``name`` with a config.json and one artifact, as the library writes them."""
    from glmd_lib.artifacts import stage_dir

    d = stage_dir(run_dir, name)
    atomic_write_json(d / "config.json", {"stage": name, "config": settings})
    (d / "out.txt").write_text(json.dumps(settings))
    mark_complete(d, ["config.json", "out.txt"])
    return d


def test_marker_records_config_artifacts_and_inputs(tmp_path):
    _stage(tmp_path, "frequency", {"max_lines": 3})
    vocab = _stage(tmp_path, "vocab", {"keep_rate": 0.5})
    marker = json.loads((vocab / "COMPLETE.json").read_text())
    assert set(marker["stamps"]) == {"out.txt"} and marker["settings"] == {"keep_rate": 0.5}
    assert set(marker["inputs"]) == {"frequency"} and len(marker["config_sha256"]) == 64


def test_rerun_of_an_earlier_stage_makes_every_later_one_stale(tmp_path):
    from glmd_lib.artifacts import STAGES

    _stage(tmp_path, "frequency", {"max_lines": 3})
    _stage(tmp_path, "vocab", {"keep_rate": 0.5})
    _stage(tmp_path, "stage1", {"steps": 6})
    assert STAGES["stage1"].require(tmp_path)
    _stage(tmp_path, "frequency", {"max_lines": 3})  # rerun, same settings: a new result all the same
    with pytest.raises(ArtifactError, match=r"stage 'vocab' is stale.*frequency/ results .*01_word_frequency"):
        STAGES["vocab"].require(tmp_path)
    with pytest.raises(ArtifactError, match=r"stage 'stage1' is stale.*made from vocab/, which was made from "
                                            r"frequency/.*Rerun 03_stage1_distillation"):
        STAGES["stage1"].require(tmp_path)


def test_marker_without_digests_is_still_accepted(tmp_path):
    """A run finished before markers had digests (or a hand-made marker) stays usable."""
    atomic_write_json(tmp_path / "config.json", {"config": {"a": 1}})
    atomic_write_json(tmp_path / "COMPLETE.json", {"artifacts": []})
    assert is_complete(tmp_path)
    (tmp_path / "COMPLETE.json").write_text("{")
    with pytest.raises(ArtifactError, match="unreadable COMPLETE.json.*run 02_vocab_pruning first"):
        require_complete(tmp_path, "02_vocab_pruning")


def test_begin_stage_withdraws_the_marker_then_saves_the_config(tmp_path):
    from glmd_lib.artifacts import begin_stage
    from glmd_lib.config.stages import FrequencyConfig

    cfg = FrequencyConfig.resolve(profile="smoke", run_dir=str(tmp_path), max_lines=3)
    assert begin_stage(cfg) == tmp_path / "frequency"
    mark_complete(cfg.out_dir, ["config.json"])
    cfg.max_lines = 9
    begin_stage(cfg)
    assert not (cfg.out_dir / "COMPLETE.json").exists()
    assert json.loads((cfg.out_dir / "config.json").read_text())["config"]["max_lines"] == 9
