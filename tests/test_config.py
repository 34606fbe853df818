import json
import re
import typing

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
    from glmd_lib.config.base import PROFILE_PARENT, PROFILES
    from glmd_lib.pipeline import config_classes

    classes = config_classes()
    assert len(classes) >= 8
    for cls in classes.values():
        for p in PROFILES:
            cls.resolve(profile=p, run_dir="/tmp/x")
        # no table left behind by a rename; a profile with a parent (compare) may have no table of its own
        assert set(PROFILES) - set(PROFILE_PARENT) <= set(cls.profiles) <= set(PROFILES), cls.__name__


def test_a_child_profile_is_its_parents_values_plus_its_own():
    """compare starts from demo: a stage without a compare table resolves exactly as under demo; one with a table
    differs only in the keys that table names."""
    from glmd_lib.config.stages import Stage1Config, TeacherConfig, VocabConfig

    demo, comp = (TeacherConfig.resolve(p, run_dir="x").to_dict() for p in ("demo", "compare"))
    assert "compare" not in TeacherConfig.profiles and {**demo, "profile": "compare"} == comp
    for cls in (Stage1Config, VocabConfig):
        own = cls.profiles["compare"]
        demo, comp = (cls.resolve(p, run_dir="x").to_dict() for p in ("demo", "compare"))
        assert {k for k in demo if demo[k] != comp[k]} == {"profile"} | {k for k in own if own[k] != demo[k]}
    assert Stage1Config.resolve("compare", run_dir="x", steps=7).steps == 7  # explicit parameters still win
    # the comparison's students stay 4 x 256 over 480 blocks while the demo's is the teacher's width; the vocabulary
    # stage counts the parameters of the student that stage 1 trains, under either profile
    for p in ("demo", "compare"):
        s1, voc = Stage1Config.resolve(p, run_dir="x"), VocabConfig.resolve(p, run_dir="x")
        assert all(getattr(s1, k) == getattr(voc, k) for k in ("student_layers", "student_hidden", "student_heads",
                                                               "student_kv_heads", "student_intermediate"))
    assert Stage1Config.resolve("compare", run_dir="x").student_hidden == 256
    assert Stage1Config.resolve("demo", run_dir="x").student_hidden == 576


def test_profile_names_are_one_list():
    """The ``profile`` field's choices are exactly PROFILES (``full`` became ``gpu``; ``paper`` is new)."""
    from glmd_lib.config.base import PROFILES, StageConfig

    (choices, _none) = typing.get_args(typing.get_type_hints(StageConfig)["profile"])
    assert typing.get_args(choices) == PROFILES == ("smoke", "demo", "gpu", "paper", "compare")
    with pytest.raises(ConfigError, match="full"):
        Stage1Config.resolve(profile="full", run_dir="/tmp/x")


def test_paper_profile_holds_the_papers_settings():
    from glmd_lib.config.stages import Stage2Config, VocabConfig

    s1 = Stage1Config.resolve(profile="paper", run_dir="/tmp/x")
    vocab = VocabConfig.resolve(profile="paper", run_dir="/tmp/x")
    s2 = Stage2Config.resolve(profile="paper", run_dir="/tmp/x")
    assert s1.temperature == 15 and vocab.keep_rate == 0.5 and vocab.substitute == "dot"
    assert (s1.lr, s1.weight_decay, s1.seq_len, s1.batch_size * s1.grad_accum) == (4e-4, 0.1, 512, 64)
    assert s1.warmup_steps == s1.steps // 20 and s1.init == "random"  # 5% warm-up
    shape = ("student_layers", "student_hidden", "student_heads", "student_kv_heads", "student_intermediate")
    assert [getattr(s1, k) for k in shape] == [getattr(vocab, k) for k in shape]  # one student, counted as trained
    assert (s2.lr, s2.warmup_ratio, s2.max_seq_len) == (1e-5, 0.1, 512)  # 10% warm-up (tests/test_optim.py: the rest)


def test_data_dir_resolution(monkeypatch, tmp_path):
    assert resolve_superglue_dir(tmp_path) == tmp_path
    monkeypatch.setenv("GLMD_DATA", str(tmp_path / "sg"))
    assert resolve_superglue_dir() == tmp_path / "sg"
    monkeypatch.delenv("GLMD_DATA")
    assert resolve_superglue_dir().name == "superglue"
    monkeypatch.setenv("GLMD_CORPUS", str(tmp_path / "c"))
    assert resolve_corpus_dir() == tmp_path / "c"


def _numeric_fields():
    """(config class, field) for every number any config declares (the README's promise covers them all)."""
    import dataclasses

    from glmd_lib.pipeline import config_classes

    for cls in config_classes().values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if {int, float} & set(typing.get_args(hints[f.name]) or (hints[f.name],)):
                yield cls, f, hints[f.name]


def test_every_float_parameter_must_be_finite():
    floats = [(cls, f) for cls, f, tp in _numeric_fields() if float in (typing.get_args(tp) or (tp,))]
    assert {f.name for _, f in floats} >= {"temperature", "lr", "keep_rate", "weight_decay", "mlm_probability"}
    for cls, f in floats:
        for bad in ("nan", "inf", "-inf", float("nan")):
            with pytest.raises(ConfigError, match=rf"'{f.name}' must be a finite number"):
                cls.resolve(profile="smoke", run_dir="/tmp/x", **{f.name: bad})


def test_every_count_declares_a_range_and_below_it_is_refused():
    """Every int parameter says what it allows; the value just below is refused, naming the range."""
    from glmd_lib.config.base import allowed_range

    for cls, f, _ in _numeric_fields():
        assert allowed_range(f), f"{cls.__name__}.{f.name} declares no range (ge=, gt=, le=, lt=)"
        low = f.metadata.get("ge", f.metadata.get("gt"))
        if low is not None and float(low).is_integer() and "ge" in f.metadata:
            with pytest.raises(ConfigError, match=rf"'{f.name}' must be {re.escape(allowed_range(f))}"):
                cls.resolve(profile="smoke", run_dir="/tmp/x", **{f.name: int(low) - 1})


def test_task_names_are_checked_with_a_hint():
    from glmd_lib.config.stages import EvalConfig, FrequencyConfig, Stage2Config, TeacherConfig

    with pytest.raises(ConfigError, match=r"'cb' is not a SuperGLUE task \(did you mean 'CB'\?\); allowed: BoolQ"):
        TeacherConfig.resolve(profile="smoke", tasks=["cb"])
    with pytest.raises(ConfigError, match="'AX-g' is a diagnostic"):
        Stage2Config.resolve(profile="smoke", tasks=["RTE", "AX-g"])
    with pytest.raises(ConfigError, match="lists 'RTE' twice"):
        EvalConfig.resolve(profile="smoke", tasks=["RTE", "RTE"])
    with pytest.raises(ConfigError, match="at least one task"):
        TeacherConfig.resolve(profile="smoke", tasks=[])
    assert EvalConfig.resolve(profile="smoke", tasks=["CB", "AX-b"]).tasks == ["CB", "AX-b"]
    assert FrequencyConfig.resolve(profile="smoke", tasks=[]).tasks == []  # counting no task texts is fine


def test_saved_config_is_strict_json(tmp_path):
    text = Stage1Config.resolve(profile="smoke", run_dir=str(tmp_path)).save().read_text()
    json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))


def test_parameter_file_errors_name_the_file_and_line(tmp_path):
    from glmd_lib.config.base import parse_params

    f = tmp_path / "p.yaml"
    f.write_text("seed: 1\nstage1: {lr: 2\n")
    with pytest.raises(ConfigError, match=rf"parameter file {re.escape(str(f))}, line 3, column 1: not valid YAML"):
        parse_params([], [str(f)])
    f.write_bytes(b"seed: \xff\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(f))} cannot be read"):
        parse_params([], [str(f)])
    with pytest.raises(ConfigError, match="must hold a mapping"):
        f.write_text("[1, 2]\n")
        parse_params([], [str(f)])
    with pytest.raises(ConfigError, match="does-not-exist.yaml cannot be read"):
        parse_params([], [str(tmp_path / "does-not-exist.yaml")])
