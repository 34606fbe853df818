"""Scores from clozes: equal to a by-hand forward pass, padding-invariant, differentiable, VocabMap-aware; the one
predict path (predict_clozes) and its precision rule."""
from __future__ import annotations

import pytest
import torch

from glmd_lib.models.teacher import linear_head
from glmd_lib.tasks.scoring import batches_by_length, collate_sequences, predict_clozes, task_scores
from glmd_lib.superglue.data import read_split
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.patterns import build_cloze


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("sg"), n=4)


def _by_hand(model, cloze, kind="causal"):
    out = []
    with torch.no_grad():
        for j, seq in enumerate(cloze.sequences):
            lp = torch.log_softmax(model(torch.tensor([seq])).logits[0], -1)
            if cloze.single_token:
                return lp[cloze.answer_positions[0], cloze.choice_token_ids]
            a, b = cloze.candidate_spans[j]
            shift = 1 if kind == "causal" else 0
            out.append(sum(lp[t - shift, cloze.candidate_ids[j][t - a]] for t in range(a, b)))
    return torch.stack(out)


def test_collate_right_pads_with_mask():
    ids, mask = collate_sequences([[5, 6, 7], [8]], pad_id=2)
    assert ids.tolist() == [[5, 6, 7], [8, 2, 2]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("task", ["CB", "COPA", "ReCoRD", "MultiRC"])
def test_causal_scores_match_by_hand_and_ignore_padding(toy, smol_tokenizer, tiny_llama, task):
    exs = read_split(task, "val", toy)
    cl = build_cloze(task, exs, smol_tokenizer)
    s = task_scores(tiny_llama, cl)
    assert s.shape == (len(cl), max(c.n_choices for c in cl))
    for i, c in enumerate(cl):
        torch.testing.assert_close(s[i, :c.n_choices], _by_hand(tiny_llama, c), atol=1e-4, rtol=1e-4)
    # padding: scored beside a much longer cloze (of another task), the scores do not change
    long = build_cloze("BoolQ", [read_split("BoolQ", "val", toy)[0]], smol_tokenizer)
    long[0].sequences[0] = long[0].sequences[0][:1] * 40 + long[0].sequences[0]
    long[0].answer_positions = [len(long[0].sequences[0]) - 1]
    assert long[0].max_len > 2 * max(len(q) for q in cl[0].sequences)
    mixed = task_scores(tiny_llama, cl[:1] + long)
    n = cl[0].n_choices
    torch.testing.assert_close(mixed[0, :n], s[0, :n], atol=1e-4, rtol=1e-4)


def test_ragged_choices_are_padded_with_minus_inf(smol_tokenizer, tiny_llama, toy):
    exs = read_split("ReCoRD", "val", toy)
    exs[0].candidates = ["Paris", "Rome", "France"]
    exs[0].label = ["France"]
    cl = build_cloze("ReCoRD", exs[:2], smol_tokenizer)
    s = task_scores(tiny_llama, cl)
    assert s.shape == (2, 3) and torch.isinf(s[1, 2]) and torch.isfinite(s[0]).all()
    assert cl[0].label == 2


def test_scores_are_differentiable(smol_tokenizer, tiny_llama, toy):
    cl = build_cloze("COPA", read_split("COPA", "train", toy), smol_tokenizer)
    tiny_llama.train()
    s = task_scores(tiny_llama, cl)
    loss = torch.nn.functional.cross_entropy(s, torch.tensor([c.label for c in cl]))
    loss.backward()
    assert tiny_llama.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_masked_scores_match_by_hand(tmp_path, toy):
    from transformers import BertConfig, BertForMaskedLM
    from test_patterns import make_word_bert_tokenizer

    tok = make_word_bert_tokenizer(tmp_path)
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2)).eval()
    for task in ("RTE", "COPA"):
        cl = build_cloze(task, read_split(task, "val", toy), tok, kind="masked")
        s = task_scores(model, cl)
        for i, c in enumerate(cl):
            torch.testing.assert_close(s[i, :c.n_choices], _by_hand(model, c, "masked"), atol=1e-4, rtol=1e-4)
    preds, _ = predict_clozes(model, build_cloze("RTE", read_split("RTE", "val", toy), tok, kind="masked"))
    assert set(preds) <= {"entailment", "not_entailment"}


class StandInVocabMap:
    """The part of glmd_lib.vocab.vocab_map.VocabMap that scoring uses: teacher id -> student id."""

    def __init__(self, kept, vocab_size, unk=0):
        self.kept_ids = torch.as_tensor(sorted(kept))
        self.teacher_to_student = torch.full((vocab_size,), unk, dtype=torch.long)
        self.teacher_to_student[self.kept_ids] = torch.arange(len(self.kept_ids))

    def map_ids(self, ids):
        return self.teacher_to_student[torch.as_tensor(ids).cpu()]


def test_student_with_vocab_map_reads_mapped_ids(smol_tokenizer, toy):
    from transformers import LlamaConfig, LlamaForCausalLM

    exs = read_split("CB", "val", toy)
    cl = build_cloze("CB", exs, smol_tokenizer)
    used = sorted({t for c in cl for s in c.sequences for t in s} | {t for c in cl for t in c.choice_token_ids})
    vm = StandInVocabMap([0] + used, len(smol_tokenizer))
    torch.manual_seed(3)
    student = LlamaForCausalLM(LlamaConfig(vocab_size=len(vm.kept_ids), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)).eval()
    s = task_scores(student, cl, vocab_map=vm)
    for i, c in enumerate(cl):
        seq = vm.map_ids(torch.tensor([c.sequences[0]]))
        with torch.no_grad():
            lp = torch.log_softmax(student(seq).logits[0, c.answer_positions[0]], -1)
        torch.testing.assert_close(s[i], lp[vm.map_ids(torch.tensor(c.choice_token_ids))], atol=1e-4, rtol=1e-4)


def test_predict_clozes_returns_label_values_in_order(smol_tokenizer, tiny_llama, toy):
    exs = read_split("CB", "val", toy)
    cl = build_cloze("CB", exs, smol_tokenizer)
    tiny_llama.train()
    preds, scores = predict_clozes(tiny_llama, cl, batch_size=3)
    assert tiny_llama.training  # the mode is restored
    tiny_llama.eval()
    assert len(preds) == len(exs) and all(p in ("entailment", "contradiction", "neutral") for p in preds)
    for p, s, c in zip(preds, scores, cl):
        assert p == c.choices[int(s.argmax())]
    torch.testing.assert_close(torch.stack(scores), task_scores(tiny_llama, cl).detach(), atol=1e-4, rtol=1e-4)
    preds, _ = predict_clozes(tiny_llama, build_cloze("COPA", read_split("COPA", "val", toy), smol_tokenizer))
    assert set(preds) <= {0, 1}
    assert predict_clozes(tiny_llama, []) == ([], [])


def test_predict_clozes_precision_follows_the_one_rule(smol_tokenizer, tiny_llama, toy):
    """bf16=None is fp32 on CPU, even inside an outer bf16 autocast region (glmd_lib.device.autocast disables it
    explicitly); bf16=True gives bf16 scores, which differ."""
    cl = build_cloze("CB", read_split("CB", "val", toy), smol_tokenizer)
    _, fp32 = predict_clozes(tiny_llama, cl)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, inside = predict_clozes(tiny_llama, cl)
    _, half = predict_clozes(tiny_llama, cl, bf16=True)
    assert all(torch.equal(a, b) for a, b in zip(fp32, inside))
    assert any(not torch.equal(a, b) for a, b in zip(fp32, half))


def test_batches_by_length_respect_the_sequence_budget(smol_tokenizer, toy):
    cl = build_cloze("COPA", read_split("COPA", "val", toy), smol_tokenizer)
    batches = batches_by_length(cl, batch_size=4)
    assert sorted(i for b in batches for i in b) == list(range(len(cl)))
    assert all(sum(len(cl[i].sequences) for i in b) <= 4 for b in batches)
    assert len(batches) == 2


@pytest.mark.parametrize("family", ["gemma2", "qwen3"])
def test_scores_are_the_models_own_log_softmax(make_family_teacher, toy, family, monkeypatch):
    """Gemma-2 soft-caps its logits after the output layer, so its scores must come from the full forward pass;
    Qwen3 (no transform) reads the output layer at the scored positions only. Both equal model(x).logits'
    log-softmax; the decision (a forward pass) is made once per model."""
    import glmd_lib.tasks.scoring as scoring

    # a small cap: on a tiny random model's small logits the default cap (30) is nearly the identity
    model, tok = make_family_teacher(family, **({"final_logit_softcapping": 0.5} if family == "gemma2" else {}))
    calls = []
    monkeypatch.setattr(scoring, "linear_head", lambda m: calls.append(m) or linear_head(m))
    for task in ("CB", "COPA"):
        cl = build_cloze(task, read_split(task, "val", toy), tok)
        s = task_scores(model, cl)
        for i, c in enumerate(cl):
            torch.testing.assert_close(s[i, :c.n_choices], _by_hand(model, c), atol=1e-5, rtol=1e-5)
    assert len(calls) == 1 and scoring._LINEAR_HEAD[model] is (family == "qwen3")
    if family == "gemma2":  # the test can tell: the output layer alone would give other scores
        ids = torch.tensor([cl[0].sequences[0]])
        with torch.no_grad():
            head = model.get_output_embeddings()(model.base_model(ids).last_hidden_state)
            assert not torch.allclose(head.log_softmax(-1), model(ids).logits.log_softmax(-1), atol=1e-2)
