"""Shared fixtures: tiny random models built from configs, with real tokenizers.

* ``smol_tokenizer``: the real SmolLM2 tokenizer (49,152 BPE tokens), from the cached conversion.
* ``tiny_llama`` / ``tiny_gpt2``: 2-layer random models over that vocabulary (a Llama teacher and a
  GPT-2-style student share it).
* ``bert_tokenizer`` / ``tiny_bert``: a WordPiece tokenizer trained here on a little English text and a
  2-layer random BERT masked LM over it (the masked-LM teacher path).
* ``make_family_teacher(family)``: a tiny random teacher of each architecture family in
  :data:`FAMILY_CONFIGS` (causal ones over the SmolLM2 vocabulary, masked ones over the WordPiece one).
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# bf16 paths are exercised on every CPU, also those without bf16 units (glmd_lib.device.cpu_bf16_native)
os.environ.setdefault("GLMD_CPU_BF16", "force")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from tiny_models import FAMILY_CONFIGS, MASKED_FAMILIES, TEXT, tiny_family_model  # noqa: E402,F401


@pytest.fixture(scope="session")
def smol_tokenizer():
    from glmd_lib.models.teacher import load_tokenizer

    return load_tokenizer("smollm2-135m")


def _tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
               bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


@pytest.fixture
def make_tiny_llama(smol_tokenizer):
    """Factory: ``make_tiny_llama(seed=0, **config_overrides)``."""
    return lambda seed=0, **kw: _tiny_llama(len(smol_tokenizer), seed, **kw)


@pytest.fixture
def tiny_llama(make_tiny_llama):
    return make_tiny_llama()


@pytest.fixture
def teacher_dir(tmp_path, tiny_llama, smol_tokenizer):
    """``tiny_llama`` saved with the SmolLM2 tokenizer: a local teacher folder."""
    d = tmp_path / "tiny_teacher"
    tiny_llama.save_pretrained(d)
    smol_tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def tiny_gpt2(smol_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    cfg = GPT2Config(vocab_size=len(smol_tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                     bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="session")
def bert_tokenizer(tmp_path_factory):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    d = tmp_path_factory.mktemp("bert_tok")
    (d / "train.txt").write_text(TEXT)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train([str(d / "train.txt")], vocab_size=400, min_frequency=1)
    wp.save_model(str(d))
    tok = BertTokenizerFast.from_pretrained(d, do_lower_case=True)
    assert len(tok) > 100, "the WordPiece tokenizer lost its vocabulary"
    return tok


@pytest.fixture
def tiny_bert(bert_tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(2)
    cfg = BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=256, pad_token_id=bert_tokenizer.pad_token_id)
    return BertForMaskedLM(cfg).eval()


@pytest.fixture
def make_family_teacher(smol_tokenizer, bert_tokenizer):
    """Factory: ``make_family_teacher(family, seed=0, **config_overrides) -> (model, tokenizer)``."""
    def make(family: str, seed: int = 0, **overrides):
        tok = bert_tokenizer if family in MASKED_FAMILIES else smol_tokenizer
        return tiny_family_model(family, tok, seed, **overrides), tok

    return make


@pytest.fixture
def sample_text() -> str:
    return TEXT
