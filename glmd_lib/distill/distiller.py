"""The module stages 1 and 2a train: the student together with its loss.

Why a module and not only a loss function: under several processes the trainer wraps what it trains in
DDP, which synchronises the gradients of work done inside the wrapped module's ``forward``. The chunked loss
uses the student's output layer itself (its weight goes straight into :func:`glmd_lib.distill.losses.distill_loss`),
and TinyBERT's projections are trained too, so the loss has to run inside ``forward``, together with the student.

``loss`` (``Stage1Config.loss``): ``glmd``/``kd`` the chunked vocabulary KL (``kd`` adds ``ce_weight`` x the
student's cross-entropy), ``ce`` the student's next-token cross-entropy alone (no teacher), ``tinybert``/``minilm``
the KL plus ``feature_weight`` x the intermediate-layer terms of ``features``
(:class:`~glmd_lib.distill.feature_objective.FeatureObjective`).

A factorised student (:class:`~glmd_lib.models.factorized.FactorizedHead`) gives the chunked loss ``down(hidden)``
[.., E] and an ``E -> K`` linear layer over the shared table, so its full logits never exist either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from glmd_lib.distill.feature_objective import FeatureObjective, Features, run_features, use_eager_attention
from glmd_lib.distill.losses import LossError, distill_loss
from glmd_lib.models.factorized import FactorizedHead
from glmd_lib.models.teacher import linear_head

LOSSES = ("glmd", "kd", "ce", "tinybert", "minilm")


class Distiller(nn.Module):
    """The trained module: the student plus the loss, so DDP sees every parameter use in ``forward``."""

    def __init__(self, student: nn.Module, temperature: float, topk: int | None, chunk: int, ce_weight: float,
                 loss: str = "glmd", features: FeatureObjective | None = None, feature_weight: float = 1.0):
        super().__init__()
        if loss not in LOSSES:
            raise LossError(f"unknown stage-1 loss {loss!r}; known: {LOSSES}")
        if (features is not None) != (loss in ("tinybert", "minilm")):
            raise LossError(f"loss={loss!r} and the intermediate-layer objective {features!r} do not go together")
        self.student = student
        self.temperature, self.topk, self.chunk, self.ce_weight = temperature, topk, chunk, ce_weight
        self.loss, self.features, self.feature_weight = loss, features, feature_weight
        self.factorized = isinstance(student.get_output_embeddings(), FactorizedHead)
        self.use_hidden = self.factorized or linear_head(student) is not None
        if features is not None and not self.use_hidden:
            raise LossError(f"loss={loss!r} needs a student whose logits are a linear layer of its final hidden states")

    def _outputs(self, input_ids, attention_mask, with_features: bool):
        """``(hidden, head, features)``: what the chunked loss reads (``head`` None: ``hidden`` are logits)."""
        feats = None
        if with_features:
            feats = run_features(self.student, input_ids, attention_mask, self.features.needs_values)
            hidden = feats.last_hidden
        elif self.use_hidden:
            hidden = self.student.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            return self.student(input_ids=input_ids, attention_mask=attention_mask).logits, None, None
        head = self.student.get_output_embeddings()
        if self.factorized:
            return head.down(hidden), head.scores(), feats
        return hidden, head, feats

    def forward(self, input_ids, attention_mask, teacher_fn, loss_mask, labels, teacher_features: Features | None = None):
        hidden, head, feats = self._outputs(input_ids, attention_mask, self.features is not None)
        if self.loss == "ce":
            return _next_token_ce(hidden if head is None else head(hidden), labels)
        loss, logs = distill_loss(hidden, head, teacher_fn, loss_mask, self.temperature, labels=labels,
                                  ce_weight=self.ce_weight, topk=self.topk,
                                  chunk=self.chunk)
        if self.features is not None:
            if teacher_features is None:
                raise LossError(f"loss={self.loss!r} needs the teacher's features (teacher_features=)")
            extra, terms = self.features(feats, teacher_features, loss_mask)
            loss = loss + self.feature_weight * extra
            logs = {**logs, **terms}
        return loss, logs


def _next_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token cross-entropy over labelled positions (-100: none); ``count`` weighs micro-batches."""
    flat = labels.reshape(-1)
    n = (flat >= 0).sum()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=-100,
                         reduction="sum") / n.clamp(min=1)
    return ce, {"kl": torch.zeros((), device=ce.device), "ce": ce.detach(), "count": n.float()}


def stage1_distiller(cfg, student: nn.Module, teacher: nn.Module, kind: str) -> Distiller:
    """Stage 1's module for ``cfg`` (a ``Stage1Config``): the loss it names, with TinyBERT's or MiniLM's
    objective when asked (both models then switched to eager attention, which returns the probabilities)."""
    features = None
    if cfg.loss in ("tinybert", "minilm"):
        for m in (student, teacher):
            use_eager_attention(m)
        features = FeatureObjective(cfg.loss, student.config, teacher.config, causal=kind == "causal")
    return Distiller(student, cfg.temperature, cfg.teacher_topk, cfg.loss_chunk, cfg.ce_weight, cfg.loss,
                     features, cfg.feature_weight)
