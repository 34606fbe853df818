"""Intermediate-layer distillation losses of the baselines GLMD is compared with (issue #13): pure math.

GLMD matches only the output distributions; the paper's question is whether intermediate layers help.
Two classic answers, as functions of tensors a forward pass with ``output_hidden_states`` /
``output_attentions`` gives (the student and teacher runs themselves live in
:mod:`glmd_lib.distill.feature_objective`):

* TinyBERT (Jiao et al. 2020): the MSE between the student's hidden states, sent through a learned linear
  projection to the teacher's width, and the teacher's, on a uniform layer mapping (plus the embeddings),
  and the KL between attention distributions of mapped layers where the head counts agree;
* MiniLM (Wang et al. 2020): on the last layer only, the KL between attention distributions per head and
  between *value relations* ``softmax(V_a V_a^T / sqrt(d_r))`` per relation head, the values of both models
  re-split into the same number of relation heads, so the hidden sizes may differ and nothing is projected.

Means are over counted query positions (``mask``), heads and batch; keys that are padding, or later than the
query in a causal model, carry no probability (as in the attention itself).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


class FeatureLossError(ValueError):
    """Shapes of the intermediate-layer tensors do not fit together."""


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer ``i`` (0-based) -> teacher layer ``round((i + 1) * Lt / Ls) - 1`` (halves rounded up):
    the student's last layer meets the teacher's last, the others spread evenly below it (TinyBERT's map)."""
    if student_layers < 1 or teacher_layers < 1:
        raise FeatureLossError(f"layer counts must be >= 1, got {student_layers} and {teacher_layers}")
    return [int(math.floor((i + 1) * teacher_layers / student_layers + 0.5)) - 1 for i in range(student_layers)]


def _query_weights(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.float32)


def _masked_mean_rows(per_row: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``per_row`` [B, H, T] (one value per head and query) -> mean over heads, batch and counted queries."""
    w = _query_weights(mask)[:, None, :].expand_as(per_row)
    return (per_row * w).sum() / w.sum().clamp(min=1.0)


def hidden_mse(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
               project: Callable[[int, torch.Tensor], torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Mean over the pairs of ``MSE(project(k, s_k), t_k)`` (elementwise mean over the teacher's width and the
    counted positions). ``project(k, s)`` maps pair ``k``'s student states [B, T, Hs] to [B, T, Ht]."""
    if len(student_states) != len(teacher_states) or not student_states:
        raise FeatureLossError(f"{len(student_states)} student and {len(teacher_states)} teacher states to pair")
    w = _query_weights(mask)
    total = torch.zeros((), device=w.device)
    for k, (s, t) in enumerate(zip(student_states, teacher_states)):
        p = project(k, s.float())
        if p.shape != t.shape:
            raise FeatureLossError(f"pair {k}: projected student states {tuple(p.shape)} vs teacher {tuple(t.shape)}")
        per_pos = ((p - t.float()) ** 2).mean(-1)
        total = total + (per_pos * w).sum() / w.sum().clamp(min=1.0)
    return total / len(student_states)


def distribution_kl(log_p_teacher: torch.Tensor, log_p_student: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KL(p_t || p_s)`` over the last axis of [B, H, T, T] log-probabilities, mean over heads, batch and
    counted queries; keys where the teacher has no probability (``-inf``) add nothing."""
    if log_p_teacher.shape != log_p_student.shape:
        raise FeatureLossError(f"teacher {tuple(log_p_teacher.shape)} and student {tuple(log_p_student.shape)} "
                               f"distributions differ in shape")
    p_t = log_p_teacher.exp()
    has = p_t > 0
    zero = torch.zeros_like(p_t)
    terms = torch.where(has, p_t * (log_p_teacher - torch.where(has, log_p_student, zero)), zero)
    return _masked_mean_rows(terms.sum(-1), mask)


def attention_kl(student_probs: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor,
                 eps: float = 1e-12) -> torch.Tensor:
    """KL between attention distributions [B, H, T, T] (probabilities, as ``output_attentions`` gives them)."""
    return distribution_kl(teacher_probs.float().log(), student_probs.float().clamp(min=eps).log(), mask)


def key_mask(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, T, T] booleans: may query i look at key j (key not padding; ``j <= i`` when causal)."""
    T = mask.shape[-1]
    keys = mask.bool()[:, None, :].expand(-1, T, -1)
    if causal:
        keys = keys & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()[None]
    return keys


def relation_log_probs(x: torch.Tensor, heads: int, allowed: torch.Tensor) -> torch.Tensor:
    """``log_softmax(x_a x_a^T / sqrt(d_r))`` per relation head: ``x`` [B, T, D] re-split into ``heads``
    slices of ``d_r = D / heads``; keys not ``allowed`` ([B, T, T]) are ``-inf``. Returns [B, heads, T, T]."""
    B, T, D = x.shape
    if D % heads:
        raise FeatureLossError(f"width {D} is not divisible into {heads} relation heads")
    xa = x.float().reshape(B, T, heads, D // heads).transpose(1, 2)
    scores = xa @ xa.transpose(-1, -2) / math.sqrt(D // heads)
    scores = scores.masked_fill(~allowed[:, None], -math.inf)
    out = torch.log_softmax(scores, -1)
    return torch.where(allowed[:, None], out, torch.full_like(out, -math.inf))


def value_relation_kl(student_values: torch.Tensor, teacher_values: torch.Tensor, heads: int, mask: torch.Tensor,
                      causal: bool) -> torch.Tensor:
    """MiniLM's value-relation transfer: KL between the teacher's and the student's value relations, both
    re-split into ``heads`` relation heads (the widths may differ)."""
    allowed = key_mask(mask, causal)
    return distribution_kl(relation_log_probs(teacher_values, heads, allowed),
                           relation_log_probs(student_values, heads, allowed), mask)


def relation_heads(student_width: int, teacher_width: int, wanted: int) -> int:
    """The largest relation-head count <= ``wanted`` dividing both value widths (1 at worst)."""
    return next(h for h in range(max(1, wanted), 0, -1) if student_width % h == 0 and teacher_width % h == 0)
