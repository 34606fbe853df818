"""Inference FLOPs per token of a model, counted from its config alone (no weights read, nothing timed).

A forward pass costs, per token (a multiply-add = 2 FLOPs; norms, activations, softmax and biases left out):

* ``body``: 2 x every weight that multiplies the token's activations: the >= 2-D parameters outside the
  embedding tables (a table lookup is free) and outside the output layer. The shapes come from the model built
  from the config on the ``meta`` device, so every family (gated or plain MLP, grouped-query attention, GPT-2's
  ``Conv1D``, a masked LM's head transform) is counted as transformers builds it.
* ``attention``: per layer, q·Kᵀ and the weighted sum of V over ``seq_len`` positions: ``2 x 2 x seq_len x
  heads x head_dim`` (the full context, as Chinchilla counts it; a causal mask halves the average).
* ``output``: the output layer over the model's vocabulary rows, ``2 x rows x width`` (tied or not: the matmul is
  paid either way). A factorised student (``glmd_embedding_dim = E`` in its config,
  :mod:`glmd_lib.models.factorized`) pays ``2 x E x hidden`` for the input projection, ``2 x hidden x E`` for the
  head's down-projection and ``2 x rows x E`` for the scores against the ``rows x E`` table.

So a pruned vocabulary shows up in ``output`` only, and ``seq_len`` in ``attention`` only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from glmd_lib.models.factorized import CONFIG_KEY
from glmd_lib.models.teacher import model_class


def _meta_model(config: Any) -> nn.Module:
    with torch.device("meta"):
        return model_class(config).from_config(config)


def body_params(model: nn.Module) -> int:
    """Weights that multiply a token's activations, output layer excluded (each counted once)."""
    skip = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    out = model.get_output_embeddings()
    skip |= {id(p) for p in out.parameters()} if out is not None else set()
    total = 0
    for p in model.parameters():
        if p.dim() >= 2 and id(p) not in skip:
            skip.add(id(p))
            total += p.numel()
    return total


def attention_flops(config: Any, seq_len: int) -> int:
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return 2 * 2 * int(config.num_hidden_layers) * int(seq_len) * heads * head_dim


def forward_flops(config: Any, seq_len: int) -> dict[str, int]:
    """Per-token forward FLOPs of a model of ``config`` at context ``seq_len``: ``body``, ``attention``, ``output``
    and their ``total`` (module docstring)."""
    if int(seq_len) < 1:
        raise ValueError(f"seq_len must be >= 1 to count attention FLOPs, got {seq_len}")
    model = _meta_model(config)
    body = body_params(model)
    dim = getattr(config, CONFIG_KEY, None)
    if dim:  # the config builds the plain model: the factorised embedding's matmuls are counted here
        rows, hidden = int(config.vocab_size), int(config.hidden_size)
        body += dim * hidden
        output = 2 * (hidden * dim + rows * dim)
    else:
        out = model.get_output_embeddings()
        if out is None:
            raise ValueError(f"{type(model).__name__} has no output layer to count FLOPs of")
        output = 2 * out.weight.numel()
    parts = {"body": 2 * body, "attention": attention_flops(config, seq_len), "output": output}
    return {**parts, "total": sum(parts.values())}


def flops_per_token(model_dir: str | Path, seq_len: int) -> int:
    """:func:`forward_flops` ``total`` of the model saved in ``model_dir`` (its ``config.json``)."""
    from transformers import AutoConfig

    return forward_flops(AutoConfig.from_pretrained(str(model_dir)), seq_len)["total"]
