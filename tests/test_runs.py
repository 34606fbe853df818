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
