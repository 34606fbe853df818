"""Corpus readers: every kind of source streams the same lines; bad input fails naming file, line and fix."""
from __future__ import annotations

import pytest

from glmd_lib.data.corpus import (CorpusError, _iter_file, default_corpus, describe_source, iter_corpus_lines,
                                  superglue_texts)


def test_max_lines_and_block_boundaries(tmp_path):
    lines = [f"line number {i} with some words" for i in range(500)]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n")
    assert list(iter_corpus_lines(path, max_lines=10)) == lines[:10]
    # tiny blocks: lines cut at every block boundary must still come out whole
    assert [l.rstrip("\r") for l in _iter_file(path, block=7)] == lines
    with pytest.raises(CorpusError, match="max_lines must be >= 1"):
        list(iter_corpus_lines(path, max_lines=0))


def test_list_of_files_is_read_in_order(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first\n\nsecond\n")
    b.write_text("third\r\nfourth")
    assert list(iter_corpus_lines([b, a])) == ["third", "fourth", "first", "second"]
    assert list(iter_corpus_lines((a, b), max_lines=3)) == ["first", "second", "third"]
    # a list of strings is text, not file names
    assert list(iter_corpus_lines([str(a)])) == [str(a)]
    assert describe_source([a, b]) == f"{tmp_path}/{{a.txt,b.txt}}"
    assert describe_source([a]) == str(a)
    assert describe_source(["x"]) == "<list of texts>"


def test_bad_input_is_named(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        list(iter_corpus_lines(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(CorpusError, match="empty"):
        list(iter_corpus_lines(empty))
    (tmp_path / "nofiles").mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        list(iter_corpus_lines(tmp_path / "nofiles"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nanother fine line\nbroken \xff\xfe here\n")
    with pytest.raises(CorpusError, match=r"bad.txt, line 3: not valid UTF-8 .*convert the file to UTF-8"):
        list(iter_corpus_lines(bad))


def test_default_corpus_splits(monkeypatch, tmp_path):
    for name in ("train-01.txt", "train-00.txt", "valid.txt", "README.md"):
        (tmp_path / name).write_text("some text\n")
    monkeypatch.setenv("GLMD_CORPUS", str(tmp_path))
    # the held-out file never enters the training split (the folder as a whole would include it)
    assert default_corpus("train") == [tmp_path / "train-00.txt", tmp_path / "train-01.txt"]
    assert default_corpus("valid") == [tmp_path / "valid.txt"]
    monkeypatch.setenv("GLMD_CORPUS", str(tmp_path / "missing"))
    with pytest.raises(CorpusError, match=r"no train text found .* \(expected train-\*\.txt\).*GLMD_CORPUS"):
        default_corpus("train")


def test_superglue_texts(tmp_path):
    d = tmp_path / "COPA"
    d.mkdir()
    (d / "val.jsonl").write_text(
        '{"premise": "The man turned on the faucet.", "choice1": "A.", "choice2": "B.", "question": "effect", '
        '"label": 1, "idx": 0}\n{"premise": "P2", "choice1": "C", "choice2": "D", "question": "cause", '
        '"label": 0, "idx": 1}\n')
    assert superglue_texts("COPA", tmp_path) == ["The man turned on the faucet.", "A.", "B.", "P2", "C", "D"]
    assert "P2" not in superglue_texts("COPA", tmp_path, max_examples=1)
    m = tmp_path / "MultiRC"
    m.mkdir()
    (m / "val.jsonl").write_text('{"idx": 0, "passage": {"text": "Passage.", "questions": [{"idx": 0, '
                                 '"question": "Q?", "answers": [{"idx": 0, "text": "Ans", "label": 1}]}]}}\n')
    assert superglue_texts("MultiRC", tmp_path) == ["Passage.", "Q?", "Ans"]
    with pytest.raises(CorpusError, match=r"ReCoRD does not exist .*tasks there: \['COPA', 'MultiRC'\]"):
        superglue_texts("ReCoRD", tmp_path)
    with pytest.raises(CorpusError, match="unknown SuperGLUE task 'SST2'"):
        superglue_texts("SST2", tmp_path)
    (tmp_path / "CB").mkdir()
    with pytest.raises(CorpusError, match="none of the splits"):
        superglue_texts("CB", tmp_path)
