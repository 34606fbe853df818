"""Distillation losses: the vocabulary KL of GLMD stage 1 (and 2a) and the soft cross-entropy of stage 2b.

The stage-1 loss (Tan et al. 2023, eq. 1) at one position is

    T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )  summed over the (kept) vocabulary,

averaged over the *non-padding* positions only (``attention_mask`` == 1; padding must not dilute the
mean, and SmolLM2's pad id equals its eos id, so masks never come from the ids).

Memory. A naive implementation holds, for the whole batch, the teacher's logits, its softmax and
log-softmax, the student's log-softmax and its gradient: five ``batch x length x vocabulary`` float32
tensors. Here the loss is computed in chunks of positions by a custom autograd function that also
computes the gradient chunk by chunk in the forward pass (the gradient of ``T^2 KL`` with respect to the
student's logits is simply ``T * (p_s - p_t)``). Given the student's *hidden states* and its output layer
(:func:`distill_loss`), even the student's full logits never exist: each chunk's logits are made,
used for the loss, turned into the gradient of the hidden states and of the output layer, and freed.
The output-layer matmuls are the same three a normal forward+backward does, so nothing is recomputed.

This module is the math only. The teacher's side of the loss is a ``teacher_fn(slice) -> logits`` over the
student's vocabulary; :mod:`glmd_lib.distill.teacher` makes them (the live teacher, its cached hidden states,
a cached top-k).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

TeacherFn = Callable[[slice], torch.Tensor]  # flattened positions -> teacher logits over the student's vocabulary


class LossError(ValueError):
    """Shapes or options of a loss call do not fit together."""


# --------------------------------------------------------------------------------------------
# one chunk of positions
# --------------------------------------------------------------------------------------------

def _teacher_log_probs(t: torch.Tensor, temperature: float, topk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(t/T) (optionally truncated to the top-k entries, renormalised) and a row-validity mask.

    ``t`` may hold ``-inf`` for tokens the teacher gives no mass (a sparse cache); rows without a single
    finite entry are invalid (they are excluded from the mean).
    """
    z = t.float() / temperature
    if topk is not None and topk < z.shape[-1]:
        vals, idx = z.topk(topk, dim=-1)
        z = torch.full_like(z, -math.inf).scatter_(-1, idx, vals)
    valid = torch.isfinite(z).any(-1)
    if not bool(valid.all()):
        z = torch.where(valid[:, None], z, torch.zeros_like(z))
    return torch.log_softmax(z, -1), valid


def chunk_terms(s: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None,
                temperature: float, topk: int | None, need_grad: bool):
    """KL sum, CE sum (and their gradients w.r.t. ``s``) of one chunk.

    ``s`` [c, K] student logits, ``t`` [c, K] teacher logits over the same K tokens, ``weight`` [c] (1 for
    positions that count), ``labels`` [c] next-token ids in student space (-100: none) or ``None``.
    Returns ``(kl_sum, n_valid, ce_sum, g_kl, g_ce)`` where ``kl_sum`` already carries the ``T^2`` factor
    and ``g_kl``/``g_ce`` are per-position gradients of the sums (``None`` when ``need_grad`` is false).
    """
    s = s.float()
    T = float(temperature)
    log_pt, valid = _teacher_log_probs(t, T, topk)
    w = weight.float() * valid.float()
    p_t = log_pt.exp()
    log_ps = torch.log_softmax(s / T, -1)
    # p_t * (log p_t - log p_s), with 0 * log 0 = 0 for tokens the teacher gives no mass
    log_pt_safe = torch.where(p_t > 0, log_pt, torch.zeros_like(log_pt))
    kl_pos = (p_t * (log_pt_safe - log_ps)).sum(-1)
    kl_sum = (T * T) * (kl_pos * w).sum()
    g_kl = (T * (log_ps.exp() - p_t)) * w[:, None] if need_grad else None
    ce_sum = s.new_zeros(())
    g_ce = None
    if labels is not None:
        has = labels >= 0
        if bool(has.any()):
            lse = torch.logsumexp(s, -1)
            picked = s.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1)
            ce_sum = ((lse - picked) * has.float()).sum()
            if need_grad:
                g_ce = torch.softmax(s, -1)
                g_ce[has, labels[has]] -= 1.0
                g_ce = g_ce * has.float()[:, None]
    return kl_sum, w.sum(), ce_sum, g_kl, g_ce


class _GradBuffers:
    """Gradients of the loss w.r.t. the hidden states, the output weight and its bias, filled chunk by chunk."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None):
        self.weight = weight
        self.bufs = [torch.zeros_like(hidden), None if weight is None else torch.zeros_like(weight),
                     None if bias is None else torch.zeros_like(bias)]

    def push(self, g: torch.Tensor, h: torch.Tensor, sl: slice) -> None:
        """A chunk's logit gradient goes straight through the output layer (then the chunk is freed)."""
        g = g.to(h.dtype)
        g_hidden, g_weight, g_bias = self.bufs
        if self.weight is None:
            g_hidden[sl] += g
            return
        g_hidden[sl] += g @ self.weight.to(h.dtype)
        g_weight += (g.t() @ h).to(g_weight.dtype)
        if g_bias is not None:
            g_bias += g.sum(0).to(g_bias.dtype)

    def finish(self, count: torch.Tensor, ce: "_GradBuffers | None") -> list[torch.Tensor | None]:
        """The KL mean's denominator (positions with teacher mass) is known only at the end: scale once, add CE."""
        for i, b in enumerate(self.bufs):
            if b is not None:
                b /= count.to(b.dtype)
                if ce is not None:
                    b += ce.bufs[i]
        return self.bufs


def _accumulate(hidden, weight, bias, teacher_fn, pos_weight, labels, temperature, topk, chunk,
                g_kl: _GradBuffers | None, g_ce: _GradBuffers | None, ce_scale: float):
    """Sum the loss terms over chunks of positions, pushing each chunk's gradients into the buffers.

    Returns ``(kl_total, ce_total, count)`` (fp32 scalars); chunks without a counted position are skipped.
    """
    need_grad = g_kl is not None
    kl_total = hidden.new_zeros((), dtype=torch.float32)
    ce_total = hidden.new_zeros((), dtype=torch.float32)
    count = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        sl = slice(start, min(start + chunk, hidden.shape[0]))
        w = pos_weight[sl]
        lab = labels[sl] if labels is not None else None
        if not bool((w > 0).any()) and (lab is None or not bool((lab >= 0).any())):
            continue
        h = hidden[sl]
        s = h if weight is None else F.linear(h, weight.to(h.dtype), None if bias is None else bias.to(h.dtype))
        with torch.no_grad():
            t = teacher_fn(sl)
        if t.shape != s.shape:
            raise LossError(f"teacher logits {tuple(t.shape)} and student logits {tuple(s.shape)} of a chunk "
                            f"differ; restrict the teacher to the student's vocabulary (vocab_map)")
        kl_sum, n_valid, ce_sum, gk, gc = chunk_terms(s, t, w, lab, temperature, topk, need_grad)
        kl_total += kl_sum
        ce_total += ce_sum
        count += n_valid
        if need_grad:
            g_kl.push(gk, h, sl)
            if g_ce is not None and gc is not None:
                g_ce.push(gc * ce_scale, h, sl)
        del s, t, gk, gc
    return kl_total, ce_total, count


class _ChunkedDistill(torch.autograd.Function):
    """Loss and gradients computed chunk by chunk over positions (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_fn, pos_weight, labels, temperature, topk, chunk, ce_weight):
        need = ctx.needs_input_grad
        need_grad = bool(need[0] or need[1] or need[2])
        n_ce = int((labels >= 0).sum()) if labels is not None else 0
        g_kl = _GradBuffers(hidden, weight, bias) if need_grad else None
        g_ce = _GradBuffers(hidden, weight, bias) if (need_grad and ce_weight) else None
        kl_total, ce_total, count = _accumulate(hidden, weight, bias, teacher_fn, pos_weight, labels, temperature,
                                                topk, chunk, g_kl, g_ce, ce_weight / max(n_ce, 1))
        count = count.clamp(min=1.0)
        kl = kl_total / count
        ce = ce_total / max(n_ce, 1)
        loss = kl + ce_weight * ce if ce_weight else kl.clone()
        if need_grad:
            ctx.save_for_backward(*g_kl.finish(count, g_ce))
        ctx.need_grad = need_grad
        logs = torch.stack([kl, ce, count]).detach()
        ctx.mark_non_differentiable(logs)
        return loss, logs

    @staticmethod
    def backward(ctx, g_loss, g_logs):
        if not ctx.need_grad:
            return (None,) * 10
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        scale = lambda x: None if x is None else x * g_loss.to(x.dtype)  # noqa: E731
        return scale(g_hidden), scale(g_weight), scale(g_bias), None, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def distill_loss(student_hidden: torch.Tensor, student_head: torch.nn.Module | None, teacher_fn: TeacherFn,
                 loss_mask: torch.Tensor, temperature: float, labels: torch.Tensor | None = None,
                 ce_weight: float = 0.0, topk: int | None = None, chunk: int = 1024
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Chunked ``T^2 KL`` (+ optional student cross-entropy) from the student's hidden states.

    ``student_hidden`` [..., D] (the input of the output layer) with ``student_head`` an ``nn.Linear``
    (or ``None`` when ``student_hidden`` are already logits). ``teacher_fn(slice)`` returns the teacher's
    logits over the student's vocabulary for those flattened positions. ``loss_mask`` [...] says which
    positions count (attention mask, or masked positions for masked LMs). ``labels`` [...] (student ids,
    -100 = none) give the logged cross-entropy; it is added to the loss only when ``ce_weight`` > 0 (a
    baseline, not GLMD). Returns ``(loss, {"kl": ..., "ce": ..., "count": ...})`` with detached logs; ``count``
    is the KL mean's denominator (counted positions with teacher mass), by which the trainer weighs
    micro-batches (``loss_count``), so a step's loss is the mean over all its tokens.
    """
    if chunk < 1:
        raise LossError(f"chunk must be >= 1, got {chunk}")
    if temperature <= 0:
        raise LossError(f"temperature must be > 0, got {temperature}")
    if topk is not None and topk < 1:
        raise LossError(f"topk must be >= 1 or None, got {topk}")
    if loss_mask.shape != student_hidden.shape[:-1]:
        raise LossError(f"mask shape {tuple(loss_mask.shape)} does not match the positions "
                        f"{tuple(student_hidden.shape[:-1])} of the student's outputs")
    hidden = student_hidden.reshape(-1, student_hidden.shape[-1])
    pos_weight = loss_mask.reshape(-1).to(torch.float32)
    lab = labels.reshape(-1) if labels is not None else None
    if ce_weight and lab is None:
        raise LossError("ce_weight > 0 needs labels")
    weight = bias = None
    if student_head is not None:
        if not isinstance(student_head, torch.nn.Linear):
            raise LossError(f"student_head must be an nn.Linear, got {type(student_head).__name__}; "
                            f"pass logits with student_head=None instead")
        weight, bias = student_head.weight, student_head.bias
    loss, logs = _ChunkedDistill.apply(hidden, weight, bias, teacher_fn, pos_weight, lab, float(temperature),
                                       topk, int(chunk), float(ce_weight))
    return loss, {"kl": logs[0], "ce": logs[1], "count": logs[2]}


def _restrictor(teacher_vocab: int, student_vocab: int, vocab_map: Any, temperature: float
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Teacher logits -> the target over the student's rows: ``vocab_map.target_logits`` (its ``pruned_mass``)."""
    if teacher_vocab == student_vocab and (vocab_map is None or vocab_map.num_kept == student_vocab):
        return lambda t: t
    if vocab_map is None:
        raise LossError(f"teacher logits have {teacher_vocab} entries but the student has {student_vocab}: "
                        f"pass the VocabMap that maps between them")
    if vocab_map.vocab_size != teacher_vocab or vocab_map.num_kept != student_vocab:
        raise LossError(f"the VocabMap maps {vocab_map.vocab_size} teacher tokens to {vocab_map.num_kept} kept, "
                        f"but the teacher has {teacher_vocab} outputs and the student {student_vocab}")
    return lambda t: vocab_map.target_logits(t, temperature)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, attention_mask: torch.Tensor | None,
               temperature: float, vocab_map: Any = None, topk: int | None = None, chunk: int = 1024
               ) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` summed over the vocabulary, mean over non-padding positions.

    ``student_logits`` [..., K], ``teacher_logits`` [..., V]; when K < V the teacher's logits are restricted
    to the student's rows by ``vocab_map`` (chunk by chunk; :meth:`~glmd_lib.vocab.vocab_map.VocabMap.target_logits`:
    kept ids renormalised, or pruned mass added to substitutes). ``attention_mask`` [...] (None: every position).
    ``topk`` truncates the teacher's distribution to its k most likely kept tokens (renormalised).
    """
    if student_logits.shape[:-1] != teacher_logits.shape[:-1]:
        raise LossError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                        f"{tuple(teacher_logits.shape)} cover different positions")
    restrict = _restrictor(teacher_logits.shape[-1], student_logits.shape[-1], vocab_map, temperature)
    t_flat = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    if attention_mask is None:
        attention_mask = torch.ones(student_logits.shape[:-1], dtype=torch.long, device=student_logits.device)
    loss, _ = distill_loss(student_logits, None, lambda sl: restrict(t_flat[sl]), attention_mask, temperature,
                           topk=topk, chunk=chunk)
    return loss


def distill_kl_reference(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                         attention_mask: torch.Tensor | None, temperature: float, vocab_map: Any = None,
                         topk: int | None = None) -> torch.Tensor:
    """The naive, unchunked loss with plain autograd (for tests and the memory benchmark)."""
    t = _restrictor(teacher_logits.shape[-1], student_logits.shape[-1], vocab_map, temperature)(
        teacher_logits.detach()).float()
    T = float(temperature)
    z = t / T
    if topk is not None and topk < z.shape[-1]:
        vals, idx = z.topk(topk, dim=-1)
        z = torch.full_like(z, -math.inf).scatter(-1, idx, vals)
    log_pt = torch.log_softmax(z, -1)
    p_t = log_pt.exp()
    log_ps = torch.log_softmax(student_logits.float() / T, -1)
    kl = (p_t * (torch.where(p_t > 0, log_pt, torch.zeros_like(log_pt)) - log_ps)).sum(-1)
    m = (torch.ones_like(kl) if attention_mask is None else attention_mask.to(kl.dtype))
    return T * T * (kl * m).sum() / m.sum().clamp(min=1)


def soft_cross_entropy(student_scores: torch.Tensor, teacher_scores: torch.Tensor, temperature: float = 1.0
                       ) -> torch.Tensor:
    """``-sum softmax(t/T) * log_softmax(s/T)`` over the last dim, mean over the rest (stage 2b, T = 1).

    Scores are per-example class (or answer-candidate) scores, e.g. ``[batch, n_choices]``; entries set to
    ``-inf`` in both (padding of a variable number of candidates) are ignored.
    """
    if student_scores.shape != teacher_scores.shape:
        raise LossError(f"student scores {tuple(student_scores.shape)} and teacher scores "
                        f"{tuple(teacher_scores.shape)} differ")
    T = float(temperature)
    p_t = torch.softmax(teacher_scores.detach().float() / T, -1)
    log_ps = torch.log_softmax(student_scores.float() / T, -1)
    terms = torch.where(p_t > 0, p_t * log_ps, torch.zeros_like(log_ps))
    return -terms.sum(-1).mean()


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_token_id: int, vocab_size: int,
                probability: float, generator: torch.Generator | None = None,
                special_ids: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking (80% [MASK], 10% random token, 10% unchanged) of non-padding, non-special positions.

    Returns ``(masked_ids, selected)``; the same ``masked_ids`` go to teacher and student.
    """
    can = attention_mask.bool()
    for s in special_ids:
        can &= input_ids != s
    r = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    selected = (r < probability) & can
    r2 = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    rand_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    out = input_ids.clone()
    out[selected & (r2 < 0.8)] = mask_token_id
    swap = selected & (r2 >= 0.8) & (r2 < 0.9)
    out[swap] = rand_ids[swap]
    return out, selected
