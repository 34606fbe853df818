"""Substitutes for pruned tokens: the most similar kept token by the teacher's input embeddings.

When the student's vocabulary is pruned (:class:`glmd_lib.vocab.vocab_map.VocabMap`), a pruned token that
appears in the input still needs a row. UNK loses what the token meant; the kept token whose teacher
input embedding is closest keeps most of it. :func:`nearest_kept` finds it for every pruned token with
one chunked matrix product per chunk of queries, so the whole vocabulary takes seconds
(``benchmarks/bench_vocab.py``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def embedding_matrix(embeddings: Any) -> torch.Tensor:
    """The ``[V, d]`` input-embedding matrix of a model, an ``nn.Embedding`` or a matrix (detached)."""
    if isinstance(embeddings, nn.Module) and hasattr(embeddings, "get_input_embeddings"):
        embeddings = embeddings.get_input_embeddings().weight
    elif isinstance(embeddings, nn.Embedding):
        embeddings = embeddings.weight
    return torch.as_tensor(embeddings).detach()


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Without it torch emulates bf16
    matrix products, which then run several times *slower* than fp32 (measured: 6x on an AVX2-only CPU)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@torch.no_grad()
def nearest_kept(embeddings: torch.Tensor, query_ids: torch.Tensor, kept_ids: torch.Tensor,
                 method: str = "cosine", chunk: int = 2048, coarse: str = "auto",
                 candidates: int = 16) -> torch.Tensor:
    """For each id in ``query_ids``, the position (in ``kept_ids``) of the most similar kept token.

    Similarity by the teacher's input embeddings: ``dot`` (inner product), ``cosine``, or ``euclidean``
    (smallest distance; ``argmax 2 q.k - |k|^2``, so it is one matrix product too). Queries go in chunks
    of ``chunk`` rows, so memory stays at ``chunk x K`` scores however large the vocabulary.

    ``coarse="bf16"``: score all pairs with a bf16 matrix product (about 3x faster on CPUs with bf16
    units), keep each query's ``candidates`` best, and pick among those with exact fp32 scores. The
    answer differs from the exhaustive fp32 search only if the true best falls outside a bf16 top-16
    (``benchmarks/bench_vocab.py`` counts such cases). ``"fp32"``: exhaustive fp32. ``"auto"``: bf16 on
    a CPU with bf16 units (:func:`native_bf16_cpu`), fp32 elsewhere (GPUs are fast enough in fp32, and CPUs
    without those units emulate bf16 slowly).
    """
    if method not in ("dot", "cosine", "euclidean"):
        raise ValueError(f"unknown similarity {method!r}; use one of dot, cosine, euclidean")
    if coarse == "auto":
        coarse = "bf16" if embeddings.device.type == "cpu" and native_bf16_cpu() else "fp32"
    E = embeddings.float()
    keys = E.index_select(0, kept_ids.to(E.device))
    if method == "cosine":
        keys = torch.nn.functional.normalize(keys, dim=-1)
    sq = (keys * keys).sum(-1) if method == "euclidean" else None
    keys_lp = None
    if coarse == "bf16":
        # euclidean: append -|k|^2/2 to every key and 1 to every query, so one product gives q.k - |k|^2/2
        keys_lp = (torch.cat([keys, -0.5 * sq[:, None]], 1) if sq is not None else keys).to(torch.bfloat16)
    k = min(candidates, len(kept_ids))
    out = torch.empty(len(query_ids), dtype=torch.long)
    for start in range(0, len(query_ids), chunk):
        q = E.index_select(0, query_ids[start:start + chunk].to(E.device))
        if method == "cosine":
            q = torch.nn.functional.normalize(q, dim=-1)
        if keys_lp is None:
            scores = q @ keys.T
            if sq is not None:
                scores = 2 * scores - sq
            best = scores.argmax(-1)
        else:
            q_lp = (torch.cat([q, q.new_ones(len(q), 1)], 1) if sq is not None else q).to(torch.bfloat16)
            cand = (q_lp @ keys_lp.T).topk(k, dim=-1, sorted=False).indices.sort(-1).values  # ties -> lowest id
            exact = torch.einsum("cd,ckd->ck", q, keys[cand])
            if sq is not None:
                exact = 2 * exact - sq[cand]
            best = cand.gather(1, exact.argmax(-1, keepdim=True)).squeeze(1)
        out[start:start + chunk] = best.cpu()
    return out
