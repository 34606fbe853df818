"""Which tokens a compressed vocabulary keeps whatever their frequency: the *protected* tokens.

A :class:`~glmd_lib.vocab.vocab_map.VocabMap` keeps the protected tokens, then the most frequent others. Which
special tokens count as protected is a choice (``VocabConfig.protect``):

* ``"used"`` (default): the special tokens a model is actually fed or asked for: the tokenizer's role tokens
  (bos, eos, pad, unk, mask, sep, cls) and whatever its encoding adds around a text, which is exactly what
  the cloze patterns emit (:func:`glmd_lib.superglue.patterns.build_cloze`: BERT's ``[CLS] ... [SEP]`` and
  ``[MASK]``, Gemma's ``<bos>``, nothing for SmolLM2).
* ``"all_added"``: every special token the tokenizer declares (the rule before issue #15). Gemma-3 declares
  about 6,000 (unused slots, image and chat tokens) that never occur in text: at a 10% keep rate of its
  262k vocabulary they took a quarter of the student's rows.

Either way the caller adds its own ids (``extra_ids``): the verbalizer tokens whose probabilities become
the task scores, and the special ids the teacher's config names (:func:`config_token_ids`).

The full declared set (:func:`special_token_ids`) still identifies the tokenizer (the map's fingerprint) and
is never used as a substitute for a pruned text token, whatever is protected.
"""
from __future__ import annotations

from typing import Any, Iterable

ROLE_TOKENS = ("bos", "eos", "pad", "unk", "mask", "sep", "cls")
PROTECT_CHOICES = ("used", "all_added")
CONFIG_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


def special_token_ids(tokenizer: Any) -> list[int]:
    """Every special token the tokenizer declares: its special-token attributes and the added tokens
    flagged special. Sorted, unique."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return sorted(int(i) for i in ids if i is not None)


def encoding_added_ids(tokenizer: Any) -> set[int]:
    """Ids the tokenizer's encoding puts around a text (its post-processor): the special tokens every cloze
    sequence carries, found the way the patterns find them (encoding a word with and without them)."""
    bare = set(tokenizer("a", add_special_tokens=False)["input_ids"])
    return {int(i) for i in tokenizer("a")["input_ids"] if i not in bare}


def used_special_ids(tokenizer: Any) -> list[int]:
    """The special tokens the workbench feeds a model or reads from it (``protect="used"``). Sorted."""
    ids = {getattr(tokenizer, f"{role}_token_id", None) for role in ROLE_TOKENS}
    return sorted({int(i) for i in ids if i is not None} | encoding_added_ids(tokenizer))


def config_token_ids(config: Any) -> set[int]:
    """Special ids a model config names (bos, eos, pad, decoder start; eos may be a list). A student's config
    carries them over as student ids (:meth:`VocabMap.shrink_model`), so they must be kept rows."""
    ids: set[int] = set()
    for key in CONFIG_TOKEN_FIELDS:
        value = getattr(config, key, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        ids |= {int(v) for v in values if isinstance(v, int) and v >= 0}
    return ids


def protected_token_ids(tokenizer: Any, extra_ids: Iterable[int] = (), protect: str = "used") -> list[int]:
    """Ids that are always kept: the special tokens of the ``protect`` choice plus ``extra_ids`` (the
    verbalizer and answer tokens of the task patterns). Sorted, unique."""
    if protect not in PROTECT_CHOICES:
        raise ValueError(f"unknown protect choice {protect!r}; use one of {list(PROTECT_CHOICES)}")
    special = used_special_ids(tokenizer) if protect == "used" else special_token_ids(tokenizer)
    return sorted(set(special) | {int(i) for i in extra_ids})


def protect_table(tokenizer: Any, extra_ids: Iterable[int], kept: int) -> list[dict[str, Any]]:
    """What each choice spends of ``kept`` student rows: one row per choice (notebook 02's table)."""
    extra = list(extra_ids)
    rows = []
    for choice in PROTECT_CHOICES:
        n = len(protected_token_ids(tokenizer, extra, choice))
        rows.append({"protect": choice, "protected rows": n, "rows left for frequent tokens": max(kept - n, 0)})
    return rows
