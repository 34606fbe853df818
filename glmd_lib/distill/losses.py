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
import os
from typing import Any, Callable

import torch
import torch.nn.functional as F

from glmd_lib.device import compile_problem, matmul_dtype

TeacherFn = Callable[[slice], torch.Tensor]  # flattened positions -> teacher logits over the student's vocabulary


class LossError(ValueError):
    """Shapes or options of a loss call do not fit together."""


# --------------------------------------------------------------------------------------------
# one chunk of positions, in blocks of rows
# --------------------------------------------------------------------------------------------

ROWS = 16  # rows the eager kernel handles at once: 16 x 49,152 fp32 values are 3 MB, so its passes stay in cache
_FLOOR = -1e30  # teacher logits of -inf (no mass: a sparse cache, top-k) become this: exp() is 0, 0 * it is 0
KERNELS = ("auto", "compile", "eager")
# "auto" compiles only where it pays: a C++ compiler is present and one loss call covers at least this many
# (position, token) entries (the demo's 1,024 positions x 24,576 kept rows; tests and the smoke profile stay eager)
COMPILE_MIN_ENTRIES = 1 << 24


def _ce_value(s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The student's cross-entropy sum over rows with a label (-100: none): logged at every step."""
    sf = s.float()
    lse = torch.logsumexp(sf, -1)
    return ((lse - sf.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1)) * (labels >= 0).float()).sum()


def _kl_rows(s: torch.Tensor, t: torch.Tensor, w: torch.Tensor, labels: torch.Tensor | None, T: float):
    """``(T^2 * sum_rows w * KL, sum of w over rows with teacher mass, T * (q - p) * w, CE sum)`` of rows.

    ``KL = sum p_t (a - b) - lse_a + lse_b`` with ``a = t/T``, ``b = s/T``: two ``exp`` per entry (the costly
    part) and no log-softmax kept. ``T * (q - p)`` is the gradient of ``T^2 KL`` w.r.t. ``s`` (returned in
    ``s``'s dtype). A row whose teacher logits are all ``-inf`` has no mass and does not count. Pure, so
    ``torch.compile`` fuses it, the logged CE included, into loops over each row (:func:`kernel_fns`).
    """
    a = (t.float() / T).clamp(min=_FLOOR)
    b = s.float() / T
    ma, mb = a.amax(-1, keepdim=True), b.amax(-1, keepdim=True)
    ea, eb = torch.exp(a - ma), torch.exp(b - mb)
    sa, sb = ea.sum(-1, keepdim=True), eb.sum(-1, keepdim=True)
    w = w * (ma.squeeze(-1) > _FLOOR).float()
    kl = (ea * (a - b)).sum(-1) / sa.squeeze(-1) - (ma + sa.log()).squeeze(-1) + (mb + sb.log()).squeeze(-1)
    g = ((T * w)[:, None] * (eb / sb - ea / sa)).to(s.dtype)
    ce = _ce_value(s, labels) if labels is not None else kl.new_zeros(())
    return (T * T) * (kl * w).sum(), w.sum(), g, ce


def _ce_grad(s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The gradient of :func:`_ce_value`, ``softmax(s) - onehot`` (only when the CE is trained, ``ce_weight`` > 0)."""
    g = torch.softmax(s.float(), -1).scatter_add(-1, labels.clamp(min=0)[:, None], -torch.ones_like(s[:, :1]).float())
    return (g * (labels >= 0).float()[:, None]).to(s.dtype)


_COMPILED: dict[str, Callable] = {}


def loss_kernel(kernel: str | None, entries: int) -> str:
    """``"compile"`` or ``"eager"`` for a loss call over ``entries`` (position, token) pairs.

    ``kernel``: ``"eager"`` (plain PyTorch, in blocks of :data:`ROWS` rows), ``"compile"`` (``torch.compile``,
    one fused loop nest per row: 4-5x less CPU time than eager for the softmax/KL part, measured on a 2-core
    AVX2 machine; ``benchmarks/bench_peers.py`` prints the step time of both; the first call in a process
    compiles for about 10 s), or ``"auto"``/``None`` (``$GLMD_LOSS_KERNEL`` if set, else compiled for calls of
    at least :data:`COMPILE_MIN_ENTRIES` entries when a C++ compiler is present). Both compute the same formula and are deterministic (a run resumed with the
    same kernel is bitwise exact).
    """
    kernel = kernel or os.environ.get("GLMD_LOSS_KERNEL") or "auto"
    if kernel not in KERNELS:
        raise LossError(f"loss kernel {kernel!r} is not one of {', '.join(KERNELS)} (argument kernel= or "
                        f"$GLMD_LOSS_KERNEL)")
    if kernel == "compile" and compile_problem():
        raise LossError(compile_problem())
    if kernel == "auto":
        return "compile" if entries >= COMPILE_MIN_ENTRIES and compile_problem() is None else "eager"
    return kernel


def kernel_fns(kernel: str) -> tuple[Callable, Callable]:
    """``(kl_rows, ce_grad)`` for ``"eager"`` or ``"compile"`` (compiled once per process with dynamic shapes:
    one kernel for every chunk length and vocabulary size)."""
    if kernel == "eager":
        return _kl_rows, _ce_grad
    if not _COMPILED:
        _COMPILED.update(kl=torch.compile(_kl_rows, dynamic=True), ce=torch.compile(_ce_grad, dynamic=True))
    return _COMPILED["kl"], _COMPILED["ce"]


def chunk_terms(s: torch.Tensor, t: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None,
                temperature: float, topk: int | None, need_grad: bool, ce_grad: bool = False,
                kernel: str = "eager"):
    """KL sum, count, CE sum of one chunk and the gradients of the sums w.r.t. ``s``.

    ``s`` [c, K] student logits (fp32 or bf16), ``t`` [c, K] teacher logits over the same K tokens (``-inf``:
    no mass), ``weight`` [c] (1 for positions that count), ``labels`` [c] next-token ids in student space (-100:
    none) or ``None``. Returns ``(kl_sum, count, ce_sum, g_kl, g_ce)``: fp32 sums (``kl_sum`` carries the ``T^2``
    factor, ``count`` sums the weights of positions where the teacher has mass) and gradients in ``s``'s dtype
    (``g_kl`` ``None`` unless ``need_grad``, ``g_ce`` unless also ``ce_grad``). ``kernel``: ``"eager"`` works in
    blocks of :data:`ROWS` rows (its temporaries stay in cache), ``"compile"`` on the whole chunk.
    """
    if topk is not None and topk < t.shape[-1]:
        vals, idx = t.float().topk(topk, dim=-1)
        t = torch.full(t.shape, -math.inf, device=t.device).scatter_(-1, idx, vals)
    kl_rows, ce_grad_fn = kernel_fns(kernel)
    step = ROWS if kernel == "eager" else s.shape[0]
    w, T = weight.float(), float(temperature)
    sums, grads = torch.zeros(3, device=s.device), []
    for i in range(0, s.shape[0], step):
        sl = slice(i, i + step)
        kl, n, g, ce = kl_rows(s[sl], t[sl], w[sl], None if labels is None else labels[sl], T)
        sums += torch.stack([kl, n, ce])
        grads.append(g)
    g_kl = (grads[0] if len(grads) == 1 else torch.cat(grads)) if need_grad else None
    g_ce = ce_grad_fn(s, labels) if (need_grad and ce_grad and labels is not None) else None
    return sums[0], sums[1], sums[2], g_kl, g_ce


class _GradBuffers:
    """Gradients of the loss w.r.t. the hidden states, the output weight and its bias, filled chunk by chunk."""

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None):
        self.bufs = [torch.zeros_like(hidden), None if weight is None else torch.zeros_like(weight),
                     None if bias is None else torch.zeros_like(bias)]
        self.product = self.widened = None  # the weight-sized buffers of a bf16 step, allocated at its first chunk

    def push(self, g: torch.Tensor, h: torch.Tensor, w: torch.Tensor | None, sl: slice) -> None:
        """A chunk's logit gradient ``g`` goes straight through the output layer ``w`` (same dtype as ``g``
        and ``h``); fp32 products accumulate in place (no temporary of the weight's size)."""
        g_hidden, g_weight, g_bias = self.bufs
        if w is None:
            g_hidden[sl] += g
            return
        if g.dtype == g_hidden.dtype == g_weight.dtype:
            g_hidden[sl].addmm_(g, w)
            g_weight.addmm_(g.t(), h)
        else:
            g_hidden[sl] += g @ w
            # The weight's gradient [V, D] in bf16, widened and added to the fp32 sum through two buffers made once
            # per step: a mixed-dtype ``+=`` makes a fresh fp32 temporary of the weight's size at every chunk, and
            # above glibc's 32 MB mmap threshold each is new pages, whose faults cost several times the add
            # (docs/benchmarks.md, "Peers", 2026-12-03).
            if self.product is None:
                self.product = torch.empty_like(g_weight, dtype=g.dtype)
                self.widened = torch.empty_like(g_weight)
            g_weight += self.widened.copy_(torch.mm(g.t(), h, out=self.product))
        if g_bias is not None:
            g_bias += g.sum(0, dtype=g_bias.dtype)

    def finish(self, count: torch.Tensor, ce: "_GradBuffers | None") -> list[torch.Tensor | None]:
        """The KL mean's denominator (positions with teacher mass) is known only at the end: scale once, add CE."""
        for i, b in enumerate(self.bufs):
            if b is not None:
                b /= count.to(b.dtype)
                if ce is not None:
                    b += ce.bufs[i]
        return self.bufs


def _accumulate(hidden, weight, bias, teacher_fn, pos_weight, labels, temperature, topk, chunk,
                g_kl: _GradBuffers | None, g_ce: _GradBuffers | None, ce_scale: float, kernel: str):
    """Sum the loss terms over chunks of positions, pushing each chunk's gradients into the buffers.

    The output layer's matmuls run in :func:`matmul_dtype` (bf16 under the trainer's autocast: the weight is
    cast once here, not per chunk); everything else in fp32 with autocast off (``teacher_fn`` sets its own).
    Returns ``(kl_total, ce_total, count)`` (fp32 scalars); chunks without a counted position are skipped.
    """
    md = matmul_dtype(hidden)
    w_md = None if weight is None else weight.to(md)
    b_md = None if bias is None else bias.to(md)
    kl_total = ce_total = count = hidden.new_zeros((), dtype=torch.float32)
    with torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], chunk):
            sl = slice(start, min(start + chunk, hidden.shape[0]))
            w, lab = pos_weight[sl], (labels[sl] if labels is not None else None)
            if not bool((w > 0).any()) and (lab is None or not bool((lab >= 0).any())):
                continue
            h = hidden[sl].to(md)
            s = h if weight is None else F.linear(h, w_md, b_md)
            with torch.no_grad():
                t = teacher_fn(sl)
            if t.shape != s.shape:
                raise LossError(f"teacher logits {tuple(t.shape)} and student logits {tuple(s.shape)} of a chunk "
                                f"differ; restrict the teacher to the student's vocabulary (vocab_map)")
            kl_sum, n_valid, ce_sum, gk, gc = chunk_terms(s, t, w, lab, temperature, topk, g_kl is not None,
                                                          g_ce is not None, kernel)
            del s, t
            kl_total, ce_total, count = kl_total + kl_sum, ce_total + ce_sum, count + n_valid
            if gk is not None:
                g_kl.push(gk, h, w_md, sl)
            if gc is not None:
                g_ce.push(gc.mul_(ce_scale), h, w_md, sl)
            del gk, gc
    return kl_total, ce_total, count


class _ChunkedDistill(torch.autograd.Function):
    """Loss and gradients computed chunk by chunk over positions (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_fn, pos_weight, labels, temperature, topk, chunk, ce_weight,
                kernel):
        need = ctx.needs_input_grad
        need_grad = bool(need[0] or need[1] or need[2])
        n_ce = int((labels >= 0).sum()) if labels is not None else 0
        g_kl = _GradBuffers(hidden, weight, bias) if need_grad else None
        g_ce = _GradBuffers(hidden, weight, bias) if (need_grad and ce_weight) else None
        kl_total, ce_total, count = _accumulate(hidden, weight, bias, teacher_fn, pos_weight, labels, temperature,
                                                topk, chunk, g_kl, g_ce, ce_weight / max(n_ce, 1), kernel)
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
            return (None,) * 11
        g_hidden, g_weight, g_bias = ctx.saved_tensors
        scale = lambda x: None if x is None else x * g_loss.to(x.dtype)  # noqa: E731
        return scale(g_hidden), scale(g_weight), scale(g_bias), *(None,) * 8


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def distill_loss(student_hidden: torch.Tensor, student_head: torch.nn.Module | None, teacher_fn: TeacherFn,
                 loss_mask: torch.Tensor, temperature: float, labels: torch.Tensor | None = None,
                 ce_weight: float = 0.0, topk: int | None = None, chunk: int = 1024, kernel: str | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Chunked ``T^2 KL`` (+ optional student cross-entropy) from the student's hidden states.

    ``student_hidden`` [..., D] (the input of the output layer) with ``student_head`` an ``nn.Linear``
    (or ``None`` when ``student_hidden`` are already logits). ``teacher_fn(slice)`` returns the teacher's
    logits over the student's vocabulary for those flattened positions. ``loss_mask`` [...] says which
    positions count (attention mask, or masked positions for masked LMs). ``labels`` [...] (student ids,
    -100 = none) give the logged cross-entropy; it is added to the loss only when ``ce_weight`` > 0 (a
    baseline, not GLMD). Returns ``(loss, {"kl": ..., "ce": ..., "count": ...})`` with detached logs; ``count``
    is the KL mean's denominator (counted positions with teacher mass), by which the trainer weighs
    micro-batches (``loss_count``), so a step's loss is the mean over all its tokens. ``kernel``: how the
    softmax/KL part runs (:func:`loss_kernel`; default ``$GLMD_LOSS_KERNEL`` or ``"auto"``).
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
    n_rows = weight.shape[0] if weight is not None else hidden.shape[-1]
    kern = loss_kernel(kernel, hidden.shape[0] * n_rows)
    loss, logs = _ChunkedDistill.apply(hidden, weight, bias, teacher_fn, pos_weight, lab, float(temperature),
                                       topk, int(chunk), float(ce_weight), kern)
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
               temperature: float, vocab_map: Any = None, topk: int | None = None, chunk: int = 1024,
               kernel: str | None = None) -> torch.Tensor:
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
                           topk=topk, chunk=chunk, kernel=kernel)
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
