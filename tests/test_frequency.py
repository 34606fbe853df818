"""Token counting: equals a plain reference count for every kind of source; summaries and the counts file."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from glmd_lib.data.corpus import CorpusError
from glmd_lib.vocab import frequency as F


def reference_counts(lines, tokenizer):
    """The obvious way: encode each non-empty line, update a Counter."""
    c = collections.Counter()
    for line in lines:
        if line.strip():
            c.update(tokenizer.encode(line, add_special_tokens=False))
    out = np.zeros(len(tokenizer), dtype=np.int64)
    for i, n in c.items():
        out[i] = n
    return out


def test_counts_equal_reference_count(smol_tokenizer, sample_text, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(sample_text, encoding="utf-8")
    ref = reference_counts(sample_text.splitlines(), smol_tokenizer)
    # small batches so that several batches (and the read-ahead thread) are involved
    got = F.count_tokens(path, smol_tokenizer, batch_lines=3)
    assert got.dtype == np.int64 and got.shape == (len(smol_tokenizer),)
    np.testing.assert_array_equal(got, ref)
    n_tokens = sum(len(smol_tokenizer.encode(l, add_special_tokens=False)) for l in sample_text.splitlines())
    assert got.sum() == n_tokens
    assert got[smol_tokenizer.all_special_ids].sum() == 0  # no special tokens added


def test_sources_agree(smol_tokenizer, sample_text, tmp_path):
    import datasets

    lines = [l for l in sample_text.splitlines() if l.strip()]
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("\n".join(lines[:7]) + "\n", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("\r\n".join(lines[7:]), encoding="utf-8")  # CRLF, no final newline
    (folder / "ignored.json").write_text("{}")
    ref = reference_counts(lines, smol_tokenizer)
    np.testing.assert_array_equal(F.count_tokens(folder, smol_tokenizer), ref)
    np.testing.assert_array_equal(F.count_tokens(lines, smol_tokenizer, batch_lines=5), ref)
    ds = datasets.Dataset.from_dict({"text": lines, "id": list(range(len(lines)))})
    np.testing.assert_array_equal(F.count_tokens(ds, smol_tokenizer), ref)
    ds.save_to_disk(str(tmp_path / "saved"))
    np.testing.assert_array_equal(F.count_tokens(tmp_path / "saved", smol_tokenizer), ref)


def test_max_lines(smol_tokenizer, tmp_path):
    lines = [f"line number {i} with some words" for i in range(500)]
    path = tmp_path / "c.txt"
    path.write_text("\n".join(lines) + "\n")
    np.testing.assert_array_equal(F.count_tokens(path, smol_tokenizer, max_lines=10),
                                  reference_counts(lines[:10], smol_tokenizer))


def test_default_corpus_files_count_like_text(smol_tokenizer, sample_text, tmp_path):
    """A list of files (``default_corpus``) is read as files, not as the text of their names."""
    lines = [l for l in sample_text.splitlines() if l.strip()]
    (tmp_path / "a.txt").write_text("\n".join(lines[:5]))
    (tmp_path / "b.txt").write_text("\n".join(lines[5:]))
    np.testing.assert_array_equal(F.count_tokens([tmp_path / "a.txt", tmp_path / "b.txt"], smol_tokenizer),
                                  reference_counts(lines, smol_tokenizer))


def test_summary_and_table_roundtrip(smol_tokenizer, tmp_path):
    rng = np.random.default_rng(0)
    V = len(smol_tokenizer)
    ranks = np.arange(1, V + 1)
    counts = np.zeros(V, dtype=np.int64)
    perm = rng.permutation(V)
    counts[perm] = np.floor(1e6 / ranks ** 1.1).astype(np.int64)  # Zipf with s = 1.1
    s, _ = F.zipf_fit(counts)
    assert abs(s - 1.1) < 0.02
    summary = F.summarize(counts)
    assert summary["corpus_tokens"] == counts.sum() and summary["vocab_size"] == V
    assert summary["types_seen"] == (counts > 0).sum()
    cov = summary["coverage"]
    assert list(cov) == ["1024", "2048", "4096", "8192", "16384", "32768"]
    assert all(a <= b for a, b in zip(list(cov.values()), list(cov.values())[1:])) and cov["32768"] <= 1.0
    assert cov["1024"] == pytest.approx(np.sort(counts)[::-1][:1024].sum() / counts.sum())

    path = tmp_path / "counts.csv"
    table = F.write_counts(counts, smol_tokenizer, path)
    assert len(table) == V and list(table.columns[:3]) == ["token_id", "token", "text"]
    assert (np.diff(table["count"].to_numpy()) <= 0).all()
    np.testing.assert_array_equal(F.read_counts(path, V), counts)
    back = F.read_counts_table(path)
    assert back["token"].tolist() == table["token"].tolist() and back["text"].tolist() == table["text"].tolist()
    with pytest.raises(CorpusError, match="another tokenizer"):
        F.read_counts(path, V + 1)


def test_coverage_ranked_by_another_distribution():
    corpus = np.array([10, 5, 1, 0])
    task = np.array([0, 1, 1, 8])
    order = F.frequency_order(corpus)
    assert F.coverage(task, [1, 2, 3, 4], order=order) == {1: 0.0, 2: 0.1, 3: 0.2, 4: 1.0}
