"""Vocabulary maps: what is kept, substitutes, shrunk models, restricted distributions, files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glmd_lib.vocab.factorized import FactorizedEmbedding, factorize_model
from glmd_lib.vocab.substitutes import nearest_kept
from glmd_lib.vocab.vocab_map import FILENAME, VocabMap, VocabMapError, kept_size, protected_token_ids, select_kept


@pytest.fixture(scope="module")
def zipf_counts(smol_tokenizer):
    """Skewed counts over the real vocabulary; the special tokens are never seen (count 0)."""
    rng = np.random.default_rng(0)
    V = len(smol_tokenizer)
    counts = rng.zipf(1.3, size=V).astype(np.int64) - 1
    counts[protected_token_ids(smol_tokenizer)] = 0
    return counts


def test_kept_size_rounding():
    assert kept_size(49152, 0.5) == 24576
    assert kept_size(49152, 0.3) == 14784  # ceil(14745.6) = 14746 -> 14784
    assert kept_size(1000, 130) == 192
    assert kept_size(1000, 130, multiple_of=1) == 130
    with pytest.raises(VocabMapError):
        kept_size(1000, 1.5)


def test_build_keeps_protected_and_frequent(smol_tokenizer, zipf_counts):
    extra = [9906, 2501]  # e.g. verbalizer tokens; make them rare to be sure they are kept for being protected
    counts = zipf_counts.copy()
    counts[extra] = 0
    vm = VocabMap.build(counts, smol_tokenizer, keep=0.25, protected_ids=extra, substitute="unk")
    V, K = len(smol_tokenizer), kept_size(len(smol_tokenizer), 0.25)
    assert vm.vocab_size == V and vm.num_kept == K and K % 64 == 0
    kept = set(vm.kept_ids.tolist())
    protected = set(protected_token_ids(smol_tokenizer, extra))
    assert protected <= kept and set(extra) <= protected and {0, 1, 2} <= protected
    # kept ids are in frequency order, and no pruned token is more frequent than the least frequent
    # non-protected kept token
    kc = counts[vm.kept_ids.numpy()]
    assert (np.diff(kc) <= 0).all()
    non_protected_kept = [i for i in vm.kept_ids.tolist() if i not in protected]
    assert counts[vm.pruned_ids.numpy()].max() <= counts[non_protected_kept].min()
    # kept ids map to their own row, every substitute is a kept id (here: UNK)
    assert torch.equal(vm.map_ids(vm.kept_ids), torch.arange(K))
    assert set(vm.substitutes.tolist()) <= kept
    assert (vm.substitutes[vm.pruned_ids] == smol_tokenizer.unk_token_id).all()
    assert torch.equal(vm.unmap_ids(vm.map_ids(vm.kept_ids)), vm.kept_ids)
    # the keep rule on its own (notebook 02's size table) gives the map's rows, in order
    np.testing.assert_array_equal(select_kept(counts, vm.protected_ids, K), vm.kept_ids.numpy())
    assert select_kept(np.array([5, 9, 9, 1, 0]), [4], 3).tolist() == [1, 2, 4]  # ties by id; protected 0-count last


@pytest.mark.parametrize("coarse", ["fp32", "bf16"])
@pytest.mark.parametrize("method", ["dot", "cosine", "euclidean"])
def test_similarity_substitutes(method, coarse):
    torch.manual_seed(0)
    E = torch.randn(300, 16)
    kept = torch.arange(0, 300, 3)
    query = torch.tensor([i for i in range(300) if i % 3])
    got = nearest_kept(E, query, kept, method, chunk=7, coarse=coarse)  # several chunks
    q, k = E[query], E[kept]
    if method == "dot":
        ref = (q @ k.T).argmax(-1)
    elif method == "cosine":
        ref = torch.nn.functional.cosine_similarity(q[:, None], k[None], dim=-1).argmax(-1)
    else:
        ref = torch.cdist(q, k).argmin(-1)
    assert torch.equal(got, ref)


def test_build_with_embeddings(smol_tokenizer, zipf_counts, tiny_llama):
    vm = VocabMap.build(zipf_counts, smol_tokenizer, keep=1024, substitute="cosine", embeddings=tiny_llama)
    kept = set(vm.kept_ids.tolist())
    assert set(vm.substitutes.tolist()) <= kept
    special = set(protected_token_ids(smol_tokenizer))
    assert not special & set(vm.substitutes[vm.pruned_ids].tolist())  # specials never stand in for text
    E = tiny_llama.get_input_embeddings().weight.detach()
    p = int(vm.pruned_ids[5])
    candidates = torch.tensor([i for i in vm.kept_ids.tolist() if i not in special])
    cos = torch.nn.functional.cosine_similarity(E[p][None], E[candidates], dim=-1)
    assert int(vm.substitutes[p]) == int(candidates[cos.argmax()])
    with pytest.raises(VocabMapError, match="needs the teacher's input embeddings"):
        VocabMap.build(zipf_counts, smol_tokenizer, keep=1024, substitute="dot")


def _kept_inputs(vm, n=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return vm.kept_ids[torch.randint(vm.num_kept, (n, length), generator=g)]


@pytest.mark.parametrize("tied", [True, False])
def test_shrunk_llama_gives_same_logits_at_kept_ids(smol_tokenizer, zipf_counts, make_tiny_llama, tied):
    model = make_tiny_llama(seed=3, tie_word_embeddings=tied)
    if not tied:
        with torch.no_grad():  # make the output layer differ from the input embedding
            model.get_output_embeddings().weight.normal_()
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    vm = VocabMap.build(zipf_counts, smol_tokenizer, keep=0.1, substitute="unk")
    teacher_ids = _kept_inputs(vm)
    with torch.no_grad():
        ref = model(teacher_ids).logits
    vm.shrink_model(model)
    assert model.config.vocab_size == vm.num_kept
    assert model.get_input_embeddings().weight.shape[0] == vm.num_kept
    assert model.get_output_embeddings().weight.shape[0] == vm.num_kept
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert model.config.eos_token_id == int(vm.map_ids(torch.tensor(2)))
    with torch.no_grad():
        got = model(vm.map_ids(teacher_ids)).logits
    assert got.shape[-1] == vm.num_kept
    assert torch.equal(got, vm.restrict_logits(ref))  # exactly the same


def test_shrunk_gpt2_student(smol_tokenizer, zipf_counts, tiny_gpt2):
    vm = VocabMap.build(zipf_counts, smol_tokenizer, keep=2048, substitute="unk")
    ids = _kept_inputs(vm, seed=1)
    with torch.no_grad():
        ref = tiny_gpt2(ids).logits
        got = vm.shrink_model(tiny_gpt2)(vm.map_ids(ids)).logits
    assert torch.equal(got, vm.restrict_logits(ref))  # exactly the same


def test_shrink_rejects_wrong_model(zipf_counts, smol_tokenizer, tiny_bert):
    vm = VocabMap.build(zipf_counts, smol_tokenizer, keep=2048, substitute="unk")
    with pytest.raises(VocabMapError, match="rows but the map is"):
        vm.shrink_model(tiny_bert)


def test_restricted_distributions(smol_tokenizer, zipf_counts):
    vm = VocabMap.build(zipf_counts, smol_tokenizer, keep=0.1, substitute="unk")
    torch.manual_seed(0)
    logits = torch.randn(3, 5, vm.vocab_size) * 4
    T = 2.0
    p = vm.restrict_probs(logits, temperature=T, pruned_mass="renormalize")
    torch.testing.assert_close(p, torch.softmax(logits[..., vm.kept_ids] / T, -1))
    full = torch.softmax(logits / T, -1)
    q = vm.restrict_probs(logits, temperature=T, pruned_mass="substitute")
    torch.testing.assert_close(q.sum(-1), torch.ones(3, 5))
    unk_row = int(vm.map_ids(torch.tensor(smol_tokenizer.unk_token_id)))
    kept_mass = full[..., vm.kept_ids].sum(-1)
    torch.testing.assert_close(q[..., unk_row], full[..., vm.pruned_ids].sum(-1) + full[..., 0])
    torch.testing.assert_close(vm.kept_mass(logits, T), kept_mass)
    with pytest.raises(VocabMapError, match="pruned_mass"):
        vm.restrict_probs(logits, pruned_mass="nope")


def test_save_load_and_fingerprint(smol_tokenizer, zipf_counts, tiny_llama, bert_tokenizer, tmp_path):
    vm = VocabMap.build(zipf_counts, smol_tokenizer, keep=1024, substitute="euclidean", embeddings=tiny_llama)
    path = vm.save(tmp_path)
    assert path == tmp_path / FILENAME and not list(tmp_path.glob(".*tmp"))
    back = VocabMap.load(tmp_path, tokenizer=smol_tokenizer)
    assert torch.equal(back.kept_ids, vm.kept_ids) and torch.equal(back.teacher_to_student, vm.teacher_to_student)
    assert back.method == "euclidean" and back.fingerprint == vm.fingerprint
    with pytest.raises(VocabMapError, match=r"built for the tokenizer sha256:\w+, but the given tokenizer is sha256"):
        VocabMap.load(path, tokenizer=bert_tokenizer)
    with pytest.raises(VocabMapError, match="does not exist"):
        VocabMap.load(tmp_path / "elsewhere")
    (tmp_path / "broken.json").write_text('{"format": "glmd-vocab-map", "vocab_size": 3}')
    with pytest.raises(VocabMapError, match="not a valid vocabulary map"):
        VocabMap.load(tmp_path / "broken.json")


def test_bad_sizes_are_named(smol_tokenizer, zipf_counts):
    with pytest.raises(VocabMapError, match="not larger than the 17 protected tokens"):
        VocabMap.build(zipf_counts, smol_tokenizer, keep=10, multiple_of=1, substitute="unk", protect="all_added")
    with pytest.raises(VocabMapError, match="not smaller than the vocabulary"):
        VocabMap.build(zipf_counts, smol_tokenizer, keep=1.0, substitute="unk")
    with pytest.raises(VocabMapError, match="not smaller than the vocabulary"):
        VocabMap.build(zipf_counts, smol_tokenizer, keep=49150, substitute="unk")  # rounds up to 49152
    with pytest.raises(VocabMapError, match="another tokenizer"):
        VocabMap.build(zipf_counts[:100], smol_tokenizer, keep=64, substitute="unk")


def test_identity_map(smol_tokenizer, tiny_llama):
    vm = VocabMap.identity(smol_tokenizer)
    ids = torch.tensor([[5, 700, 49151]])
    assert vm.is_identity and torch.equal(vm.map_ids(ids), ids)
    logits = torch.randn(1, 3, vm.vocab_size)
    torch.testing.assert_close(vm.restrict_probs(logits), torch.softmax(logits, -1))


def test_factorized_embedding(tiny_llama, smol_tokenizer):
    ids = torch.tensor([[5, 700, 49151, 17]])
    H = tiny_llama.config.hidden_size
    full = FactorizedEmbedding.from_weight(tiny_llama.get_input_embeddings().weight.detach(), H - 1)
    rank_h = full.embed.weight @ full.project.weight.T
    assert rank_h.shape == tiny_llama.get_input_embeddings().weight.shape
    factorize_model(tiny_llama, embedding_size=8)
    n_emb = sum(p.numel() for p in {id(p): p for p in list(tiny_llama.get_input_embeddings().parameters())
                                    + list(tiny_llama.get_output_embeddings().parameters())}.values())
    assert n_emb == len(smol_tokenizer) * 8 + 2 * 8 * H
    with torch.no_grad():
        out = tiny_llama(ids).logits
    assert out.shape == (1, 4, len(smol_tokenizer)) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# pruned_mass: the target the student learns (issue #10, fix 1)
# --------------------------------------------------------------------------------------------

def _tiny_map(pruned_mass: str) -> VocabMap:
    """7 teacher tokens, 4 kept (rows 0-3 = ids 0-3); pruned 4 and 5 stand in as 1, pruned 6 as 2."""
    return VocabMap(torch.arange(4), torch.tensor([0, 1, 2, 3, 1, 1, 2]), pruned_mass=pruned_mass)


def test_target_of_each_pruned_mass_mode_matches_a_hand_computed_one():
    z = torch.tensor([[2.0, 0.5, -1.0, 1.0, 3.0, 0.0, 1.5]])
    T = 2.0
    e = [math.exp(v / T) for v in z[0].tolist()]
    total = sum(e)
    p = [x / total for x in e]  # the teacher's distribution at T over all 7 tokens
    renorm = [x / sum(p[:4]) for x in p[:4]]
    subst = [p[0], p[1] + p[4] + p[5], p[2] + p[6], p[3]]
    for mode, expect in (("renormalize", renorm), ("substitute", subst)):
        vm = _tiny_map(mode)
        target = vm.target_logits(z, T)  # logits over the 4 rows whose softmax at T is the target
        assert target.shape == (1, 4)
        torch.testing.assert_close(torch.softmax(target / T, -1), torch.tensor([expect]), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(vm.restrict_probs(z, T), torch.tensor([expect]), rtol=1e-6, atol=1e-7)
    assert abs(renorm[1] - subst[1]) > 0.1  # the two modes are different targets
    # the merged target depends on T (mass is added at the loss temperature), the renormalised one does not
    assert not torch.allclose(_tiny_map("substitute").target_logits(z, 1.0), _tiny_map("substitute").target_logits(z, T))
    torch.testing.assert_close(_tiny_map("renormalize").target_logits(z, 1.0), z[:, :4])


def test_pruned_mass_is_saved_with_the_map(smol_tokenizer, zipf_counts, tmp_path):
    vm = VocabMap.build(zipf_counts, smol_tokenizer, keep=1024, substitute="unk", pruned_mass="substitute")
    back = VocabMap.load(vm.save(tmp_path), tokenizer=smol_tokenizer)
    assert back.pruned_mass == "substitute" and "pruned_mass='substitute'" in repr(back)
    assert VocabMap.build(zipf_counts, smol_tokenizer, keep=1024, substitute="unk").pruned_mass == "renormalize"
    with pytest.raises(VocabMapError, match="pruned_mass"):
        _tiny_map("drop")
