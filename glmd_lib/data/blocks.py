"""Corpus -> fixed-length token blocks for language-model distillation.

Stage 1 trains on unlabeled text. Lines are tokenised with the *teacher's* tokenizer, joined with the
end-of-sequence token between documents' lines, and cut into blocks of ``seq_len`` tokens (the usual
"group texts" recipe of causal-LM pre-training): no padding is wasted and every block is full.
Blocks keep teacher ids; the student's compressed ids are derived per batch with the ``VocabMap``.

The default corpus is the shared Gutenberg folder: its ``train-*.txt`` shards for training and its
``valid.txt`` for held-out metrics (:func:`glmd_lib.data.corpus.default_corpus`).
"""
from __future__ import annotations

import itertools
from typing import Any

import torch

from glmd_lib.data.corpus import CorpusError, describe_source, iter_corpus_lines


def token_blocks(source: Any, tokenizer: Any, seq_len: int, max_blocks: int | None = None,
                 max_lines: int | None = None, batch_lines: int = 512, add_bos: bool = False) -> torch.Tensor:
    """Tokenise ``source`` into a ``[n_blocks, seq_len]`` LongTensor of teacher ids.

    Stops as soon as ``max_blocks`` blocks are complete (so a short run reads only what it needs).
    The trailing partial block is dropped. ``add_bos`` starts every block with the BOS token.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
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
            if sep is not None:
                buf.append(sep)
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
