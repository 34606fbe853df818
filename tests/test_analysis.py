"""Notebooks 01 and 02 as library calls: run_frequency / run_vocab on tiny data write every declared artifact."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from glmd_lib.artifacts import STAGES, ArtifactError, artifact, is_complete
from glmd_lib.config.stages import FrequencyConfig, VocabConfig
from glmd_lib.data.corpus import CorpusError
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.patterns import verbalizer_token_ids
from glmd_lib.vocab.analysis import run_frequency, run_vocab
from glmd_lib.vocab.frequency import count_tokens, read_counts
from glmd_lib.vocab.vocab_map import VocabMap, kept_size

HELDOUT = ("The old sailor walked slowly along the harbour wall while the gulls circled over the fishing boats.\n"
           "Nobody in the village could remember a winter as long and as bitterly cold as that one had been.\n") * 3


@pytest.fixture
def data(tmp_path, monkeypatch, sample_text):
    """A corpus folder in the shared layout (train shards + valid.txt) and a toy SuperGLUE folder."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train-00.txt").write_text(sample_text)
    (corpus / "valid.txt").write_text(HELDOUT)
    write_toy_dataset(tmp_path / "sg", tasks=("CB", "RTE", "COPA"))
    monkeypatch.setenv("GLMD_CORPUS", str(corpus))
    monkeypatch.setenv("GLMD_DATA", str(tmp_path / "sg"))
    return tmp_path


def _frequency(data, teacher_dir, **kw):
    return run_frequency(FrequencyConfig.resolve(profile="smoke", run_dir=str(data / "run"), teacher=str(teacher_dir),
                                                 tasks=["CB", "RTE", "COPA", "WiC"], **kw))


def test_run_frequency_writes_the_declared_artifacts(data, teacher_dir, smol_tokenizer):
    res = _frequency(data, teacher_dir)
    run = data / "run"
    assert is_complete(run / "frequency")
    for name in STAGES["frequency"].files + ("rank_frequency.png", "coverage.png", "coverage_corpus_vs_superglue.png"):
        assert (run / "frequency" / name).stat().st_size > 0, name
    # the default corpus is the train shards only: valid.txt is notebook 02's held-out text
    np.testing.assert_array_equal(res.counts, count_tokens(data / "corpus" / "train-00.txt", smol_tokenizer))
    np.testing.assert_array_equal(read_counts(artifact(run, "frequency", "counts.csv"), len(smol_tokenizer)),
                                  res.counts)
    summary = json.loads(artifact(run, "frequency", "summary.json").read_text())
    assert summary["tasks_missing"] == ["WiC"] and set(summary["task_tokens"]) == {"CB", "RTE", "COPA"}
    assert summary["corpus_tokens"] == res.counts.sum() and summary["corpus"].endswith("train-00.txt")
    tasks = pd.read_csv(artifact(run, "frequency", "task_counts.csv"))
    assert list(tasks.columns) == ["token_id", "corpus", "CB", "RTE", "COPA"]
    assert tasks["RTE"].sum() == summary["task_tokens"]["RTE"] > 0
    assert list(res.coverage.index) == ["top 1k", "top 2k", "top 4k", "top 8k", "top 16k", "top 32k"]
    assert res.coverage.loc["top 1k", "corpus"] == pytest.approx(summary["coverage"]["1024"])
    assert set(res.curves()) == {"corpus", "SuperGLUE (all)", "CB", "RTE", "COPA"}


def test_failed_rerun_is_not_complete(data, teacher_dir):
    _frequency(data, teacher_dir)
    with pytest.raises(CorpusError, match="none of the tasks"):
        _frequency(data, teacher_dir, superglue_dir=str(data / "nowhere"))
    assert not is_complete(data / "run" / "frequency")


def test_run_vocab_follows_the_map_rule(data, teacher_dir, smol_tokenizer):
    run = data / "run"
    cfg = VocabConfig.resolve(profile="smoke", run_dir=str(run), teacher=str(teacher_dir), keep_tokens=1000)
    with pytest.raises(ArtifactError, match="01_word_frequency"):
        run_vocab(cfg)
    freq = _frequency(data, teacher_dir)
    res = run_vocab(cfg)
    V = len(smol_tokenizer)
    assert is_complete(run / "vocab")
    for name in STAGES["vocab"].files + ("coverage_and_size.png", "kept_mass.png"):
        assert (run / "vocab" / name).stat().st_size > 0, name
    vmap = VocabMap.load(run / "vocab", tokenizer=smol_tokenizer)
    assert vmap.num_kept == res.vocab_map.num_kept == kept_size(V, 1000)
    # every row of the sizes table keeps what VocabMap.build keeps at that size
    sizes = pd.read_csv(artifact(run, "vocab", "sizes.csv"))
    assert sizes["this map"].sum() == 1 and sizes.iloc[-1]["kept"] == V
    verbalizers = sorted(verbalizer_token_ids(smol_tokenizer))
    for _, row in sizes.iloc[:-1].iterrows():
        built = VocabMap.build(freq.counts, smol_tokenizer, keep=int(row["kept"]), protected_ids=verbalizers,
                               multiple_of=1, substitute="unk")
        share = freq.counts[built.kept_ids.numpy()].sum() / freq.counts.sum()
        assert row["corpus coverage"] == pytest.approx(share)
    assert (np.diff(sizes["student parameters"]) > 0).all()

    summary = json.loads(artifact(run, "vocab", "summary.json").read_text())
    this = sizes[sizes["this map"]].iloc[0]
    assert summary["kept"] == vmap.num_kept and summary["corpus_coverage"] == pytest.approx(this["corpus coverage"])
    assert summary["student_parameters_kept_vocab"] == this["student parameters"]
    assert summary["heldout"].endswith("valid.txt") and summary["heldout_lines"] == 6
    assert len(res.masses[1.0]) == summary["heldout_positions"] > 0
    assert 0 < summary["teacher_kept_mass"]["T=1"]["mean"] < 1
    subs = pd.read_csv(artifact(run, "vocab", "substitutes.csv"))
    assert set(subs["substitute id"]) <= set(vmap.kept_ids.tolist())
    assert not set(subs["pruned id"]) & set(vmap.kept_ids.tolist())
    ex = res.example
    assert ex["substituted"] == ex["student"].count("[") and ex["tokens"] <= 60
