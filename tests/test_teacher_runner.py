"""The live teacher's bf16 weight copies (issue #12): bitwise the logits plain autocast gives, the fp32 teacher
untouched, tied embeddings left alone, and the exact fp32 path unchanged."""
from __future__ import annotations

import torch
from torch import nn

from glmd_lib.distill.teacher import TeacherRunner, bf16_linear_weights, hidden_teacher_fn
from glmd_lib.vocab.vocab_map import VocabMap


def _ids(n=2, length=12, vocab=49152, seed=0):
    return torch.randint(5, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _all_chunks(runner, ids):
    fn = runner.chunks(ids, torch.ones_like(ids))
    return torch.cat([fn(slice(i, i + 5)) for i in range(0, ids.numel(), 5)])


def test_bf16_copies_give_bitwise_the_autocast_logits(make_tiny_llama, smol_tokenizer):
    teacher = make_tiny_llama(seed=0, initializer_range=0.5)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ids = _ids()
    kept = VocabMap.build(torch.arange(len(smol_tokenizer)).flip(0), smol_tokenizer, 0.25, substitute="unk")
    for vm in (None, kept):  # the full head and the kept rows
        plain = TeacherRunner(teacher, vm, bf16=True, bf16_weights=False)
        copies = TeacherRunner(teacher, vm, bf16=True)
        assert copies.weights and all(w.dtype == torch.bfloat16 for w in copies.weights.values())
        assert copies.head_w.dtype == torch.bfloat16 and plain.head_w.dtype == torch.float32
        assert torch.equal(_all_chunks(copies, ids), _all_chunks(plain, ids))
    state = teacher.state_dict()
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], v) for k, v in before.items())


def test_fp32_runner_keeps_no_copies_and_matches_the_model(make_tiny_llama):
    teacher = make_tiny_llama(seed=1)
    runner = TeacherRunner(teacher, None, bf16=False)
    assert runner.weights == {} and runner.head_w.dtype == torch.float32
    ids = _ids(seed=1)
    with torch.no_grad():
        full = teacher(input_ids=ids).logits.reshape(-1, teacher.config.vocab_size)
    torch.testing.assert_close(_all_chunks(runner, ids), full, rtol=1e-5, atol=1e-5)


def test_bf16_weights_skip_embedding_tied_layers_and_share_tied_copies():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight  # an output layer sharing the input embeddings
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight

    w = bf16_linear_weights(Tied())
    assert set(w) == {"a.weight", "b.weight"} and w["a.weight"] is w["b.weight"]
    assert w["a.weight"].dtype == torch.bfloat16


def test_cached_hidden_states_with_bf16_rows_match_the_live_bf16_teacher(make_tiny_llama):
    teacher = make_tiny_llama(seed=2, initializer_range=0.5)
    runner = TeacherRunner(teacher, None, bf16=True)
    ids = _ids(seed=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = teacher.base_model(input_ids=ids).last_hidden_state.float()
    cached = hidden_teacher_fn(h, runner.head_w, runner.head_b, bf16=True)(slice(None))
    assert torch.equal(cached, _all_chunks(runner, ids))
