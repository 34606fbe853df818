"""Protected tokens: the special tokens a model is fed or asked for (plus the verbalizers), not every token a
tokenizer declares; ``protect="all_added"`` keeps the old rule. On the real SmolLM2 tokenizer, on a copy with 500
unused special tokens added (Gemma-3 declares about 6,000), on a post-processor that adds a token, and on BERT."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glmd_lib.superglue.data import read_split
from glmd_lib.superglue.patterns import build_cloze, verbalizer_token_ids
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.vocab.protected import (PROTECT_CHOICES, config_token_ids, encoding_added_ids, protect_table,
                                      protected_token_ids, special_token_ids, used_special_ids)
from glmd_lib.vocab.vocab_map import VocabMap, kept_size, tokenizer_fingerprint

UNUSED = [f"<unused{i}>" for i in range(500)]


def _copy(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


@pytest.fixture(scope="module")
def many_added(smol_tokenizer, tmp_path_factory):
    """A copy of the SmolLM2 tokenizer with 500 unused special tokens and two image tokens added."""
    tok = _copy(smol_tokenizer, tmp_path_factory.mktemp("many_added"))
    tok.add_tokens(UNUSED, special_tokens=True)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_image>", "<end_of_image>"]})
    assert len(tok) == len(smol_tokenizer) + 502
    return tok


def _counts(tokenizer, seed=0):
    """Random counts over the real vocabulary; added tokens never occur in text (count 0)."""
    counts = np.random.default_rng(seed).integers(1, 1000, len(tokenizer))
    counts[special_token_ids(tokenizer)] = 0
    return counts


def test_smol_used_are_its_role_tokens(smol_tokenizer):
    # SmolLM2 as converted: unk 0 <|endoftext|>, bos 1 <|im_start|>, eos = pad 2 <|im_end|>; nothing added on encode
    assert used_special_ids(smol_tokenizer) == [0, 1, 2] and encoding_added_ids(smol_tokenizer) == set()
    assert special_token_ids(smol_tokenizer) == list(range(17))  # its 17 declared special tokens (chat, code ...)
    verbalizers = sorted(verbalizer_token_ids(smol_tokenizer))
    assert protected_token_ids(smol_tokenizer, verbalizers) == sorted({0, 1, 2, *verbalizers})
    assert protected_token_ids(smol_tokenizer, verbalizers, "all_added") == sorted({*range(17), *verbalizers})
    table = protect_table(smol_tokenizer, verbalizers, 1024)
    assert [r["protect"] for r in table] == list(PROTECT_CHOICES)
    assert [r["protected rows"] for r in table] == [3 + len(verbalizers), 17 + len(verbalizers)]
    assert all(r["protected rows"] + r["rows left for frequent tokens"] == 1024 for r in table)
    with pytest.raises(ValueError, match="unknown protect choice"):
        protected_token_ids(smol_tokenizer, protect="all")


def test_unused_added_tokens_spend_no_rows(many_added, smol_tokenizer):
    unused = set(many_added.convert_tokens_to_ids(UNUSED + ["<start_of_image>", "<end_of_image>"]))
    assert unused <= set(special_token_ids(many_added)) and not unused & set(used_special_ids(many_added))
    verbalizers = sorted(verbalizer_token_ids(many_added))
    counts = _counts(many_added)
    K = kept_size(len(many_added), 2048)
    rows = {r["protect"]: r for r in protect_table(many_added, verbalizers, K)}
    assert rows["all_added"]["protected rows"] - rows["used"]["protected rows"] == 502 + 14  # + SmolLM2's own 14
    E = torch.randn(len(many_added), 8, generator=torch.Generator().manual_seed(0))
    maps = {p: VocabMap.build(counts, many_added, keep=2048, protected_ids=verbalizers, substitute="cosine",
                              embeddings=E, protect=p) for p in PROTECT_CHOICES}
    for choice, vm in maps.items():
        kept = set(vm.kept_ids.tolist())
        assert set(vm.protected_ids) <= kept and len(vm.protected_ids) == rows[choice]["protected rows"]
        assert len(kept - set(vm.protected_ids)) == rows[choice]["rows left for frequent tokens"]
        assert vm.meta["protect"] == choice
        # declared special tokens never stand in for a pruned text token, whichever were protected
        assert not set(special_token_ids(many_added)) & set(vm.substitutes[vm.pruned_ids].tolist())
    assert not unused & set(maps["used"].kept_ids.tolist()) and unused <= set(maps["all_added"].kept_ids.tolist())
    # the choice is not part of the tokenizer's identity: both maps load against it
    assert maps["used"].fingerprint == maps["all_added"].fingerprint == tokenizer_fingerprint(many_added)
    assert tokenizer_fingerprint(many_added) != tokenizer_fingerprint(smol_tokenizer)


def test_tokens_the_encoding_adds_are_used(smol_tokenizer, tmp_path):
    """A post-processor that puts a token before every text (as Gemma's <bos>): the patterns emit it, so it is
    protected under "used"; the patterns' clozes carry no special token outside that set."""
    from tokenizers.processors import TemplateProcessing

    tok = _copy(smol_tokenizer, tmp_path)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<repo_name> $A", special_tokens=[("<repo_name>", 3)])
    assert encoding_added_ids(tok) == {3} and 3 in used_special_ids(tok)
    toy = write_toy_dataset(tmp_path / "sg", tasks=("RTE",), n=2)
    clozes = build_cloze("RTE", read_split("RTE", "val", toy), tok)
    emitted = {t for c in clozes for s in c.sequences for t in s} & set(special_token_ids(tok))
    assert emitted == {3} and emitted <= set(protected_token_ids(tok))


def test_masked_lm_keeps_what_its_clozes_use(bert_tokenizer, tmp_path):
    names = ("pad", "unk", "cls", "sep", "mask")
    assert used_special_ids(bert_tokenizer) == sorted(getattr(bert_tokenizer, f"{n}_token_id") for n in names)
    toy = write_toy_dataset(tmp_path / "sg", tasks=("COPA",), n=2)
    clozes = build_cloze("COPA", read_split("COPA", "val", toy), bert_tokenizer, kind="masked")
    emitted = {t for c in clozes for s in c.sequences for t in s} & set(special_token_ids(bert_tokenizer))
    assert {bert_tokenizer.cls_token_id, bert_tokenizer.sep_token_id, bert_tokenizer.mask_token_id} <= emitted
    assert emitted <= set(protected_token_ids(bert_tokenizer))


def test_config_token_ids():
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0)
    assert config_token_ids(cfg) == {0, 1, 2, 106}
