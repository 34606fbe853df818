"""SuperGLUE readers: official layout and format, quirks, malformed input, data_dir resolution."""
from __future__ import annotations

import json

import pytest

from glmd_lib.data.paths import SHARED_DATA
from glmd_lib.superglue.data import (DIAGNOSTICS, SPLITS, TASKS, DataError, MissingDataError, example_texts,
                                     read_split, subsample)
from glmd_lib.superglue.toy import write_toy_dataset


@pytest.fixture
def toy(tmp_path):
    return write_toy_dataset(tmp_path / "sg", n=6)


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))  # no final newline, like the official test files


@pytest.mark.parametrize("task", TASKS)
def test_every_task_reads_its_splits(toy, task):
    for split in (["test"] if task in DIAGNOSTICS else SPLITS):
        exs = read_split(task, split, toy)
        assert exs and all(ex.task == task for ex in exs)
        if split == "test" and task not in DIAGNOSTICS:
            assert all(ex.label is None for ex in exs)
        else:
            assert all(ex.label is not None for ex in exs)
        assert all(t.strip() for ex in exs for t in example_texts(ex))


def test_quirks_flattening_and_labels(toy):
    axb = read_split("AX-b", "test", toy)
    assert [ex.idx for ex in axb] == list(range(6))  # string idx in the file -> int
    axg = read_split("AX-g", "test", toy)
    assert [ex.group for ex in axg] == [0, 0, 1, 1, 2, 2]  # consecutive lines, although pair_id differs
    mrc = read_split("MultiRC", "val", toy)
    assert len(mrc) == 12 and mrc[1].idx == (0, 0, 1) and mrc[1].group == (0, 0) and mrc[1].label == 0
    assert mrc[0].answer == "Paris" and mrc[0].question.startswith("What")
    rec = read_split("ReCoRD", "train", toy)
    assert rec[0].candidates == ["Paris", "Rome"] and rec[0].label == ["Paris"]
    assert read_split("BoolQ", "train", toy)[0].label is False
    assert read_split("COPA", "val", toy)[1].label == 1
    with pytest.raises(ValueError, match="only the 'test' split"):
        read_split("AX-b", "val", toy)


def test_max_examples_cuts_at_group_boundaries(toy):
    assert len(read_split("CB", "train", toy, max_examples=4)) == 4
    assert len(read_split("MultiRC", "val", toy, max_examples=5)) == 4  # whole questions of 2 answers
    assert len(read_split("AX-g", "test", toy, max_examples=3)) == 2


def test_subsample_is_seeded_and_keeps_groups(toy):
    mrc = read_split("MultiRC", "train", toy)
    a, b = subsample(mrc, 6, seed=3), subsample(mrc, 6, seed=3)
    assert [e.idx for e in a] == [e.idx for e in b] and len(a) == 6
    groups = {e.group for e in a}
    assert all(sum(e.group == g for e in a) == 2 for g in groups)
    assert subsample(mrc, None) == mrc


def test_bad_json_names_file_and_line(tmp_path):
    _write(tmp_path / "CB" / "train.jsonl", [json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral",
                                                         "idx": 0}), "{not json"])
    with pytest.raises(DataError, match=r"CB/train.jsonl, line 2: invalid JSON") as e:
        read_split("CB", "train", tmp_path)
    assert e.value.line == 2


def test_missing_field_and_unknown_label_named(tmp_path):
    _write(tmp_path / "RTE" / "val.jsonl", [json.dumps({"premise": "a", "label": "entailment", "idx": 0})])
    with pytest.raises(DataError, match=r"line 1, field 'hypothesis': missing field"):
        read_split("RTE", "val", tmp_path)
    _write(tmp_path / "RTE" / "val.jsonl", ["", json.dumps({"premise": "a", "hypothesis": "b", "label": "yes",
                                                             "idx": 0})])
    with pytest.raises(DataError, match=r"line 2, field 'label': unknown label 'yes'"):
        read_split("RTE", "val", tmp_path)
    # BoolQ labels are booleans: the HF-export strings "true"/"false" are not the official format
    _write(tmp_path / "BoolQ" / "val.jsonl", [json.dumps({"question": "q", "passage": "p", "idx": 0,
                                                           "label": "true"})])
    with pytest.raises(DataError, match="unknown label 'true'"):
        read_split("BoolQ", "val", tmp_path)
    _write(tmp_path / "COPA" / "train.jsonl", [json.dumps({"premise": "p", "choice1": "a", "choice2": "b",
                                                            "question": "cause", "idx": 0})])
    with pytest.raises(DataError, match="field 'label': missing field"):
        read_split("COPA", "train", tmp_path)


def test_nested_fields_are_named(tmp_path):
    rec = {"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", "idx": 0,
                                                              "answers": [{"text": "a", "idx": 0, "label": 2}]}]}}
    _write(tmp_path / "MultiRC" / "val.jsonl", [json.dumps(rec)])
    with pytest.raises(DataError, match=r"passage.questions\[0\].answers\[0\].label"):
        read_split("MultiRC", "val", tmp_path)
    rec = {"idx": 0, "source": "s", "passage": {"text": "Paris", "entities": [{"start": 0, "end": 4}]},
           "qas": [{"idx": 0, "query": "no placeholder", "answers": []}]}
    _write(tmp_path / "ReCoRD" / "val.jsonl", [json.dumps(rec)])
    with pytest.raises(DataError, match=r"qas\[0\].query"):
        read_split("ReCoRD", "val", tmp_path)


def test_missing_task_names_path_and_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(MissingDataError) as e:
        read_split("ReCoRD", "val", tmp_path)
    assert str(tmp_path / "ReCoRD" / "val.jsonl") in str(e.value) and "GLMD_DATA" in str(e.value)
    assert "download_superglue" in str(e.value)


def test_glmd_data_env_is_used(toy, monkeypatch):
    monkeypatch.setenv("GLMD_DATA", str(toy))
    assert len(read_split("CB", "val")) == 6


def test_non_utf8_byte_names_file_line_and_remedy(tmp_path):
    path = tmp_path / "CB" / "train.jsonl"
    good = json.dumps({"premise": "a", "hypothesis": "b", "label": "neutral", "idx": 0})
    bad = b'{"premise": "caf\xe9", "hypothesis": "b", "label": "neutral", "idx": 1}'  # Latin-1 e-acute
    path.parent.mkdir(parents=True)
    path.write_bytes(good.encode() + b"\n\n" + bad + b"\n")
    with pytest.raises(DataError, match=r"CB/train.jsonl, line 3: not valid UTF-8 .*convert the file to UTF-8 "
                                        r"or re-download the task") as e:
        read_split("CB", "train", tmp_path)
    assert e.value.line == 3


@pytest.mark.parametrize("task,split", [("CB", "train"), ("RTE", "test"), ("MultiRC", "val"), ("AX-b", "test")])
@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_an_empty_split_is_refused_naming_the_file(tmp_path, task, split, content):
    """No official split is empty (test files included): an empty one is a cut-short copy, not zero examples."""
    name = f"{task}.jsonl" if task in DIAGNOSTICS else f"{split}.jsonl"
    _write(tmp_path / task / name, [content])
    with pytest.raises(DataError, match=rf"{task}/{name}: no records \(the file is empty\).*re-download"):
        read_split(task, split, tmp_path)


def test_a_duplicated_record_is_refused_with_both_lines(tmp_path):
    rec = {"premise": "a", "hypothesis": "b", "label": "neutral"}
    _write(tmp_path / "CB" / "val.jsonl", [json.dumps({**rec, "idx": i}) for i in (0, 1, 0)])
    with pytest.raises(DataError, match=r"CB/val.jsonl, line 3, field 'idx': duplicate record idx 0, already on "
                                        r"line 1") as e:
        read_split("CB", "val", tmp_path)
    assert e.value.line == 3
    axb = {"label": "entailment", "sentence1": "a", "sentence2": "b"}  # AX-b's idx is a string
    _write(tmp_path / "AX-b" / "AX-b.jsonl", [json.dumps({**axb, "idx": "7"}), "", json.dumps({**axb, "idx": "7"})])
    with pytest.raises(DataError, match=r"line 3, field 'idx': duplicate record idx '7', already on line 1"):
        read_split("AX-b", "test", tmp_path)


def test_duplicates_are_checked_per_record_not_per_flattened_example(toy, tmp_path):
    """A MultiRC paragraph or ReCoRD passage gives many examples; only a repeated *record* idx is refused."""
    for task in ("MultiRC", "ReCoRD"):
        lines = (toy / task / "val.jsonl").read_text().splitlines()
        assert len(read_split(task, "val", toy)) >= len(lines)
        _write(tmp_path / task / "val.jsonl", lines + [lines[2]])
        with pytest.raises(DataError, match=rf"{task}/val.jsonl, line {len(lines) + 1}, field 'idx': duplicate "
                                            rf"record idx 2, already on line 3"):
            read_split(task, "val", tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "superglue" / "CB").exists(), reason="shared SuperGLUE data not present")
def test_shared_official_files_match_the_official_counts():
    root = SHARED_DATA / "superglue"
    counts = {("CB", "train"): 250, ("CB", "val"): 56, ("COPA", "val"): 100, ("RTE", "val"): 277,
              ("WSC", "val"): 104, ("WiC", "val"): 638, ("BoolQ", "val"): 3270, ("MultiRC", "val"): 4848,
              ("AX-b", "test"): 1104, ("AX-g", "test"): 356, ("RTE", "test"): 3000}
    for (task, split), n in counts.items():
        assert len(read_split(task, split, root)) == n, (task, split)
    cb = read_split("CB", "val", root)
    assert sum(ex.label == "neutral" for ex in cb) == 5
    assert len({ex.group for ex in read_split("MultiRC", "val", root)}) == 953
    # every file present passes the empty / duplicate / encoding checks (MultiRC train+test: 456 + 166 paragraphs)
    assert len(read_split("MultiRC", "train", root)) == 27243 and len(read_split("MultiRC", "test", root)) == 9693
    for task in TASKS:
        for split in (["test"] if task in DIAGNOSTICS else SPLITS):
            if (root / task).exists() and (task, split) != ("BoolQ", "train"):
                assert read_split(task, split, root), (task, split)
