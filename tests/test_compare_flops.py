"""Inference FLOPs per token counted from a config (glmd_lib.models.flops), against hand-computed counts on tiny
configs: a Llama (gated MLP, grouped-query attention, tied output), the same factorised, and a GPT-2 (Conv1D,
plain MLP, position table)."""
import pytest
import torch
from transformers import GPT2Config, LlamaConfig, LlamaForCausalLM

from glmd_lib.models.factorized import CONFIG_KEY, factorize
from glmd_lib.models.flops import body_params, flops_per_token, forward_flops


def _llama(**extra):
    return LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=4, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2, **extra)


def test_llama_count_by_hand():
    # per layer: q 16x16 + k 16x8 + v 16x8 + o 16x16 = 768, MLP gate/up/down 3 x 16x32 = 1536 -> 2304; 2 layers
    body = 2 * 2 * 2304
    attention = 2 * 2 * 2 * 8 * (4 * 4)  # 2 layers, q.K and a.V, seq_len 8, 4 heads of 4
    output = 2 * 100 * 16  # tied to the embedding, the matmul is still paid
    assert forward_flops(_llama(), 8) == {"body": body, "attention": attention, "output": output,
                                          "total": body + attention + output} == {
        "body": 9216, "attention": 1024, "output": 3200, "total": 13440}
    assert forward_flops(_llama(), 16)["attention"] == 2048  # seq_len reaches the attention term only


def test_factorised_embedding_by_hand_and_as_built():
    cfg = _llama(**{CONFIG_KEY: 4})
    # + input projection 4 -> 16 (2 x 64); output: down 16 -> 4 (2 x 64) + scores against the 100 x 4 table (2 x 400)
    assert forward_flops(cfg, 8) == {"body": 9216 + 128, "attention": 1024, "output": 128 + 800, "total": 11296}
    torch.manual_seed(0)
    built = factorize(LlamaForCausalLM(_llama()), 4)  # the student glmd+al / dim-reduction train
    head = built.get_output_embeddings()
    assert 2 * body_params(built) == 9216 + 128 and 2 * (head.down.weight.numel() + head.table.numel()) == 928


def test_gpt2_count_by_hand_skips_the_position_table():
    cfg = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0)
    # c_attn 16x48 + c_proj 16x16 + c_fc 16x64 + mlp c_proj 64x16 = 3072 (Conv1D weights); wpe 32x16 is a lookup
    assert forward_flops(cfg, 4) == {"body": 6144, "attention": 2 * 2 * 4 * 16, "output": 1600,
                                     "total": 6144 + 256 + 1600}


def test_from_a_saved_model_and_bad_seq_len(tmp_path):
    _llama().save_pretrained(tmp_path)
    assert flops_per_token(tmp_path, 8) == 13440
    with pytest.raises(ValueError, match="seq_len"):
        forward_flops(_llama(), 0)
