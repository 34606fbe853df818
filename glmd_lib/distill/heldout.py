"""Stage 1's held-out evaluation: how close the student's next-word distribution came to the teacher's.

:func:`evaluate` scores a student on held-out blocks against the teacher (KL at T = 1 and at the training T,
top-1 agreement, both perplexities, tokens/s), with 95% intervals from a bootstrap over blocks. Stage 1 calls it
at its end (``metrics.json``); ``benchmarks/stage1_students.py`` calls it to compare students on the same blocks.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from glmd_lib.device import autocast
from glmd_lib.models.teacher import linear_head
from glmd_lib.tasks.intervals import mean_interval
from glmd_lib.vocab.vocab_map import VocabMap


@torch.no_grad()
def evaluate(student: nn.Module, teacher: nn.Module, vocab_map: VocabMap | None, blocks: torch.Tensor,
             batch_size: int, temperature: float, bf16_teacher: bool = False,
             per_block: dict[str, list] | None = None, teacher_hidden: torch.Tensor | None = None
             ) -> dict[str, float]:
    """Held-out KL (T = 1 and the training T), top-1 agreement, both perplexities, both models' tokens/s.

    Agreement and KL are over the student's rows, against the target it is trained on (the map's
    ``pruned_mass``: kept tokens renormalised, or pruned mass added to substitutes). Perplexities:
    the teacher over its full vocabulary; the student over its kept rows with pruned next tokens counted
    as their substitutes (what it can write), so the two are close but not identical measures. Agreement and
    the student's perplexity carry 95% intervals from a bootstrap over the held-out *blocks* (tokens of one
    block are not independent draws): ``valid_top1_agreement_low``/``_high``, ``valid_student_ppl_low``/``_high``.
    Blocks are equally long, so the means of per-block means are the per-token means. ``per_block`` (a dict):
    filled with each block's ``agree`` (share of positions) and ``nll`` (the student's mean next-token loss), for
    paired comparisons of several students on the same blocks. ``teacher_hidden`` [N, L, D]: the teacher's final
    hidden states of the blocks (:func:`glmd_lib.distill.stage1.heldout_hidden`); from the second batch on, its
    logits are its output layer applied to them (the live logits up to fp16 rounding of the hidden state); the
    first batch runs the whole teacher, so ``teacher_tokens_per_s`` is measured on it.
    """
    device = next(student.parameters()).device
    student.eval()
    teacher.eval()
    sums = {"kl": 0.0, "kl_T": 0.0, "t_nll": 0.0}
    blocks_out: dict[str, list] = {"agree": [], "nll": []}
    t_time = s_time = t_tokens = 0.0
    head = linear_head(teacher) if teacher_hidden is not None else None  # (it checks the teacher once per call)
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start: start + batch_size].to(device)
        attn = torch.ones_like(ids)
        live = head is None or start == 0  # the first batch always runs the whole teacher: its speed is measured
        t0 = time.perf_counter()
        with autocast(device, bf16_teacher):
            t_logits = (teacher(input_ids=ids, attention_mask=attn).logits if live else
                        head(teacher_hidden[start: start + batch_size].to(device).float()))
        t_logits = t_logits.float()
        t1 = time.perf_counter()
        s_ids = vocab_map.map_ids(ids) if vocab_map is not None else ids
        s_logits = student(input_ids=s_ids, attention_mask=attn).logits.float()
        t2 = time.perf_counter()
        t_time, s_time, t_tokens = t_time + (t1 - t0) * live, s_time + (t2 - t1), t_tokens + ids.numel() * live
        t_kept = vocab_map.target_logits(t_logits, 1.0) if vocab_map is not None else t_logits
        t_at_T = vocab_map.target_logits(t_logits, temperature) if vocab_map is not None else t_logits
        log_pt = torch.log_softmax(t_kept, -1)
        log_ps = torch.log_softmax(s_logits, -1)
        sums["kl"] += float((log_pt.exp() * (log_pt - log_ps)).sum())
        lpt_T, lps_T = torch.log_softmax(t_at_T / temperature, -1), torch.log_softmax(s_logits / temperature, -1)
        sums["kl_T"] += temperature ** 2 * float((lpt_T.exp() * (lpt_T - lps_T)).sum())
        blocks_out["agree"] += (t_kept.argmax(-1) == s_logits.argmax(-1)).float().mean(-1).tolist()
        blocks_out["nll"] += F.cross_entropy(s_logits[:, :-1].transpose(1, 2), s_ids[:, 1:],
                                             reduction="none").mean(-1).tolist()
        sums["t_nll"] += float(F.cross_entropy(t_logits[:, :-1].reshape(-1, t_logits.shape[-1]),
                                               ids[:, 1:].reshape(-1), reduction="sum"))
    if per_block is not None:
        per_block.update(blocks_out)
    n, nn_ = max(blocks.numel(), 1), max(len(blocks) * (blocks.shape[1] - 1), 1)
    return {"valid_kl": sums["kl"] / n, "valid_kl_at_T": sums["kl_T"] / n,
            **_heldout_intervals(blocks_out), "valid_teacher_ppl": math.exp(sums["t_nll"] / nn_),
            "valid_tokens": blocks.numel(), "valid_blocks": len(blocks),
            "teacher_tokens_per_s": t_tokens / max(t_time, 1e-9), "student_tokens_per_s": n / max(s_time, 1e-9)}


def _heldout_intervals(per_block: dict[str, list]) -> dict[str, float]:
    """Top-1 agreement and the student's perplexity with 95% intervals, resampling held-out blocks."""
    agree, nll = mean_interval(per_block["agree"]), mean_interval(per_block["nll"])
    return {"valid_top1_agreement": agree.value, "valid_top1_agreement_low": agree.low,
            "valid_top1_agreement_high": agree.high, "valid_student_ppl": math.exp(nll.value),
            "valid_student_ppl_low": math.exp(nll.low), "valid_student_ppl_high": math.exp(nll.high)}
