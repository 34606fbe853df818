"""The alternative to pruning the vocabulary: ALBERT-style factorised embeddings.

GLMD shrinks the student's embedding and output layer by keeping only the frequent tokens
(:mod:`glmd_lib.vocab.vocab_map`). ALBERT keeps the whole vocabulary and shrinks the *width* instead: a
``V x E`` lookup followed by an ``E -> H`` projection, ``V*E + E*H`` parameters instead of ``V*H``. The
paper argues against it; notebook 02 reports its parameter count beside the pruned one
(:func:`embedding_parameters`), and :func:`factorize_model` builds it, for experiments that compare the two.
"""
from __future__ import annotations

import torch
from torch import nn


class FactorizedEmbedding(nn.Module):
    """``V x E`` lookup followed by an ``E -> H`` projection (ALBERT): ``V*E + E*H`` instead of ``V*H``."""

    def __init__(self, vocab_size: int, embedding_size: int, hidden_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_size)
        self.project = nn.Linear(embedding_size, hidden_size, bias=False)

    @property
    def num_embeddings(self) -> int:
        return self.embed.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.embed(ids))

    @classmethod
    @torch.no_grad()
    def from_weight(cls, weight: torch.Tensor, embedding_size: int) -> "FactorizedEmbedding":
        """Best rank-``E`` approximation of an existing ``[V, H]`` embedding (truncated SVD)."""
        V, H = weight.shape
        U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)
        m = cls(V, embedding_size, H).to(weight.device, weight.dtype)
        m.embed.weight.copy_((U[:, :embedding_size] * S[:embedding_size]).to(weight.dtype))
        m.project.weight.copy_(Vh[:embedding_size].T.to(weight.dtype))
        return m


class FactorizedLMHead(nn.Module):
    """The output side: ``H -> E`` then scores against the (shared) ``V x E`` table."""

    def __init__(self, embedding: FactorizedEmbedding):
        super().__init__()
        self.embedding = embedding
        self.down = nn.Linear(embedding.project.out_features, embedding.embed.embedding_dim, bias=False)
        with torch.no_grad():  # the transpose of the input projection: a good start (exact when orthonormal)
            self.down.weight.copy_(embedding.project.weight.T)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down(hidden) @ self.embedding.embed.weight.T


def factorize_model(model: nn.Module, embedding_size: int, init: str = "svd") -> nn.Module:
    """In place: replace a model's input embedding and output layer by the factorised pair.

    The vocabulary stays complete (``map_ids`` is the identity, logits keep ``V`` entries); only the width
    of the embedding table shrinks. ``init="svd"`` starts from the truncated SVD of the current embedding,
    ``"random"`` from scratch (as ALBERT).
    """
    old = model.get_input_embeddings()
    V, H = old.weight.shape
    if not 0 < embedding_size < H:
        raise ValueError(f"embedding_size must be in (0, hidden={H}), got {embedding_size}")
    if init == "svd":
        emb = FactorizedEmbedding.from_weight(old.weight.detach(), embedding_size)
    else:
        emb = FactorizedEmbedding(V, embedding_size, H).to(old.weight.device, old.weight.dtype)
    model.set_input_embeddings(emb)
    if model.get_output_embeddings() is not None:
        model.set_output_embeddings(FactorizedLMHead(emb).to(old.weight.device, old.weight.dtype))
    model.config.glmd_factorized_embedding = embedding_size
    return model


def embedding_parameters(vocab_size: int, hidden: int, tied: bool = True, embedding_size: int | None = None) -> int:
    """Parameters of the input embedding plus output layer for a vocabulary of ``vocab_size``."""
    if embedding_size is None:
        return vocab_size * hidden * (1 if tied else 2)
    return vocab_size * embedding_size + 2 * embedding_size * hidden  # shared table, in and out projections
