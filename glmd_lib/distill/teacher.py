"""Every producer of teacher signal for the distillation losses, in one place.

The vocabulary KL (:func:`glmd_lib.distill.losses.distill_loss`) reads the teacher through a
``teacher_fn(slice) -> logits``: the teacher's logits over the *student's* (kept) vocabulary at those
flattened positions, made chunk by chunk so no ``[B, L, V]`` tensor is needed. Four sources:

* live: :class:`TeacherRunner` runs the frozen teacher's body on the batch and applies only the kept rows
  of its output layer per chunk (stage 1, pass 2a of stage 2);
* cached hidden states (exact): :func:`hidden_teacher_fn`, the same kept rows applied to the final hidden
  states stored by :mod:`glmd_lib.distill.teacher_cache`;
* cached top-k logits (approximate): :func:`sparse_teacher_fn` with the tail fill :func:`tail_fill`, ids
  moved into student space by :func:`student_space`;
* hidden states kept per sequence (pass 2a of stage 2, exact): :class:`TeacherHidden`, shared by the runs of a
  comparison through a file.

The target follows the ``VocabMap``'s ``pruned_mass`` (:meth:`~glmd_lib.vocab.vocab_map.VocabMap.target_logits`):
``renormalize`` needs only the kept logits; ``substitute`` adds each pruned token's probability at the loss
temperature to its substitute's, so it needs *all* ``V`` logits: the live and hidden-cache paths then apply
the teacher's full output layer per chunk (``V / K`` times the head's FLOPs of the kept-rows path: about 2x at
the paper's keep rate 0.5), and the top-k cache cannot give it (:func:`topk_cache_problem`).

:func:`cached_teacher_fn` picks the right one for a cache. Pass 2b of stage 2 needs task scores instead of
logits: :class:`TeacherScores`.

Precision. Each producer runs under :func:`glmd_lib.device.autocast` with the teacher's own setting
(``teacher_bf16``), which *disables* autocast when that setting is off: the loss is called inside the
trainer's autocast region (bf16 on CUDA), and a teacher asked for fp32 must stay fp32 there. A chunk's logits
come back in the dtype the head made them in (bf16 from a bf16 teacher: exactly representable in fp32): the
loss kernel reads them in fp32 itself, so no fp32 copy of the chunk is written (at 256 positions x 49,152 tokens
that copy is a fresh 50 MB allocation, whose page faults cost more than the conversion).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from glmd_lib.artifacts import atomic_path
from glmd_lib.device import autocast
from glmd_lib.distill.losses import LossError, TeacherFn
from glmd_lib.distill.teacher_cache import TeacherCache, TeacherCacheError
from glmd_lib.models.teacher import linear_head
from glmd_lib.superglue.patterns import Cloze
from glmd_lib.tasks.prediction_cache import digest
from glmd_lib.tasks.scoring import task_scores
from glmd_lib.vocab.vocab_map import VocabMap


# --------------------------------------------------------------------------------------------
# live
# --------------------------------------------------------------------------------------------

class TeacherRunner:
    """The frozen teacher, producing per-chunk logits over the student's vocabulary.

    For causal teachers with a plain linear head only the final hidden states are computed for the batch;
    each chunk's logits are made from the *kept rows* of the output layer (K of V columns, fewer FLOPs
    and no ``[B, L, V]`` tensor), or from all rows when the map's ``pruned_mass`` is ``substitute``. Other
    teachers run in full and are turned into the target chunk by chunk. ``head_w``/``head_b`` (the rows used)
    and ``target`` (rows -> the target logits) also serve cached hidden states (:func:`cached_teacher_fn`).
    ``temperature``: the loss's T, which the ``substitute`` target depends on (refused without it).

    With ``bf16`` the teacher's linear weights are kept as frozen bf16 copies (``bf16_weights``, default on):
    autocast would otherwise cast every fp32 weight again at each forward (and the head once per chunk). The
    copies hold exactly the values autocast would make, so the logits are bitwise those of plain autocast; the
    fp32 teacher is not changed (its owner may still use it in fp32). Cost: 2 bytes per linear weight.
    """

    def __init__(self, teacher: nn.Module, vocab_map: Any, bf16: bool, temperature: float | None = None,
                 bf16_weights: bool = True):
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.vocab_map = vocab_map
        self.device = next(teacher.parameters()).device
        self.bf16 = bool(bf16)
        self.target = target_fn(vocab_map, temperature)
        head = linear_head(teacher)
        self.head_w = self.head_b = None
        if head is not None:
            w, b = head.weight.detach(), head.bias
            if _needs_kept_rows_only(vocab_map):
                kept = vocab_map.kept_ids.to(w.device)
                w = w.index_select(0, kept)
                b = None if b is None else b.detach().index_select(0, kept)
                self.target = _as_computed
            self.head_w, self.head_b = (w.to(torch.bfloat16) if self.bf16 and bf16_weights else w), b
        self.module = teacher if self.head_w is None else teacher.base_model
        self.weights = bf16_linear_weights(self.module) if self.bf16 and bf16_weights else {}

    @torch.no_grad()
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        with autocast(self.device, self.bf16):
            return functional_call(self.module, self.weights, (), {"input_ids": input_ids,
                                                                  "attention_mask": attention_mask})

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The final hidden states [B, L, D] in the dtype the head reads them in (a plain linear head only)."""
        return self._forward(input_ids, attention_mask).last_hidden_state.to(self.head_w.dtype)

    def head(self, hidden: torch.Tensor) -> TeacherFn:
        """The chunked target logits made from final hidden states [..., D] (a plain linear head only)."""
        return _head_fn(hidden.reshape(-1, hidden.shape[-1]), self.head_w, self.head_b, self.bf16, self.target)

    def chunks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TeacherFn:
        if self.head_w is not None:
            return self.head(self.hidden(input_ids, attention_mask))
        out = self._forward(input_ids, attention_mask)
        flat = out.logits.reshape(-1, out.logits.shape[-1])
        return lambda sl: self.target(flat[sl])


def bf16_linear_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """bf16 copies of the weights of ``module``'s ``nn.Linear`` layers, by parameter name, for
    ``torch.func.functional_call`` under bf16 autocast (which then casts nothing).

    A linear weight tied to an embedding (an output layer sharing the input embeddings) is left out: the
    embedding lookup must stay fp32, and autocast casts that weight as before. Tied linear weights share a copy.
    """
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    copies: dict[int, torch.Tensor] = {}
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in embeddings:
            if id(m.weight) not in copies:
                copies[id(m.weight)] = m.weight.detach().to(torch.bfloat16)
            out[f"{name}.weight" if name else "weight"] = copies[id(m.weight)]
    return out


def _as_computed(t: torch.Tensor) -> torch.Tensor:
    """The kept logits as the head computed them (the loss reads them in fp32; see the module docstring)."""
    return t


def _needs_kept_rows_only(vocab_map: VocabMap | None) -> bool:
    return vocab_map is not None and not vocab_map.is_identity and vocab_map.pruned_mass == "renormalize"


def target_fn(vocab_map: VocabMap | None, temperature: float | None):
    """Teacher logits over all ``V`` tokens -> the target logits over the student's rows (the map's
    ``pruned_mass``; ``substitute`` needs the loss temperature and computes in fp32; the others keep the dtype)."""
    if vocab_map is None or vocab_map.is_identity:
        return _as_computed
    if vocab_map.pruned_mass == "substitute":
        if temperature is None or temperature <= 0:
            raise LossError(f"pruned_mass='substitute' adds the pruned tokens' probability at the loss temperature: "
                            f"pass the loss's temperature (> 0), got {temperature}")
        return lambda t: vocab_map.target_logits(t.float(), temperature)
    return vocab_map.restrict_logits


def _head_fn(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bf16: bool, target=_as_computed
             ) -> TeacherFn:
    """Chunk logits ``target(h[sl] @ weight.T (+ bias))``: the matmul in fp32, or under bf16 autocast when the
    teacher runs in bf16 (the logits then stay bf16); the ``substitute`` target (a log-sum-exp over groups) in fp32."""
    def fn(sl: slice) -> torch.Tensor:
        with torch.no_grad():
            with autocast(weight.device, bf16):
                logits = F.linear(h[sl].to(weight.device, weight.dtype), weight, bias)
            return target(logits)
    return fn


# --------------------------------------------------------------------------------------------
# from the teacher cache
# --------------------------------------------------------------------------------------------

def hidden_teacher_fn(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      bf16: bool = False, target=_as_computed) -> TeacherFn:
    """A ``teacher_fn`` from cached hidden states [..., D] and the head's rows.

    ``weight`` [K, D] (and ``bias`` [K]) are the teacher's output-layer rows the runner uses and ``target`` its
    rows-to-target function, e.g. ``TeacherRunner(teacher, vocab_map, ...).head_w``/``.head_b``/``.target``.
    Each chunk's logits are made in fp32 (``bf16``: as the live teacher under bf16) from the fp16 hidden
    states: the live teacher's logits up to fp16 rounding of the hidden state.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    if h.shape[-1] != weight.shape[-1]:
        raise TeacherCacheError(f"cached hidden states have {h.shape[-1]} values per position, the teacher's output "
                                f"layer takes {weight.shape[-1]}: the cache belongs to another teacher")
    w = weight.detach() if bf16 else weight.detach().float()  # the runner's bf16 rows stay bf16 (no cast per chunk)
    return _head_fn(h, w, None if bias is None else bias.detach().float(), bf16, target)


def tail_fill(tail: torch.Tensor, temperature: float) -> torch.Tensor:
    """The logit given to every token outside the cached top-k: ``mu + sigma^2 / (2T)`` from ``tail`` [..., 2].

    If the ``n`` tail logits were Gaussian with mean ``mu`` and std ``sigma``, ``sum_tail exp(z/T)`` would be
    ``n * exp(mu/T + sigma^2/(2T^2))`` (log-normal moments): this fill gives the tail that total mass at
    temperature ``T``, spread evenly. The mass estimate becomes exact as ``T -> oo``, but the spread within the
    tail is lost, and at high T that spread is most of the gradient (see :mod:`glmd_lib.distill.teacher_cache`).
    """
    mu, sigma = tail[..., 0].float(), tail[..., 1].float()
    return mu + sigma * sigma / (2.0 * float(temperature))


def sparse_teacher_fn(values: torch.Tensor, ids: torch.Tensor, num_classes: int, tail: torch.Tensor | None = None,
                      temperature: float | None = None) -> TeacherFn:
    """A ``teacher_fn`` from cached top-k teacher logits: ``values``/``ids`` [..., k] in student id space (-1: dropped).

    With ``tail`` [..., 2] (mean, std of the teacher's logits outside its top-k, see
    :mod:`glmd_lib.distill.teacher_cache`) every other kept token gets the fill logit :func:`tail_fill` at
    ``temperature`` (the loss's T; it must be given): a dense teacher whose tail carries the right mass.
    Without ``tail`` every other token gets ``-inf`` (probability 0): plain top-k truncation, a poor
    stand-in at high T. Pruned tokens (id -1) are dropped either way.
    """
    v = values.reshape(-1, values.shape[-1])
    i = ids.reshape(-1, ids.shape[-1])
    if tail is not None:
        if temperature is None or temperature <= 0:
            raise LossError(f"sparse_teacher_fn with tail moments needs the loss temperature (> 0), got {temperature}")
        if tail.shape[:-1] != values.shape[:-1] or tail.shape[-1] != 2:
            raise LossError(f"tail moments {tuple(tail.shape)} do not fit the top-k values {tuple(values.shape)}: "
                            f"expected {(*values.shape[:-1], 2)}")
        fill = tail_fill(tail.reshape(-1, 2), temperature)

    def fn(sl: slice) -> torch.Tensor:
        vv, ii = v[sl].float(), i[sl].long()
        keep = ii >= 0
        if tail is None:
            dense = torch.full((vv.shape[0], num_classes + 1), -math.inf, device=vv.device)
        else:
            dense = fill[sl].to(vv.device)[:, None].expand(-1, num_classes + 1).contiguous()
        # dropped entries are scattered into a spare last column, then cut off
        dense.scatter_(-1, torch.where(keep, ii, torch.full_like(ii, num_classes)), torch.where(keep, vv, -math.inf))
        return dense[:, :num_classes]

    return fn


def student_space(ids: torch.Tensor, vocab_map: Any) -> torch.Tensor:
    """Teacher ids -> student rows, ``-1`` for pruned tokens (they are dropped from the cached distribution)."""
    if vocab_map is None:
        return ids
    kept_row = torch.full((vocab_map.vocab_size,), -1, dtype=torch.long)
    kept_row[vocab_map.kept_ids] = torch.arange(vocab_map.num_kept)
    return kept_row.to(ids.device)[ids]


def topk_cache_problem(vocab_map: VocabMap | None) -> str | None:
    """Why a top-k cache cannot give this map's target (None: it can)."""
    if vocab_map is None or vocab_map.is_identity or vocab_map.pruned_mass != "substitute":
        return None
    return ("pruned_mass='substitute' needs the teacher's probability of every pruned token, which a top-k cache "
            "does not hold; use cache_mode='hidden' (exact) or the live teacher (teacher_cache=False)")


def cached_teacher_fn(cache: TeacherCache, index: torch.Tensor, runner: TeacherRunner | None, vocab_map: Any,
                      num_classes: int, temperature: float, device: torch.device) -> TeacherFn:
    """The ``teacher_fn`` of the training blocks ``index`` read from ``cache``, on ``device``.

    Hidden mode (exact): the cached final hidden states times the runner's rows of the teacher's output
    layer, then its target (what the live path uses; the body is never run). Top-k mode: the top-k logits
    with the tail fill at the loss's ``temperature``, over ``num_classes`` student tokens (renormalised
    target only: :func:`topk_cache_problem`).
    """
    if cache.mode == "hidden":
        return hidden_teacher_fn(cache.lookup_hidden(index).to(device), runner.head_w, runner.head_b, runner.bf16,
                                 runner.target)
    problem = topk_cache_problem(vocab_map)
    if problem:
        raise LossError(problem)
    values, t_ids, tail = cache.lookup(index)
    return sparse_teacher_fn(values.to(device), student_space(t_ids, vocab_map).to(device), num_classes,
                             tail=tail.to(device), temperature=temperature)


# --------------------------------------------------------------------------------------------
# kept across runs (stage 2)
# --------------------------------------------------------------------------------------------

class _Store:
    """Tensors by a content key, read from a file shared by runs (``store``) and written back with the new ones.

    ``glmd compare`` trains ~40 students from the same task teachers on overlapping inputs; the teacher is
    frozen, so what it computed for an input once holds for every later run. The caller names the file after
    the teacher's weights and precision; a damaged file is ignored (computed again and rewritten).
    """

    def __init__(self, store: Path | None):
        self.store, self.stored, self.added = store, {}, 0
        if store is not None and Path(store).exists():
            try:
                self.stored = dict(torch.load(store, weights_only=True))
            except Exception:  # damaged: computed again and rewritten
                self.stored = {}

    def save(self) -> None:
        """Write the store with what was computed since it was read (nothing to do without a store or news)."""
        if self.store is None or not self.added:
            return
        Path(self.store).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.store) as tmp:
            torch.save(self.stored, tmp)


class TeacherHidden(_Store):
    """Pass 2a's teacher signal from the task teacher's final hidden states, kept per sequence across runs.

    The body of a 135M teacher is most of pass 2a's time, and every method and ablation of a comparison reads
    the same cloze sequences: each sequence's hidden states [n, D] are computed once (in the dtype the head
    reads them in), keyed by its token ids, and the chunked target is made from them by the runner's own head
    rows and target (:meth:`TeacherRunner.head`), so the vocabulary map, ``pruned_mass`` and T are applied per
    run. The logits are those of :meth:`TeacherRunner.chunks` up to float rounding: a sequence's hidden states are
    computed in the first batch it appears in, and a right-padded row does not depend on the rows beside it (only
    the matmuls' blocking may round differently). In the first epoch of a run with an empty store every batch is
    computed as the live runner would. Memory: ``n x D`` values per sequence held for the run (SmolLM2 in bf16:
    about 1.1 kB per token). Plain linear heads only (``runner.head_w``); the caller uses the live runner otherwise.
    """

    def __init__(self, runner: TeacherRunner, store: Path | None = None):
        if runner.head_w is None:
            raise LossError("TeacherHidden needs a teacher whose logits are a linear layer on its last hidden state")
        super().__init__(store)
        self.runner, self.device = runner, runner.device

    @torch.no_grad()
    def chunks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TeacherFn:
        """As :meth:`TeacherRunner.chunks` for a right-padded batch (``attention_mask`` marks each row's length)."""
        lengths = attention_mask.sum(-1).tolist()
        keys = [digest(row[:n].tolist(), 24) for row, n in zip(input_ids, lengths)]
        missing = [i for i, k in enumerate(keys) if k not in self.stored]
        if missing:
            width = max(lengths[i] for i in missing)
            h = self.runner.hidden(input_ids[missing, :width], attention_mask[missing, :width]).cpu()
            for row, i in enumerate(missing):
                self.stored[keys[i]] = h[row, :lengths[i]].clone()
            self.added += len(missing)
        first = self.stored[keys[0]]
        hidden = torch.zeros(*input_ids.shape, first.shape[-1], dtype=first.dtype)
        for i, (k, n) in enumerate(zip(keys, lengths)):
            hidden[i, :n] = self.stored[k]
        return self.runner.head(hidden.to(self.runner.device))


class TeacherScores(_Store):
    """The teacher's task scores per training cloze, computed on first use and cached (the teacher is frozen).

    ``store``: a file that keeps them across runs (``glmd compare`` trains ~40 students from the same task
    teachers on overlapping inputs): scores found there (by the cloze's content) are read, not computed, and
    :meth:`save` adds the new ones. The caller names the file after the teacher's weights and precision.
    """

    def __init__(self, teacher: nn.Module, clozes: Sequence[Cloze], bf16: bool = False, store: Path | None = None):
        super().__init__(store)
        self.teacher, self.clozes, self.bf16 = teacher, clozes, bool(bf16)
        self.device = next(teacher.parameters()).device
        self.cache: dict[int, torch.Tensor] = {}

    @staticmethod
    def key(c: Cloze) -> str:
        """What a cloze's scores depend on (its ids, choices and scored positions), as a digest."""
        parts = [c.kind, c.sequences, c.choices, c.choice_token_ids, c.answer_positions, c.candidate_spans,
                 c.candidate_ids]
        return digest(parts, 24)

    @torch.no_grad()
    def __call__(self, idx: Sequence[int]) -> torch.Tensor:
        """Scores ``[len(idx), max choices]`` (fp32, CPU), ``-inf`` beyond an example's choices."""
        for i in dict.fromkeys(idx):  # each cloze is hashed once: after this it is in self.cache either way
            if i not in self.cache and (kept := self.stored.get(self.key(self.clozes[i]))) is not None:
                self.cache[i] = kept
        missing = [i for i in dict.fromkeys(idx) if i not in self.cache]
        if missing:
            with autocast(self.device, self.bf16):
                s = task_scores(self.teacher, [self.clozes[i] for i in missing]).float().cpu()
            for row, i in enumerate(missing):
                self.cache[i] = s[row, :self.clozes[i].n_choices]
                self.stored[self.key(self.clozes[i])] = self.cache[i]
            self.added += len(missing)
        width = max(self.clozes[i].n_choices for i in idx)
        out = torch.full((len(idx), width), -math.inf)
        for row, i in enumerate(idx):
            out[row, :len(self.cache[i])] = self.cache[i]
        return out
