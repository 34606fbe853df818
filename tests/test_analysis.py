"""Notebooks 01 and 02 as library calls: run_frequency / run_vocab on tiny data write every declared artifact."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from glmd_lib.artifacts import STAGES, ArtifactError, artifact, is_complete
from glmd_lib.config.stages import FrequencyConfig, VocabConfig
from glmd_lib.data.corpus import CorpusError
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.patterns import verbalizer_token_ids
from glmd_lib.vocab.analysis import run_frequency, run_vocab
from glmd_lib.vocab import mass as mass_module
from glmd_lib.vocab.analysis import embedding_share
from glmd_lib.vocab.frequency import count_tokens, read_counts
from glmd_lib.vocab.mass import grid_frame, keep_order, mass_grid_sums, mass_point, static_mass_table
from glmd_lib.vocab.plots import mass_explorer
from glmd_lib.vocab.protected import protected_token_ids
from glmd_lib.vocab.vocab_map import VocabMap, kept_size, select_kept

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


def test_run_vocab_follows_the_map_rule(data, teacher_dir, smol_tokenizer, tiny_llama):
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
    assert vmap.protected_ids == protected_token_ids(smol_tokenizer, verbalizers)  # "used": bos, eos, unk + verbalizers
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
    _check_protect_share_and_mass(res, run, smol_tokenizer, tiny_llama)


def _check_protect_share_and_mass(res, run, smol_tokenizer, tiny_llama):
    """notebook 02's tables for issue #15: protected rows per choice, embedding shares, the kept-mass grid."""
    s, vmap, verbalizers = res.summary, res.vocab_map, sorted(verbalizer_token_ids(smol_tokenizer))
    # what each protect choice spends of the kept rows; this map spends the "used" count
    assert s["protect"] == "used" and res.protect.loc["used", "protected rows"] == s["protected"] == len(vmap.protected_ids)
    for choice in ("used", "all_added"):
        n = len(protected_token_ids(smol_tokenizer, verbalizers, choice))
        assert res.protect.loc[choice].tolist() == [n, vmap.num_kept - n]
    assert res.protect.loc["all_added", "protected rows"] - s["protected"] == 14  # SmolLM2's chat and code tokens
    # the embedding share: the tiny teacher's (tied, 49k x 32) and the two published shapes, computed
    share = s["teacher_embedding_share"]
    assert share["tied"] and share["embedding parameters"] == len(smol_tokenizer) * 32 == embedding_share(tiny_llama)["embedding parameters"]
    assert share["embedding share"] == pytest.approx(share["embedding parameters"] / share["parameters"])
    refs = res.embedding_shares["embedding share"]
    assert 0.18 < refs["SmolLM2-135M"] < 0.24 and 0.55 < refs["Gemma-3-270M"] < 0.7
    assert res.embedding_shares.loc["SmolLM2-135M", "parameters"] == pytest.approx(134.5e6, rel=0.01)
    # the kept-mass grid: at the map's own size it is the mean of the per-position masses
    grid = res.mass_grid
    assert vmap.num_kept in grid.index and (grid.index > len(vmap.protected_ids)).all()
    for t in (1.0, 15.0):
        assert grid.loc[vmap.num_kept, f"T={t:g}"] == pytest.approx(float(res.masses[t].mean()), abs=1e-5)
    assert (np.diff(grid.filter(like="T=").to_numpy(), axis=0) >= -1e-9).all()  # more kept, more mass
    assert s["kept_mass_grid_positions"] == s["heldout_positions"] <= mass_module.GRID_POSITIONS  # all of them here
    record = s["kept_mass_grid"]
    pd.testing.assert_frame_equal(grid_frame(**record, vocab_size=s["vocab_size"]), grid)
    assert (run / "vocab" / "kept_mass_grid.png").stat().st_size > 0


def test_mass_grid_sums_follow_the_keep_rule(monkeypatch):
    """The grid's mass at size K is the softmax mass on select_kept's K ids, whatever the chunking, with logits
    wider than the vocabulary (padded output layers) counted in the softmax."""
    rng = np.random.default_rng(0)
    V, protected, sizes, temps = 300, [7, 250], [10, 64, 299], (1.0, 15.0)
    counts = rng.integers(0, 50, V)
    logits = torch.randn(13, V + 4, generator=torch.Generator().manual_seed(0)) * 4
    monkeypatch.setattr(mass_module, "CHUNK_ELEMENTS", 3 * (V + 4))  # 3 positions a step: 5 chunks
    got = mass_grid_sums(logits, torch.from_numpy(keep_order(counts, protected)), sizes, temps)
    for i, t in enumerate(temps):
        p = torch.softmax(logits.double() / t, -1)
        want = [p[:, torch.from_numpy(select_kept(counts, protected, k))].sum().item() for k in sizes]
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-5)
    # teacher_mass's running grid: every stride-th position of the whole text, at most GRID_POSITIONS of them
    kept = torch.from_numpy(select_kept(counts, protected, 64))
    t2s = torch.zeros(V, dtype=torch.long)
    t2s[kept] = torch.arange(64)
    vm = VocabMap(kept, t2s, protected_ids=protected, meta={"multiple_of": 1})
    monkeypatch.setattr(mass_module, "GRID_POSITIONS", 4)
    running = mass_module._GridSums(vm, counts, positions=13)  # stride 4: positions 0, 4, 8, 12
    running.add(logits[:6])
    running.add(logits[6:])
    assert running.used == 4 and 64 in running.sizes
    want = mass_grid_sums(logits[[0, 4, 8, 12]], torch.from_numpy(keep_order(counts, vm.protected_ids)), running.sizes)
    np.testing.assert_allclose(running.frame().filter(like="T=").to_numpy().T, want.numpy() / 4, rtol=1e-6)


def test_mass_explorer_sliders_and_static_fallback():
    grid = grid_frame([64, 512, 4096], [[0.6, 0.8, 0.95], [0.05, 0.1, 0.3]], vocab_size=8192, temperatures=(1.0, 15.0))
    point = mass_point(grid, 512, "T=15")
    assert point["teacher mass on kept tokens at T=15"] == 0.1 and point["share of vocabulary"] == 512 / 8192
    assert point["renormalize: kept probabilities scaled by about"] == pytest.approx(10)
    assert point["substitute: share of the target moved onto substitutes"] == pytest.approx(0.9)
    box = mass_explorer(grid, kept=512)
    size, temp, view = box.children
    assert size.value == 512 and temp.value == "T=15" and "0.1000" in view.value
    size.value, temp.value = 4096, "T=1"
    assert "0.9500" in view.value and "0.3000" not in view.value
    bundle = box._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # a live notebook draws the sliders
    assert bundle["text/html"] == static_mass_table(grid).to_html(float_format="{:.4f}".format)  # elsewhere: the table
    assert list(static_mass_table(grid).columns) == ["share of vocabulary", "T=1", "T=15"]
