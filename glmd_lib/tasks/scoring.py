"""Scores of a language model on SuperGLUE clozes (see ``glmd_lib.superglue.patterns``), and THE predict path.

``task_scores`` is differentiable (fine-tuning and stage 2 back-propagate through it); ``predict_clozes`` is the
one way from a model to predictions everywhere (teacher dev scores, stage-2 selection, notebook 06, test
submissions): clozes batched by length, scores under the precision rule of ``glmd_lib.device``, argmax,
mapped back to label values.

Scores are log-probabilities under the model's full softmax: the verbalizer token's log-probability
at the answer position for single-token tasks, the sum over the candidate's tokens for candidate
tasks. A softmax over a row therefore gives the model's distribution over the choices (the full-vocab
normaliser cancels), which is what fine-tuning and distillation use.

A student with a compressed vocabulary (``glmd_lib.vocab.vocab_map.VocabMap``) reads teacher ids mapped to its own
ids (``vocab_map.map_ids``); verbalizer tokens are always kept, so their scores are exact; a pruned
candidate token is read at its substitute.

Padding is on the right and masks come from the attention mask only: SmolLM2's pad id equals its eos id.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Sequence

import torch

from glmd_lib.device import autocast, use_bf16
from glmd_lib.models.teacher import linear_head
from glmd_lib.superglue.patterns import Cloze

# model -> whether its logits are its output layer applied to its base model's last hidden state (then the
# large vocabulary projection is computed only at the positions that are read). linear_head decides it with a
# forward pass, so once per model; weak keys: a model scored once does not stay in memory for it
_LINEAR_HEAD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
PAD_MULTIPLE = 32  # batches are padded to a multiple of this many positions


def collate_sequences(seqs: Sequence[Sequence[int]], pad_id: int,
                      pad_to_multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``seqs`` into ``(input_ids, attention_mask)`` (LongTensors of shape [N, L]), with L the
    longest length rounded up to ``pad_to_multiple_of`` (few distinct shapes: CPU bf16 kernels are
    prepared once per shape, which otherwise costs more than the padding)."""
    if not seqs:
        raise ValueError("collate_sequences needs at least one sequence")
    n, L = len(seqs), max(len(s) for s in seqs)
    L = -(-L // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((n, L), int(pad_id), dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def _map_ids(vocab_map: Any, ids: torch.Tensor) -> torch.Tensor:
    """Teacher ids -> student ids through a VocabMap (``map_ids``, else its ``teacher_to_student`` table)."""
    if vocab_map is None:
        return ids
    if hasattr(vocab_map, "map_ids"):
        out = vocab_map.map_ids(ids)
    else:
        out = torch.as_tensor(vocab_map.teacher_to_student)[ids.cpu()]
    return torch.as_tensor(out, dtype=torch.long).to(ids.device)


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _read_log_probs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary at positions ``(rows[k], cols[k])``: [K, V].

    Through the output layer at those positions only where that equals the model's own logits
    (:func:`glmd_lib.models.teacher.linear_head`: not for soft-capped or scaled logits, nor masked LMs);
    otherwise from the full forward pass.
    """
    if model not in _LINEAR_HEAD:
        _LINEAR_HEAD[model] = linear_head(model) is not None
    if _LINEAR_HEAD[model]:
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = model.get_output_embeddings()(hidden[rows, cols])
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, cols]
    return torch.log_softmax(logits.float(), dim=-1)


def _read_plan(clozes: Sequence[Cloze], kind: str) -> tuple[list[int], list[int], list[int], list[tuple[int, int]]]:
    """Where each score is read in the collated batch: ``(rows, cols, targets, owner)``, one entry per read.

    Single-token clozes: one read at the answer position (``owner = (cloze, -1)``, the choice tokens are taken
    there). Candidate clozes: one read per candidate token (causal LMs predict token ``t`` at ``t - 1``),
    ``owner = (cloze, choice)`` and ``target`` the token id.
    """
    rows, cols, targets, owner = [], [], [], []
    row = 0
    for ci, c in enumerate(clozes):
        if c.single_token:
            rows.append(row)
            cols.append(c.answer_positions[0])
            owner.append((ci, -1))
            targets.append(-1)
            row += 1
            continue
        for j, ((start, _end), cand) in enumerate(zip(c.candidate_spans, c.candidate_ids)):
            for k, t in enumerate(cand):
                read_at = start + k - 1 if kind == "causal" else start + k
                if read_at < 0:
                    raise ValueError(f"{c.task} {c.idx}: a causal candidate cannot start at position 0")
                rows.append(row + j)
                cols.append(read_at)
                targets.append(t)
                owner.append((ci, j))
        row += len(c.sequences)
    return rows, cols, targets, owner


def _single_token_scores(out: torch.Tensor, lp: torch.Tensor, owner: list[tuple[int, int]],
                         clozes: Sequence[Cloze], vocab_map: Any) -> torch.Tensor:
    """Fill the rows of single-token clozes: the choice tokens' log-probabilities at the answer position."""
    single = [k for k, (_ci, j) in enumerate(owner) if j == -1]
    if not single:
        return out
    width, dev = out.shape[1], lp.device
    ci_list = [owner[k][0] for k in single]
    n_ch = [clozes[ci].n_choices for ci in ci_list]
    choice = torch.as_tensor([clozes[ci].choice_token_ids + [0] * (width - n) for ci, n in zip(ci_list, n_ch)],
                             device=dev)
    vals = lp[torch.as_tensor(single, device=dev)].gather(1, _map_ids(vocab_map, choice))  # [S, width]
    valid = torch.arange(width, device=dev)[None, :] < torch.as_tensor(n_ch, device=dev)[:, None]
    out[torch.as_tensor(ci_list, device=dev)] = torch.where(valid, vals, torch.full_like(vals, -math.inf))
    return out


def _candidate_scores(out: torch.Tensor, lp: torch.Tensor, owner: list[tuple[int, int]], targets: list[int],
                      vocab_map: Any) -> torch.Tensor:
    """Fill the candidate clozes' cells: the sum of each candidate's token log-probabilities."""
    multi = [k for k, (_ci, j) in enumerate(owner) if j >= 0]
    if not multi:
        return out
    n, width = out.shape
    dev = lp.device
    tgt = _map_ids(vocab_map, torch.as_tensor([targets[k] for k in multi], device=dev))
    tok_lp = lp[torch.as_tensor(multi, device=dev), tgt]
    slot = torch.as_tensor([owner[k][0] * width + owner[k][1] for k in multi], device=dev)
    sums = torch.zeros(n * width, device=dev, dtype=lp.dtype).index_add(0, slot, tok_lp)
    filled = torch.zeros(n * width, dtype=torch.bool, device=dev)
    filled[slot] = True
    return torch.where(filled.view(n, width), sums.view(n, width), out)


def task_scores(model, clozes: Sequence[Cloze], vocab_map: Any = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Scores ``[B, max_choices]`` of ``clozes`` (one forward pass over all their sequences).

    Differentiable: no ``torch.no_grad`` here. Clozes with fewer choices than the widest one (ReCoRD)
    are padded with ``-inf``. All clozes must be of one kind (causal or masked).
    """
    if not clozes:
        raise ValueError("task_scores needs at least one cloze")
    device = torch.device(device) if device is not None else _device_of(model)
    kinds = {c.kind for c in clozes}
    if len(kinds) != 1:
        raise ValueError(f"clozes of mixed kinds {sorted(kinds)}")
    seqs = [s for c in clozes for s in c.sequences]
    input_ids, attention_mask = collate_sequences(seqs, pad_id=0, pad_to_multiple_of=PAD_MULTIPLE)
    input_ids = _map_ids(vocab_map, input_ids).to(device)
    rows, cols, targets, owner = _read_plan(clozes, kinds.pop())
    lp = _read_log_probs(model, input_ids, attention_mask.to(device),
                         torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device))
    width = max(c.n_choices for c in clozes)
    out = torch.full((len(clozes), width), float("-inf"), device=lp.device, dtype=lp.dtype)
    out = _single_token_scores(out, lp, owner, clozes, vocab_map)
    return _candidate_scores(out, lp, owner, targets, vocab_map)


def batches_by_length(clozes: Sequence[Cloze], batch_size: int) -> list[list[int]]:
    """Indices of ``clozes`` grouped into batches of similar length, at most ``batch_size`` sequences
    each (a cloze with more sequences than that gets a batch of its own)."""
    order = sorted(range(len(clozes)), key=lambda i: clozes[i].max_len)
    out, cur, n = [], [], 0
    for i in order:
        k = len(clozes[i].sequences)
        if cur and n + k > batch_size:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += k
    if cur:
        out.append(cur)
    return out


@torch.no_grad()
def predict_clozes(model, clozes: Sequence[Cloze], vocab_map: Any = None, batch_size: int = 16,
                   bf16: bool | None = None) -> tuple[list[Any], list[torch.Tensor]]:
    """THE predict path: ``(predictions, scores)`` of ``model`` on ``clozes``, in input order.

    A prediction is the label value of the best-scoring choice (COPA: the choice index; ReCoRD: the entity
    string; None for a cloze without choices); a score is a 1-D float32 CPU tensor over the cloze's choices.
    Clozes are batched by length (at most ``batch_size`` sequences a forward pass); ``bf16`` follows
    :func:`glmd_lib.device.use_bf16` (None: bf16 on CUDA only). The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    scores: list[torch.Tensor | None] = [None] * len(clozes)
    dev = _device_of(model)
    half = use_bf16(dev, bf16)
    try:
        for idx in batches_by_length(clozes, batch_size):
            with autocast(dev, half):
                s = task_scores(model, [clozes[i] for i in idx], vocab_map=vocab_map, device=dev).float().cpu()
            for row, i in enumerate(idx):
                scores[i] = s[row, :clozes[i].n_choices]
    finally:
        model.train(was_training)
    preds = [c.choices[int(torch.argmax(s))] if len(s) else None for c, s in zip(clozes, scores)]
    return preds, scores  # type: ignore[return-value]
