"""Corpus -> fixed-length token blocks for language-model distillation.

Stage 1 trains on unlabeled text. Lines are tokenised with the *teacher's* tokenizer, joined with a
separator, and cut into blocks of ``seq_len`` tokens (the usual "group texts" recipe of causal-LM
pre-training): no padding is wasted and every block is full. Blocks keep teacher ids; the student's
compressed ids are derived per batch with the ``VocabMap``.

The separator (``Stage1Config.separator``, :func:`separator_ids`) is what the teacher saw between documents
in pre-training. Not blindly its eos token: an *instruct* tokenizer's eos is the chat template's end of turn
(SmolLM2-Instruct: ``<|im_end|>``), after which the teacher predicts the template's "\n" with probability ~1,
a chat artefact at every line boundary that the student would learn. ``auto`` therefore takes
``<|endoftext|>`` when the tokenizer has it (the GPT-2/SmolLM/Qwen document separator), else a newline when
the eos token belongs to the chat template, else eos (a base model's document separator; ``[SEP]`` for
masked LMs without one).

The default corpus is the shared Gutenberg folder: its ``train-*.txt`` shards for training and its
``valid.txt`` for held-out metrics (:func:`glmd_lib.data.corpus.default_corpus`).
"""
from __future__ import annotations

import itertools
from typing import Any

import torch

from glmd_lib.data.corpus import CorpusError, describe_source, iter_corpus_lines


SEPARATORS = ("auto", "newline", "eos")  # or one token of the tokenizer, written out (e.g. "<|endoftext|>")


def chat_template_ids(tokenizer: Any) -> set[int]:
    """Ids of the special (added) tokens the tokenizer's chat template writes (``<|im_start|>`` ...)."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        template = " ".join(template.values()) if isinstance(template, dict) else ""
    added = {t.content for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()}
    special = set(getattr(tokenizer, "all_special_tokens", []) or []) | added
    return {int(tokenizer.convert_tokens_to_ids(t)) for t in special if t and t in template}


def _eos_id(tokenizer: Any) -> int | None:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def separator_ids(tokenizer: Any, separator: str = "auto") -> list[int]:
    """The ids put between two corpus lines (see the module docstring); ``[]``: none (a tokenizer without
    eos or sep, asked for ``eos``). Another value must be one token of the tokenizer's vocabulary."""
    vocab = tokenizer.get_vocab()
    if separator == "auto":
        if "<|endoftext|>" in vocab:
            return [vocab["<|endoftext|>"]]
        eos = _eos_id(tokenizer)
        separator = "newline" if eos is None or eos in chat_template_ids(tokenizer) else "eos"
    if separator == "newline":
        return list(tokenizer("\n", add_special_tokens=False)["input_ids"])
    if separator == "eos":
        return [] if _eos_id(tokenizer) is None else [_eos_id(tokenizer)]
    if separator not in vocab:
        raise ValueError(f"parameter 'separator' = {separator!r} is not a token of the teacher's tokenizer; use "
                         f"{', '.join(SEPARATORS)} or one token such as '<|endoftext|>'")
    return [vocab[separator]]


def token_blocks(source: Any, tokenizer: Any, seq_len: int, max_blocks: int | None = None,
                 max_lines: int | None = None, batch_lines: int = 512, add_bos: bool = False,
                 separator: str = "auto") -> torch.Tensor:
    """Tokenise ``source`` into a ``[n_blocks, seq_len]`` LongTensor of teacher ids.

    Lines are joined by ``separator`` (:func:`separator_ids`). Stops as soon as ``max_blocks`` blocks are
    complete (so a short run reads only what it needs). The trailing partial block is dropped. ``add_bos``
    starts every block with the BOS token.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    sep = separator_ids(tokenizer, separator)
    bos = tokenizer.bos_token_id if add_bos else None
    body = seq_len - (1 if bos is not None else 0)
    buf: list[int] = []
    blocks: list[list[int]] = []
    lines = iter_corpus_lines(source, max_lines=max_lines)
    while max_blocks is None or len(blocks) < max_blocks:
        batch = list(itertools.islice(lines, batch_lines))
        if not batch:
            break
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            buf.extend(ids)
            buf.extend(sep)
        while len(buf) >= body and (max_blocks is None or len(blocks) < max_blocks):
            blocks.append(([bos] if bos is not None else []) + buf[:body])
            buf = buf[body:]
    if not blocks:
        return torch.empty(0, seq_len, dtype=torch.long)
    return torch.tensor(blocks, dtype=torch.long)


def require_blocks(blocks: torch.Tensor, needed: int, what: str, source: Any) -> torch.Tensor:
    """Fail clearly when a corpus gives fewer than ``needed`` blocks (e.g. smaller than one batch)."""
    if blocks.shape[0] < needed:
        raise CorpusError(f"{what} corpus {describe_source(source)} gives only {blocks.shape[0]} block(s) of "
                          f"{blocks.shape[1]} tokens, fewer than one batch needs ({needed}); use more text, "
                          f"a smaller batch_size or seq_len")
    return blocks


def lm_batch(blocks: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch of full blocks: every position is real text, so the attention mask is all ones."""
    return {"input_ids": blocks, "attention_mask": torch.ones_like(blocks)}
