"""Notebook 02's token explorer: what the kept vocabulary does to a text the reader types.

:func:`token_view` lists a text's tokens, whether each is kept, and the kept token a pruned one becomes
(with its embedding similarity where ``substitutes.csv`` recorded it: only the most frequent pruned tokens
are scored there); :func:`student_reading` is the text as the student reads it. :func:`token_explorer`
puts both behind a text box (see :mod:`glmd_lib.explore` for how it degrades headless).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from glmd_lib.explore import explorer
from glmd_lib.vocab.vocab_map import VocabMap


def recorded_similarity(substitutes_csv: str | Path) -> dict[int, float]:
    """``{pruned id: cosine to its substitute}`` from notebook 02's ``substitutes.csv``."""
    table = pd.read_csv(substitutes_csv)
    return dict(zip(table["pruned id"].astype(int), table["cosine"].astype(float)))


def _ids(text: str, tokenizer: Any) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


def token_view(text: str, tokenizer: Any, vocab_map: VocabMap,
               similarity: Mapping[int, float] | None = None) -> pd.DataFrame:
    """One row per token of ``text``: the token, its id, whether it is kept and, for a pruned one, its
    substitute and (where ``similarity`` has it) the cosine between the two embeddings."""
    ids = _ids(text, tokenizer)
    kept = vocab_map.is_kept(ids).tolist()
    subs = vocab_map.substitutes[ids].tolist()
    similarity = similarity or {}
    rows = [{"token": repr(tokenizer.decode([i])), "id": i, "kept": k,
             "substitute": "" if k else repr(tokenizer.decode([s])), "substitute id": None if k else s,
             "cosine": None if k else similarity.get(i)}
            for i, k, s in zip(ids.tolist(), kept, subs)]
    cols = ["token", "id", "kept", "substitute", "substitute id", "cosine"]
    return pd.DataFrame(rows, columns=cols).astype({"substitute id": "Int64", "cosine": "Float64"})


def student_reading(text: str, tokenizer: Any, vocab_map: VocabMap) -> str:
    """``text`` as the student reads it: every pruned token replaced by its substitute."""
    return tokenizer.decode(vocab_map.substitutes[_ids(text, tokenizer)].tolist())


def _render(text: str, tokenizer: Any, vocab_map: VocabMap, similarity: Mapping[int, float] | None) -> list[Any]:
    view = token_view(text, tokenizer, vocab_map, similarity)
    pruned = int((~view["kept"]).sum()) if len(view) else 0
    return [f"{len(view)} tokens, {pruned} pruned. The student reads: <code>"
            f"{student_reading(text, tokenizer, vocab_map)!r}</code>", view]


def token_explorer(tokenizer: Any, vocab_map: VocabMap, example: str,
                   similarity: Mapping[int, float] | None = None):
    """A text box: type a word or a sentence, see its tokens kept or pruned and what the student reads.
    Headless, the table of ``example``."""
    import ipywidgets as widgets

    box = widgets.Text(value=example, description="text", continuous_update=False,
                       layout=widgets.Layout(width="90%"))
    return explorer([box], lambda text: _render(text, tokenizer, vocab_map, similarity),
                    _render(example, tokenizer, vocab_map, similarity))
