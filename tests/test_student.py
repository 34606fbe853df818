"""The student: shapes from the teacher's config, other architectures, teacher initialisation,
save/load with the VocabMap and tokenizer, raw-string scoring and generation, map mismatches."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from glmd_lib.config.stages import StudentShape
from glmd_lib.models.student import (Student, StudentError, build_student, init_from_teacher, load_student,
                              save_student)
from glmd_lib.vocab.vocab_map import VocabMap, VocabMapError


@pytest.fixture
def vocab_map(smol_tokenizer):
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 1000, (len(smol_tokenizer),), generator=g)
    # make common English pieces frequent, so prompts stay mostly inside the kept vocabulary
    common = smol_tokenizer("The capital of France is Paris. Once upon a time the cat sat on the mat.",
                            add_special_tokens=False)["input_ids"]
    counts[common] += 10_000
    return VocabMap.build(counts, smol_tokenizer, 0.25, substitute="unk")


def test_shape_overrides_and_kept_vocabulary(tiny_llama, vocab_map):
    shape = StudentShape(student_layers=3, student_hidden=48, student_heads=4, student_kv_heads=2,
                         student_max_positions=64)
    st = build_student(tiny_llama.config, shape, vocab_map)
    c = st.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (3, 48, 4, 2)
    assert c.max_position_embeddings == 64 and c.head_dim == 12
    assert c.intermediate_size == 128  # 8/3 x 48 = 128, rounded up to a multiple of 64
    assert c.vocab_size == vocab_map.num_kept
    assert st.get_input_embeddings().weight.shape == (vocab_map.num_kept, 48)
    # special ids are translated into student rows
    assert vocab_map.unmap_ids(torch.tensor([c.eos_token_id])).item() == tiny_llama.config.eos_token_id
    out = st(input_ids=torch.randint(vocab_map.num_kept, (2, 9))).logits
    assert out.shape == (2, 9, vocab_map.num_kept)
    # full vocabulary and defaults (kv heads = heads)
    full = build_student(tiny_llama.config, {"layers": 1, "hidden": 32, "heads": 4})
    assert full.config.vocab_size == tiny_llama.config.vocab_size and full.config.num_key_value_heads == 4


def test_other_architectures(tiny_llama, vocab_map, tiny_bert):
    gpt = build_student(tiny_llama.config, {"layers": 2, "hidden": 32, "heads": 2}, vocab_map, arch="gpt2")
    assert type(gpt).__name__ == "GPT2LMHeadModel" and gpt.config.vocab_size == vocab_map.num_kept
    assert gpt(input_ids=torch.randint(vocab_map.num_kept, (1, 5))).logits.shape[-1] == vocab_map.num_kept
    with pytest.raises(StudentError, match="masked-LM|see the tokens"):
        build_student(tiny_llama.config, {"layers": 1}, arch="bert")
    with pytest.raises(StudentError, match="unknown student_arch"):
        build_student(tiny_llama.config, {"layers": 1}, arch="rnn")
    bert = build_student(tiny_bert.config, {"layers": 1, "hidden": 32, "heads": 2})
    assert type(bert).__name__ == "BertForMaskedLM"
    with pytest.raises(StudentError, match="divisible"):
        build_student(tiny_llama.config, {"hidden": 30, "heads": 4})


def test_init_from_teacher_copies_layer_subset_and_kept_rows(make_tiny_llama, vocab_map):
    teacher = make_tiny_llama(num_hidden_layers=4)
    st = build_student(teacher.config, {"layers": 2, "hidden": 32, "heads": 2, "kv_heads": 1,
                                        "intermediate": 64}, vocab_map, init="teacher", teacher=teacher)
    t_sd, s_sd = teacher.state_dict(), st.state_dict()
    # student layer 0 <- teacher layer 0, student layer 1 <- teacher layer 3 (first and last)
    assert torch.equal(s_sd["model.layers.0.self_attn.q_proj.weight"], t_sd["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(s_sd["model.layers.1.mlp.up_proj.weight"], t_sd["model.layers.3.mlp.up_proj.weight"])
    assert torch.equal(s_sd["model.embed_tokens.weight"], t_sd["model.embed_tokens.weight"][vocab_map.kept_ids])
    random = build_student(teacher.config, {"layers": 2, "hidden": 32, "heads": 2, "kv_heads": 1,
                                            "intermediate": 64}, vocab_map, init="random", seed=0)
    assert not torch.equal(random.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           t_sd["model.layers.0.self_attn.q_proj.weight"])
    # different widths: nothing copied, and it says so
    narrow = build_student(teacher.config, {"layers": 2, "hidden": 16, "heads": 2}, vocab_map)
    assert init_from_teacher(narrow, teacher, vocab_map)["copied"] == 0
    with pytest.raises(StudentError, match="needs the teacher"):
        build_student(teacher.config, {"layers": 1}, init="teacher")


def test_save_load_roundtrip_scores_and_generates(tmp_path, tiny_llama, vocab_map, smol_tokenizer):
    st = build_student(tiny_llama.config, {"layers": 2, "hidden": 32, "heads": 2}, vocab_map, seed=0).eval()
    path = save_student(st, tmp_path / "student", smol_tokenizer, vocab_map)
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab_map.json", "student.json"} <= \
        {p.name for p in path.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    loaded = load_student(path)
    ids = torch.randint(vocab_map.num_kept, (2, 7))
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, st(input_ids=ids).logits)
    assert loaded.vocab_map.num_kept == vocab_map.num_kept

    scores = loaded.score(["The capital of France is Paris.", "Once upon a time"])
    assert len(scores) == 2 and all(s["logprob"] < 0 and s["tokens"] > 0 for s in scores)
    # the score is the model's log-probability of the mapped ids
    enc = loaded.encode("The capital of France is Paris.")
    with torch.no_grad():
        logp = torch.log_softmax(loaded.model(input_ids=enc["input_ids"]).logits[0, :-1], -1)
    expect = logp.gather(-1, enc["input_ids"][0, 1:, None]).sum()
    assert scores[0]["logprob"] == pytest.approx(float(expect), rel=1e-5)

    top = loaded.next_token_topk("The capital of France is", k=5)
    assert len(top) == 5 and all(isinstance(w, str) for w, _ in top)
    assert [p for _, p in top] == sorted([p for _, p in top], reverse=True)
    text = loaded.generate("Once upon a time", max_new_tokens=6)
    assert isinstance(text, str)
    # generation maps ids back out: the text re-encodes to kept teacher tokens only
    out_ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert bool(vocab_map.is_kept(torch.tensor(out_ids, dtype=torch.long)).all()) if out_ids else True


def test_mismatched_map_is_refused(tmp_path, tiny_llama, vocab_map, smol_tokenizer):
    st = build_student(tiny_llama.config, {"layers": 1, "hidden": 32, "heads": 2}, vocab_map)
    other = VocabMap.identity(smol_tokenizer)
    with pytest.raises(VocabMapError, match="does not belong"):
        save_student(st, tmp_path / "bad", smol_tokenizer, other)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(VocabMapError, match="does not belong"):
        Student(st, smol_tokenizer, other)
    path = save_student(st, tmp_path / "ok", smol_tokenizer, vocab_map)
    other.save(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "vocab_map.json", path / "vocab_map.json")
    with pytest.raises(VocabMapError, match="does not belong"):
        load_student(path)
    with pytest.raises(StudentError, match="another tokenizer"):
        build_student(tiny_llama.config, {"layers": 1}, VocabMap.identity(smol_tokenizer, 100))


def test_student_wraps_a_teacher_with_identity_map(tiny_llama, smol_tokenizer):
    teacher = Student(tiny_llama, smol_tokenizer)
    top = teacher.next_token_topk("Hello", 3)
    assert len(top) == 3 and sum(p for _, p in top) <= 1.0


def test_a_narrower_student_takes_the_teachers_embeddings_through_their_principal_directions(make_tiny_llama,
                                                                                              vocab_map):
    """Widths differ, so no layer can be copied; the kept embedding rows are projected onto their top-d right
    singular vectors: the best rank-d picture of the teacher's token geometry (Eckart-Young), tied head included."""
    import numpy as np

    teacher = make_tiny_llama(num_hidden_layers=2, hidden_size=32, intermediate_size=64)
    d = 16
    st = build_student(teacher.config, {"layers": 1, "hidden": d, "heads": 2}, vocab_map, init="teacher",
                       teacher=teacher)
    emb = st.get_input_embeddings().weight.detach().double().numpy()
    rows = teacher.get_input_embeddings().weight.detach()[vocab_map.kept_ids].double().numpy()
    u, s, _ = np.linalg.svd(rows, full_matrices=False)
    assert np.isclose((emb ** 2).sum(), (s[:d] ** 2).sum(), rtol=1e-5)  # all the energy of the top d directions
    # the rank-d Gram matrix (whatever the singular vectors' signs), on 400 rows to keep it small
    best = (u[:400, :d] * s[:d]) @ (u[:400, :d] * s[:d]).T
    np.testing.assert_allclose(emb[:400] @ emb[:400].T, best, atol=1e-6)
    assert st.get_output_embeddings().weight is st.get_input_embeddings().weight  # still tied
    info = init_from_teacher(st, teacher, vocab_map)
    assert info["copied"] == 0 and info["projected"] == ["model.embed_tokens.weight", "lm_head.weight"]
    # a random student has no such structure: its Gram matrix is far from the teacher's
    rnd = build_student(teacher.config, {"layers": 1, "hidden": d, "heads": 2}, vocab_map, seed=0)
    r = rnd.get_input_embeddings().weight.detach().double().numpy()[:400]
    assert np.linalg.norm(r @ r.T - best) > 0.5 * np.linalg.norm(best)
    # as wide as the teacher: copied, not projected
    same = build_student(teacher.config, {"layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1, "intermediate": 64},
                         vocab_map, init="teacher", teacher=teacher)
    assert init_from_teacher(same, teacher, vocab_map)["projected"] == []


def test_a_narrower_gpt2_student_projects_its_position_embeddings_with_the_same_basis(smol_tokenizer):
    from tiny_models import tiny_family_model

    teacher = tiny_family_model("gpt2", smol_tokenizer, n_layer=2)
    h = teacher.config.n_embd
    st = build_student(teacher.config, {"layers": 1, "hidden": h // 2, "heads": 2}, init="teacher", teacher=teacher)
    info = init_from_teacher(st, teacher)
    assert "transformer.wpe.weight" in info["projected"] and "transformer.wte.weight" in info["projected"]
    wte_t, wpe_t = teacher.transformer.wte.weight.detach(), teacher.transformer.wpe.weight.detach()
    basis = torch.linalg.svd(wte_t.float(), full_matrices=False).Vh[: h // 2].T
    assert torch.allclose(st.transformer.wpe.weight.detach(), wpe_t @ basis, atol=1e-5)


def test_init_from_a_gpt2_teacher_maps_its_h_layers(smol_tokenizer):
    from tiny_models import tiny_family_model

    teacher = tiny_family_model("gpt2", smol_tokenizer, n_layer=4)
    st = build_student(teacher.config, {"layers": 2, "hidden": 32, "heads": 2, "intermediate": 128}, init="teacher",
                       teacher=teacher)
    t_sd, s_sd = teacher.state_dict(), st.state_dict()
    assert torch.equal(s_sd["transformer.h.1.mlp.c_fc.weight"], t_sd["transformer.h.3.mlp.c_fc.weight"])
    assert torch.equal(s_sd["transformer.h.0.attn.c_attn.weight"], t_sd["transformer.h.0.attn.c_attn.weight"])


def test_corrupted_weights_name_the_folder_and_the_notebook_to_rerun(tmp_path, tiny_llama, vocab_map, smol_tokenizer):
    st = build_student(tiny_llama.config, {"layers": 1, "hidden": 32, "heads": 2}, vocab_map)
    path = save_student(st, tmp_path / "run" / "stage1" / "student", smol_tokenizer, vocab_map)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as after a full disk
    with pytest.raises(StudentError, match=r"stage1/student cannot be loaded.*Rerun notebook 03_stage1"):
        load_student(path)
    path2 = save_student(st, tmp_path / "run" / "stage2" / "CB" / "student", smol_tokenizer, vocab_map)
    (path2 / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(StudentError, match=r"05_stage2_distillation for CB"):
        load_student(path2)


def test_init_from_teacher_never_copies_attention_across_another_head_layout(make_tiny_llama, vocab_map):
    """Same width, other head count: q/k/v/o have the same shapes but each head's rows mean something else
    (and RoPE rotates per head size), so only the non-attention tensors are copied."""
    teacher = make_tiny_llama(num_hidden_layers=2)
    heads = teacher.config.num_attention_heads
    st = build_student(teacher.config, {"layers": 2, "hidden": teacher.config.hidden_size, "heads": 2 * heads,
                                        "kv_heads": 2 * heads, "intermediate": teacher.config.intermediate_size},
                       vocab_map)
    t_sd, s_sd = teacher.state_dict(), st.state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert s_sd[q].shape == t_sd[q].shape  # the old rule (equal shapes) would have copied it
    info = init_from_teacher(st, teacher, vocab_map)
    assert q in info["skipped_attention"] and not torch.equal(st.state_dict()[q], t_sd[q])
    assert torch.equal(st.state_dict()["model.layers.1.mlp.up_proj.weight"], t_sd["model.layers.1.mlp.up_proj.weight"])


# --------------------------------------------------------------------------------------------
# the factorised embedding (issue #13: glmd+al, dim-reduction)
# --------------------------------------------------------------------------------------------

def test_factorized_student_round_trip_and_parameter_count(tmp_path, tiny_llama, smol_tokenizer):
    from glmd_lib.config.stages import VocabConfig
    from glmd_lib.models.factorized import FactorizedHead
    from glmd_lib.models.student import save_student
    from glmd_lib.models.teacher import count_parameters
    from glmd_lib.vocab.analysis import factorized_alternative

    shape = dict(layers=1, hidden=64, heads=2)
    plain = build_student(tiny_llama.config, shape, seed=0)
    student = build_student(tiny_llama.config, {**shape, "embedding_dim": 16}, seed=0)
    assert isinstance(student.get_output_embeddings(), FactorizedHead)
    V = len(smol_tokenizer)
    # the vocabulary stage's figure for this shape (its E = hidden / 4 = 16)
    vcfg = VocabConfig.resolve("smoke", run_dir=str(tmp_path), student_layers=1, student_hidden=64, student_heads=2)
    width, expected = factorized_alternative(tiny_llama.config, vcfg, V, count_parameters(plain))
    assert width == 16 and count_parameters(student) == expected == count_parameters(plain) - V * 64 + V * 16 + 2 * 16 * 64
    ids = torch.tensor([[5, 700, 49151, 17, 3]])
    student.eval()
    with torch.no_grad():
        before = student(input_ids=ids).logits
    save_student(student, tmp_path / "s", smol_tokenizer, None)
    loaded = load_student(tmp_path / "s")
    assert isinstance(loaded.model.get_output_embeddings(), FactorizedHead)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=ids).logits, before)
    assert count_parameters(loaded.model) == expected


def test_factorized_embedding_is_refused_where_it_cannot_be_built(tiny_llama, tiny_bert):
    with pytest.raises(StudentError, match="embedding_dim = 32 must be in"):
        build_student(tiny_llama.config, dict(layers=1, hidden=32, heads=2, embedding_dim=32))
    with pytest.raises(StudentError, match="causal-LM students only"):
        build_student(tiny_bert.config, dict(layers=1, hidden=32, heads=2, embedding_dim=8))
