"""Cloze patterns and verbalizers for causal (SmolLM2 tokenizer) and masked (BERT) models."""
from __future__ import annotations

import pytest

from glmd_lib.superglue.data import DIAGNOSTICS, TASKS, read_split
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.patterns import (N_PATTERNS, SINGLE_TOKEN_TASKS, build_cloze, check_verbalizers,
                                         prompt_text, verbalizer_ids, verbalizer_token_ids)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("sg"), n=4)


def make_word_bert_tokenizer(directory):
    """A word-level BERT tokenizer whose vocabulary holds the verbalizers and the toy data's words."""
    import re

    from transformers import BertTokenizerFast

    from glmd_lib.superglue.data import example_texts
    from glmd_lib.superglue.patterns import PATTERNS

    words = {"yes", "no", "maybe", "true", "false"}
    toy = write_toy_dataset(directory / "toy", n=4)
    for task in TASKS:
        for ex in _examples(toy, task):
            texts = example_texts(ex) + [prompt_text(ex, p) for p in range(2)]
            words |= {w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())}
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # (transformers 5 ignores a `vocab_file=` keyword: load the folder instead)
    return BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)


@pytest.fixture(scope="module")
def word_bert_tokenizer(tmp_path_factory):
    return make_word_bert_tokenizer(tmp_path_factory.mktemp("wordbert"))


def _examples(toy, task):
    return read_split(task, "test" if task in DIAGNOSTICS else "val", toy)


def test_verbalizers_are_single_tokens_of_smollm2(smol_tokenizer):
    ids = check_verbalizers(smol_tokenizer)
    assert set(ids) == {(t, p) for t in SINGLE_TOKEN_TASKS for p in range(2)}
    protected = verbalizer_token_ids(smol_tokenizer)
    assert smol_tokenizer.encode(" Yes", add_special_tokens=False)[0] in protected
    assert smol_tokenizer.encode(" Maybe", add_special_tokens=False)[0] in protected
    assert verbalizer_token_ids(smol_tokenizer, tasks=["RTE"]) == set(verbalizer_ids(smol_tokenizer, "RTE"))
    assert verbalizer_token_ids(smol_tokenizer, tasks=["COPA"]) == set()


def test_a_multi_token_verbalizer_is_refused(smol_tokenizer, monkeypatch):
    from glmd_lib.superglue import patterns

    monkeypatch.setitem(patterns.VERBALIZERS, "RTE", [[" Yes", " Definitely not at all"]])
    with pytest.raises(ValueError, match="Definitely not at all.*tokens"):
        verbalizer_ids(smol_tokenizer, "RTE", 0)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("pid", [0, 1])
def test_causal_clozes(toy, smol_tokenizer, task, pid):
    exs = _examples(toy, task)
    cl = build_cloze(task, exs, smol_tokenizer, kind="causal", pattern_id=pid, max_len=64)
    assert len(cl) == len(exs)
    for c, ex in zip(cl, exs):
        assert c.idx == ex.idx and all(len(s) <= 64 for s in c.sequences)
        if task in SINGLE_TOKEN_TASKS:
            assert len(c.sequences) == 1 and c.answer_positions == [len(c.sequences[0]) - 1]
            assert c.choices[c.label] == ex.label
            assert smol_tokenizer.decode(c.sequences[0]).endswith("Answer:")
        else:
            assert len(c.sequences) == c.n_choices >= 2
            for seq, (a, b), ids in zip(c.sequences, c.candidate_spans, c.candidate_ids):
                assert seq[a:b] == ids and b == len(seq) and a >= 1
            # the prompt is shared by every candidate
            a0 = c.candidate_spans[0][0]
            assert all(s[:a0] == c.sequences[0][:a0] for s in c.sequences)
        assert "___" in prompt_text(ex, pid)


def test_copa_reads_naturally(toy, smol_tokenizer):
    c = build_cloze("COPA", _examples(toy, "COPA")[:2], smol_tokenizer)
    text0 = smol_tokenizer.decode(c[0].sequences[1])
    assert text0 == "The man turned on the faucet because water flowed from the spout."
    assert smol_tokenizer.decode(c[1].sequences[0]).startswith("The man turned on the faucet so the toilet")


def test_record_choices_and_label(toy, smol_tokenizer):
    c = build_cloze("ReCoRD", _examples(toy, "ReCoRD"), smol_tokenizer)[0]
    assert c.choices == ["Paris", "Rome"] and c.label == 0
    assert smol_tokenizer.decode(c.sequences[1]).endswith("\nRome is in France.")


def test_truncation_keeps_the_answer_slot(smol_tokenizer, tmp_path):
    import json
    (tmp_path / "BoolQ").mkdir(parents=True)
    long = " ".join(["word"] * 500)
    (tmp_path / "BoolQ" / "val.jsonl").write_text(json.dumps({"question": "is it long", "passage": long,
                                                              "idx": 0, "label": True}))
    ex = read_split("BoolQ", "val", tmp_path)
    c = build_cloze("BoolQ", ex, smol_tokenizer, max_len=40)[0]
    assert len(c.sequences[0]) == 40
    assert smol_tokenizer.decode(c.sequences[0]).endswith("Question: is it long? Answer:")
    assert smol_tokenizer.decode(c.sequences[0]).startswith("word word")


def test_unknown_token_verbalizer_is_refused(word_bert_tokenizer, monkeypatch):
    from glmd_lib.superglue import patterns

    monkeypatch.setitem(patterns.VERBALIZERS, "RTE", [[" Yes", " Nope"]])  # "nope" is not in the vocabulary
    with pytest.raises(ValueError, match="unknown token"):
        verbalizer_ids(word_bert_tokenizer, "RTE", 0)


@pytest.mark.parametrize("task", ["CB", "RTE", "BoolQ", "WiC", "MultiRC", "COPA", "ReCoRD"])
def test_masked_clozes(toy, word_bert_tokenizer, task):
    bert_tokenizer = word_bert_tokenizer
    exs = _examples(toy, task)
    cl = build_cloze(task, exs, bert_tokenizer, kind="masked", max_len=64)
    m = bert_tokenizer.mask_token_id
    for c in cl:
        assert c.sequences[0][0] == bert_tokenizer.cls_token_id and c.sequences[0][-1] == bert_tokenizer.sep_token_id
        if c.single_token:
            assert c.sequences[0][c.answer_positions[0]] == m and c.sequences[0].count(m) == 1
        else:
            for seq, (a, b), ids in zip(c.sequences, c.candidate_spans, c.candidate_ids):
                assert seq[a:b] == [m] * len(ids) and seq.count(m) == len(ids)


def test_bad_arguments(toy, smol_tokenizer):
    exs = _examples(toy, "CB")
    with pytest.raises(ValueError, match="pattern"):
        build_cloze("CB", exs, smol_tokenizer, pattern_id=N_PATTERNS["CB"])
    with pytest.raises(ValueError, match="mask token"):
        build_cloze("CB", exs, smol_tokenizer, kind="masked")
    with pytest.raises(ValueError, match="got an example of CB"):
        build_cloze("RTE", exs, smol_tokenizer)
