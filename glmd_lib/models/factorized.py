"""A student with a *trained* ALBERT-style factorised embedding (``Stage1Config.embedding_dim = E``).

The vocabulary stage only counts the alternative to pruning the vocabulary (:mod:`glmd_lib.vocab.factorized`);
the comparison of issue #13 (methods ``glmd+al`` and ``dim-reduction``) trains it. The input side is the
``K x E`` table followed by an ``E -> hidden`` projection (:class:`~glmd_lib.vocab.factorized.FactorizedEmbedding`);
the output side (:class:`FactorizedHead`) projects ``hidden -> E`` and scores against the *same* table, so the
embedding costs ``K*E + 2*E*hidden`` parameters, the vocabulary stage's ``student_parameters_factorized_embedding``.

The table is registered once (in the input embedding); the head keeps an unregistered reference, so
``save_pretrained`` writes it once and the parameter count counts it once. transformers cannot rebuild this
structure from a config alone: the config carries ``glmd_embedding_dim`` and :func:`load_factorized` rebuilds
the plain model, factorises it and loads the saved tensors strictly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glmd_lib.models.teacher import model_class
from glmd_lib.vocab.factorized import FactorizedEmbedding

CONFIG_KEY = "glmd_embedding_dim"  # in the student's config.json: E of a factorised student


class FactorizedHead(nn.Module):
    """``hidden -> E`` (``down``), then scores against the shared ``K x E`` table of the input embedding."""

    def __init__(self, embedding: FactorizedEmbedding):
        super().__init__()
        H, E = embedding.project.out_features, embedding.embed.embedding_dim
        self.down = nn.Linear(H, E, bias=False, device=embedding.embed.weight.device,
                              dtype=embedding.embed.weight.dtype)
        self._shared = [embedding]  # a list, not a submodule: the table stays registered (and saved) once

    @property
    def table(self) -> nn.Parameter:
        return self._shared[0].embed.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.down(hidden), self.table)

    def scores(self) -> nn.Linear:
        """An ``nn.Linear`` ``E -> K`` whose weight *is* the shared table: the chunked loss
        (:func:`glmd_lib.distill.losses.distill_loss`) then takes ``down(hidden)`` as its hidden states."""
        lin = nn.Linear(self.table.shape[1], self.table.shape[0], bias=False, device="meta")
        lin.weight = self.table
        return lin


def embedding_dim(model: nn.Module) -> int | None:
    """E of a factorised student (None: a plain embedding)."""
    return getattr(model.config, CONFIG_KEY, None)


def factorize(model: nn.Module, dim: int, init: str = "random") -> nn.Module:
    """In place: the model's embedding becomes ``K x E`` + ``E -> hidden`` and its output layer the shared
    :class:`FactorizedHead`. ``init="svd"`` starts from the best rank-E approximation of the current embedding
    (a teacher-initialised student keeps what it copied), ``"random"`` from scratch (ALBERT)."""
    weight = model.get_input_embeddings().weight
    if not 0 < dim < weight.shape[1]:
        raise ValueError(f"embedding_dim must be in (0, hidden={weight.shape[1]}), got {dim}")
    emb = (FactorizedEmbedding.from_weight(weight.detach(), dim) if init == "svd"
           else _random_embedding(weight, dim, float(getattr(model.config, "initializer_range", 0.02))))
    model.set_input_embeddings(emb)
    head = FactorizedHead(emb)
    with torch.no_grad():  # the transpose of the input projection: exact inverse when it is orthonormal
        head.down.weight.copy_(emb.project.weight.T)
    model.set_output_embeddings(head)
    model.config.tie_word_embeddings = False  # the sharing is the head's, not transformers' tying
    setattr(model.config, CONFIG_KEY, int(dim))
    return model


def _random_embedding(weight: torch.Tensor, dim: int, std: float) -> FactorizedEmbedding:
    """A fresh ``K x E`` table and ``E -> H`` projection, drawn as the model's own weights are (normal, ``std``)."""
    emb = FactorizedEmbedding(weight.shape[0], dim, weight.shape[1]).to(weight.device, weight.dtype)
    with torch.no_grad():
        for p in (emb.embed.weight, emb.project.weight):
            p.normal_(0.0, std)
    return emb


def load_factorized(path: Path, config: Any, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild a factorised student saved by ``save_pretrained`` in ``path`` (``config`` read from there)."""
    from safetensors.torch import load_file

    model = factorize(model_class(config).from_config(config), int(getattr(config, CONFIG_KEY)))
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    model.load_state_dict(state, strict=True)
    return model.to(dtype)
