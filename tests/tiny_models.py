"""Tiny random models of the architecture families a user is likely to bring, and a shared test text.

A plain module (not conftest.py) so tests can import it by a name no other folder's conftest shadows:
tests/browser/ has a conftest.py of its own, and ``from conftest import ...`` may find that one.
"""
from __future__ import annotations

import torch

TEXT = """The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.
Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse,
I thought I would sail about a little and see the watery part of the world. Is the premise true? Yes.
The capital of France is Paris. The opposite of hot is cold. Once upon a time there was a small house.
Happy families are all alike; every unhappy family is unhappy in its own way. No, maybe, yes, true, false.
""" * 4


# architecture families a user is likely to bring: config class and fields of a tiny teacher (3 layers,
# 32 wide; Gemma-3: 6 layers for its five-sliding-to-one-full pattern). Sliding windows are shorter than
# the test texts, head_dim differs from hidden/heads where the family allows it (Qwen3, Gemma).
_CAUSAL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
               max_position_embeddings=128)
FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", dict(_CAUSAL, num_key_value_heads=1)),
    "mistral": ("MistralConfig", dict(_CAUSAL, num_key_value_heads=1, sliding_window=16)),
    "qwen2": ("Qwen2Config", dict(_CAUSAL, num_key_value_heads=1, use_sliding_window=True, sliding_window=16,
                                  max_window_layers=2)),
    "qwen3": ("Qwen3Config", dict(_CAUSAL, num_key_value_heads=1, head_dim=8, use_sliding_window=True,
                                  sliding_window=16, max_window_layers=2)),
    "gemma2": ("Gemma2Config", dict(_CAUSAL, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                                    sliding_window=16)),
    "gemma3": ("Gemma3TextConfig", dict(_CAUSAL, num_hidden_layers=6, num_key_value_heads=1, head_dim=24,
                                        query_pre_attn_scalar=24, sliding_window=16)),
    "phi3": ("Phi3Config", dict(_CAUSAL, num_key_value_heads=1)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=3, n_head=2, n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", dict(_CAUSAL)),
    "olmo": ("OlmoConfig", dict(_CAUSAL, num_key_value_heads=1)),
    "olmo2": ("Olmo2Config", dict(_CAUSAL, num_key_value_heads=1)),
    "bert": ("BertConfig", dict(_CAUSAL)),
    "roberta": ("RobertaConfig", dict(_CAUSAL, max_position_embeddings=130)),  # 128 + pad + 1 (RoBERTa offset)
}
MASKED_FAMILIES = ("bert", "roberta")
CAUSAL_FAMILIES = tuple(f for f in FAMILY_CONFIGS if f not in MASKED_FAMILIES)


def tiny_family_model(family: str, tokenizer, seed: int = 0, **overrides):
    """A random model of ``family`` over ``tokenizer``'s vocabulary and special ids, in eval mode."""
    import transformers

    from glmd_lib.models.teacher import model_class

    cls_name, fields = FAMILY_CONFIGS[family]
    special = {"bos_token_id": tokenizer.bos_token_id or tokenizer.cls_token_id,
               "eos_token_id": tokenizer.eos_token_id or tokenizer.sep_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    cfg = getattr(transformers, cls_name)(vocab_size=len(tokenizer), **{**special, **fields, **overrides})
    torch.manual_seed(seed)
    return model_class(cfg).from_config(cfg).eval()
