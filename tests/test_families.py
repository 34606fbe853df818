"""Any teacher a user brings: student configs per architecture family, the teacher-logits decision, and the
whole path (build, stage-1 steps, save, load, score a cloze, one stage-2 step) for each family.

The families (conftest.FAMILY_CONFIGS): Llama, Mistral, Qwen2, Qwen3, Gemma-2, Gemma-3 (text), Phi-3, GPT-2,
GPT-NeoX, OLMo, OLMo2 (causal, over the real SmolLM2 tokenizer) and BERT, RoBERTa (masked, over a small
WordPiece tokenizer). Teachers are tiny random models built from configs.
"""
from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import CAUSAL_FAMILIES, FAMILY_CONFIGS, TEXT

from glmd_lib.distill.losses import distill_loss, mask_tokens, soft_cross_entropy
from glmd_lib.distill.teacher import TeacherRunner, hidden_teacher_fn
from glmd_lib.models.families import declared_logit_transform, per_layer_fields, resample_layers
from glmd_lib.models.student import build_student, load_student, save_student
from glmd_lib.models.student_config import StudentError, derive_student_config, validate_student_config
from glmd_lib.models.teacher import linear_head, model_kind
from glmd_lib.superglue.data import read_split
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.patterns import build_cloze, verbalizer_token_ids
from glmd_lib.tasks.scoring import task_scores
from glmd_lib.vocab.vocab_map import VocabMap

SHAPE = dict(layers=2, hidden=32, heads=2, intermediate=64, max_positions=64)
S, F = "sliding_attention", "full_attention"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("sg"), n=4)


def _vocab_map(tokenizer, keep: int) -> VocabMap:
    """Random counts, with the test texts' tokens frequent and RTE's verbalizers protected."""
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 100, (len(tokenizer),), generator=g)
    counts[tokenizer(TEXT, add_special_tokens=False)["input_ids"]] += 10_000
    return VocabMap.build(counts, tokenizer, keep, protected_ids=verbalizer_token_ids(tokenizer, ["RTE"]),
                          multiple_of=64, substitute="unk")


# --------------------------------------------------------------------------------------------
# per-layer fields and validation (configs only)
# --------------------------------------------------------------------------------------------

def test_resample_layers_keeps_the_pattern():
    gemma3 = ([S] * 5 + [F]) * 3  # 18 layers
    assert resample_layers(gemma3, 4) == [S, S, S, F]  # the pattern continued, one full layer kept
    assert resample_layers(gemma3, 12) == gemma3[:12]
    assert resample_layers([S, F] * 13, 5) == [S, F, S, F, S]  # Gemma-2
    qwen = [F] * 28 + [S] * 8  # not periodic: evenly spaced teacher layers (first and last)
    assert resample_layers(qwen, 4) == [F, F, F, S]
    assert resample_layers([1.0, 2.0, 3.0], 2) == [1.0, 3.0]


def test_gemma3_student_of_a_deep_teacher_is_valid_before_training():
    from transformers import Gemma3TextConfig

    teacher = Gemma3TextConfig(vocab_size=1000, num_hidden_layers=18, hidden_size=64, num_attention_heads=4,
                               num_key_value_heads=1, head_dim=256, intermediate_size=128, sliding_window=512)
    # what used to happen: the teacher's 18 layer types for 4 layers, refused only when saving
    stale = copy.deepcopy(teacher)
    stale.num_hidden_layers = 4
    with pytest.raises(StudentError, match="layer_types has 18 entries for 4 layers"):
        validate_student_config(stale)
    cfg = derive_student_config(teacher, dict(layers=4, hidden=64, heads=4, max_positions=64))
    assert cfg.layer_types == [S, S, S, F] and cfg.num_hidden_layers == 4
    assert cfg.head_dim == 16 and cfg.query_pre_attn_scalar == 16 and cfg.num_key_value_heads == 4
    assert cfg.max_position_embeddings == 64 and cfg.intermediate_size == 192  # 8/3 x 64 (gated MLP)


def test_qwen2_window_layers_and_moe_layer_indices_follow_the_depth():
    from transformers import Qwen2Config, Qwen2MoeConfig

    qwen = Qwen2Config(vocab_size=1000, num_hidden_layers=24, hidden_size=64, num_attention_heads=4,
                       use_sliding_window=True, max_window_layers=16)
    cfg = derive_student_config(qwen, SHAPE | {"layers": 4})
    assert cfg.layer_types == [F, F, F, S] and cfg.max_window_layers == 3
    moe = Qwen2MoeConfig(vocab_size=1000, num_hidden_layers=6, hidden_size=64, num_attention_heads=4,
                         mlp_only_layers=[0, 5], num_experts=4, num_experts_per_tok=2)
    assert derive_student_config(moe, SHAPE | {"layers": 3}).mlp_only_layers == [0, 2]


def test_phi3_longrope_factors_and_roberta_positions_follow_the_student():
    from transformers import Phi3Config, RobertaConfig

    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 48,
            "long_factor": [float(i) for i in range(1, 49)]}
    phi = Phi3Config(vocab_size=1000, eos_token_id=2, pad_token_id=2, num_hidden_layers=4, hidden_size=192,
                     num_attention_heads=2,
                     max_position_embeddings=8192, original_max_position_embeddings=4096, rope_parameters=rope)
    cfg = derive_student_config(phi, SHAPE)  # head size 96 -> 16: 48 factors -> 8
    long = cfg.rope_parameters["long_factor"]
    assert len(long) == 8 and len(cfg.rope_parameters["short_factor"]) == 8 and long[0] == 1.0 and long[-1] == 48.0
    roberta = RobertaConfig(vocab_size=1000, pad_token_id=1, max_position_embeddings=514)
    assert derive_student_config(roberta, SHAPE).max_position_embeddings == 64 + 1 + 1


# --------------------------------------------------------------------------------------------
# teacher logits: the config decides, the numerical check is the backstop
# --------------------------------------------------------------------------------------------

def test_declared_logit_transforms_are_read_from_the_config():
    from transformers import CohereConfig, Gemma2Config, Gemma3TextConfig, GraniteConfig, LlamaConfig

    assert declared_logit_transform(Gemma2Config()) == "final_logit_softcapping = 30.0"
    assert declared_logit_transform(Gemma3TextConfig()) is None  # Gemma-3 does not soft-cap
    assert declared_logit_transform(Gemma3TextConfig(final_logit_softcapping=30.0)) is not None
    assert declared_logit_transform(CohereConfig()).startswith("logit_scale")
    assert declared_logit_transform(GraniteConfig(logits_scaling=8.0)) == "logits_scaling = 8.0"
    assert declared_logit_transform(GraniteConfig()) is None and declared_logit_transform(LlamaConfig()) is None


@pytest.mark.parametrize("family,overrides", [("gemma2", {}), ("gemma3", {"final_logit_softcapping": 30.0})])
def test_soft_capped_teachers_have_no_linear_head_even_when_numerically_linear(make_family_teacher, family,
                                                                               overrides):
    teacher, _ = make_family_teacher(family, **overrides)
    ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        mine = teacher.get_output_embeddings()(teacher.base_model(input_ids=ids).last_hidden_state)
        # small random logits: cap * tanh(z / cap) == z within the numerical check's tolerance ...
        torch.testing.assert_close(mine, teacher(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert linear_head(teacher) is None  # ... so only the config can tell


def test_scaled_logits_families_have_no_linear_head():
    from transformers import CohereConfig, CohereForCausalLM, GraniteConfig, GraniteForCausalLM

    tiny = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    assert linear_head(CohereForCausalLM(CohereConfig(**tiny)).eval()) is None
    assert linear_head(GraniteForCausalLM(GraniteConfig(**tiny, logits_scaling=4.0)).eval()) is None
    plain = GraniteForCausalLM(GraniteConfig(**tiny)).eval()  # scaling 1: a plain head
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the check runs in the model's precision regardless
        assert linear_head(plain) is not None


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_teacher_logits_from_hidden_states_equal_the_forward_logits(make_family_teacher, family):
    """Live (hidden states + the head's kept rows) and cached (fp16 hidden states) teacher logits."""
    teacher, tok = make_family_teacher(family)
    head = linear_head(teacher)
    if declared_logit_transform(teacher.config):
        assert head is None
        return
    assert head is not None, f"{family}: a plain output layer was expected"
    vm = _vocab_map(tok, 1024)
    enc = tok(TEXT.splitlines()[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        full = vm.restrict_logits(teacher(**enc).logits).reshape(-1, vm.num_kept)
        hidden = teacher.base_model(**enc).last_hidden_state
    runner = TeacherRunner(teacher, vm, bf16=False)
    assert runner.head_w is not None  # the live path takes the kept rows of the output layer
    live = runner.chunks(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(torch.cat([live(slice(i, i + 7)) for i in range(0, len(full), 7)]), full,
                               atol=1e-5, rtol=1e-5)
    cached = hidden_teacher_fn(hidden.half(), runner.head_w, runner.head_b)(slice(None))
    torch.testing.assert_close(cached, full, atol=2e-3, rtol=2e-3)


# --------------------------------------------------------------------------------------------
# the whole path, per family
# --------------------------------------------------------------------------------------------

def _stage1_losses(teacher, student, tok, vm: VocabMap, steps: int = 3) -> list[float]:
    enc = tok(TEXT.splitlines()[:2], return_tensors="pt", padding=True)
    ids, mask, loss_mask = enc["input_ids"], enc["attention_mask"], enc["attention_mask"]
    if model_kind(teacher.config) == "masked":
        g = torch.Generator().manual_seed(0)
        ids, loss_mask = mask_tokens(ids, mask, tok.mask_token_id, len(tok), 0.3, generator=g,
                                     special_ids=tuple(tok.all_special_ids))
    teacher_fn, s_ids = TeacherRunner(teacher, vm, bf16=False).chunks(ids, mask), vm.map_ids(ids)
    head = linear_head(student)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        if head is not None:
            out = student.base_model(input_ids=s_ids, attention_mask=mask).last_hidden_state
        else:
            out = student(input_ids=s_ids, attention_mask=mask).logits
        loss, _ = distill_loss(out, head, teacher_fn, loss_mask, temperature=2.0, chunk=16)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_family_end_to_end(tmp_path, toy, make_family_teacher, family):
    teacher, tok = make_family_teacher(family)
    kind = model_kind(teacher.config)
    vm = _vocab_map(tok, 1024 if kind == "causal" else 192)
    student = build_student(teacher.config, SHAPE, vm, seed=0)
    for name in per_layer_fields(teacher.config, teacher.config.num_hidden_layers):
        assert len(getattr(student.config, name)) == 2, name

    losses = _stage1_losses(teacher, student, tok, vm)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses

    loaded = load_student(save_student(student.eval(), tmp_path / "student", tok, vm))
    assert type(loaded.model) is type(student) and loaded.model.config.num_hidden_layers == 2
    clozes = build_cloze("RTE", read_split("RTE", "val", toy), tok, kind=kind)
    with torch.no_grad():
        scores = task_scores(loaded.model, clozes, vocab_map=loaded.vocab_map)
        expect = task_scores(student, clozes, vocab_map=vm)
    assert scores.shape == (len(clozes), 2) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, expect, atol=1e-4, rtol=1e-4)

    # one stage-2 step: soft cross-entropy to the teacher's task scores, back-propagated into the student
    student.train()
    with torch.no_grad():
        target = task_scores(teacher, clozes)
    loss = soft_cross_entropy(task_scores(student, clozes, vocab_map=vm), target)
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
