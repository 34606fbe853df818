import json

import pytest

from glmd_lib.config.base import ConfigError
from glmd_lib.data.paths import resolve_corpus_dir, resolve_superglue_dir
from glmd_lib.config.stages import OverviewConfig, Stage1Config, VocabConfig


def test_profile_defaults_and_explicit_override(tmp_path):
    smoke = Stage1Config.resolve(profile="smoke", run_dir=str(tmp_path))
    demo = Stage1Config.resolve(profile="demo", run_dir=str(tmp_path))
    assert smoke.steps != demo.steps and smoke.teacher == "tiny-random-llama"
    explicit = Stage1Config.resolve(profile="smoke", run_dir=str(tmp_path), steps=11)
    assert explicit.steps == 11  # explicit beats the profile
    # None means "not given": the profile's value stays
    assert Stage1Config.resolve(profile="smoke", run_dir=str(tmp_path), steps=None).steps == smoke.steps


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="no_such_key"):
        Stage1Config.resolve(profile="smoke", no_such_key=1)


@pytest.mark.parametrize("key,value", [("steps", "abc"), ("steps", 1.5), ("use_vocab_map", "maybe"),
                                       ("lr", "fast"), ("init", "pretrained"), ("steps", True)])
def test_wrong_type_is_named(key, value):
    with pytest.raises(ConfigError, match=key):
        Stage1Config.resolve(profile="smoke", **{key: value})


def test_lossless_coercions():
    cfg = Stage1Config.resolve(profile="smoke", steps="12", lr=1, use_vocab_map="false", teacher_topk=None)
    assert cfg.steps == 12 and isinstance(cfg.lr, float) and cfg.use_vocab_map is False
    cfg = OverviewConfig.resolve(profile="smoke", prompts="a b,c d")
    assert cfg.prompts == ["a b", "c d"]


def test_value_checks():
    with pytest.raises(ConfigError, match="temperature"):
        Stage1Config.resolve(profile="smoke", temperature=0)
    with pytest.raises(ConfigError, match="keep_rate"):
        VocabConfig.resolve(profile="smoke", keep_rate=1.5)
    with pytest.raises(ConfigError, match="profile"):
        Stage1Config.resolve(profile="huge")


def test_profile_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GLMD_PROFILE", "smoke")
    monkeypatch.setenv("GLMD_RUN_DIR", str(tmp_path / "r"))
    cfg = OverviewConfig.from_namespace({"run_dir": None, "profile": None, "top_k": 3, "unrelated": 1})
    assert cfg.profile == "smoke" and cfg.top_k == 3 and cfg.run_dir == str(tmp_path / "r")


def test_save_round_trips_with_provenance(tmp_path):
    cfg = Stage1Config.resolve(profile="smoke", run_dir=str(tmp_path), steps=7)
    path = cfg.save()
    assert path == tmp_path / "stage1" / "config.json"
    data = json.loads(path.read_text())
    assert data["stage"] == "stage1" and "versions" in data and "git_commit" in data
    assert data["versions"]["torch"].startswith("2.13")
    assert Stage1Config.from_json(path) == cfg


def test_every_profile_resolves_for_every_config():
    from glmd_lib.config.base import PROFILES
    from glmd_lib.pipeline import config_classes

    classes = config_classes()
    assert len(classes) >= 8
    for cls in classes.values():
        for p in PROFILES:
            cls.resolve(profile=p, run_dir="/tmp/x")


def test_data_dir_resolution(monkeypatch, tmp_path):
    assert resolve_superglue_dir(tmp_path) == tmp_path
    monkeypatch.setenv("GLMD_DATA", str(tmp_path / "sg"))
    assert resolve_superglue_dir() == tmp_path / "sg"
    monkeypatch.delenv("GLMD_DATA")
    assert resolve_superglue_dir().name == "superglue"
    monkeypatch.setenv("GLMD_CORPUS", str(tmp_path / "c"))
    assert resolve_corpus_dir() == tmp_path / "c"
