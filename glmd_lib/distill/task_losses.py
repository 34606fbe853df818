"""Stage 2's losses, one ``loss_fn`` per pass for :class:`glmd_lib.trainer.Trainer` (the math is in
:mod:`glmd_lib.distill.losses` and, for the gold-label term, :func:`glmd_lib.tasks.teachers.gold_cross_entropy`,
the task teachers' own loss).

``Stage2Config.task_loss`` chooses the task pass (2b):

* ``glmd`` (the method): ``soft_cross_entropy(student scores, teacher scores, T=1)``; no gold label;
* ``kd`` (Hinton / DistilBERT-style task stage, a baseline of issue #13):
  ``kd_temperature^2 * soft_cross_entropy(s, t, kd_temperature) + gold_weight * CE(s, gold)``; the ``T^2``
  keeps the soft term's gradients on the scale of the hard one's when T changes (Hinton et al. 2015);
* ``finetune`` (the no-KD baseline): ``CE(s, gold)`` only, the task teachers' loss; no teacher in the step;
* ``tinybert`` (TinyBERT's task-specific distillation, a baseline of issue #13): pass 2a is its intermediate-layer
  distillation on the task inputs, the vocabulary KL plus ``feature_weight`` x (hidden-state MSE through trained
  projections + attention KL where head counts allow) against the task teacher
  (:class:`~glmd_lib.distill.feature_objective.FeatureObjective`, as in stage 1); pass 2b its prediction-layer
  distillation, ``kd`` with ``gold_weight = 0``. No gold label.

Pass 2a (the vocabulary KL over every position of the cloze inputs) runs for ``glmd`` and ``tinybert`` only.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from glmd_lib.config.stages import Stage2Config
from glmd_lib.distill.feature_objective import teacher_features
from glmd_lib.distill.losses import soft_cross_entropy
from glmd_lib.distill.teacher import TeacherHidden, TeacherRunner, TeacherScores
from glmd_lib.superglue.patterns import Cloze
from glmd_lib.tasks.scoring import collate_sequences, task_scores
from glmd_lib.tasks.teachers import cloze_loss, gold_cross_entropy

# what each pass computes, by task_loss (recorded in metrics.json; None: the pass does not run)
PASS_LOSSES = {"glmd": {"2a": "vocab_kl", "2b": "soft_ce"}, "kd": {"2a": None, "2b": "soft_ce_at_T+gold_ce"},
               "finetune": {"2a": None, "2b": "gold_ce"},
               "tinybert": {"2a": "vocab_kl+hidden_mse+attention_kl", "2b": "soft_ce_at_T"}}


# --------------------------------------------------------------------------------------------
# pass 2a: vocabulary KL over every position of every cloze sequence
# --------------------------------------------------------------------------------------------

def collate_2a(clozes: Sequence[Cloze]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Indices of examples -> all their sequences, right-padded (teacher ids; masks from the lengths)."""
    def collate(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        seqs = [s for i in idx.tolist() for s in clozes[i].sequences]
        ids, mask = collate_sequences(seqs, pad_id=0)  # the pad id is never read: masks come from the lengths
        return {"input_ids": ids, "attention_mask": mask, "index": idx}
    return collate


def make_2a_loss(runner: TeacherRunner | TeacherHidden, vocab_map: Any, features: bool = False) -> Callable:
    """``loss_fn(batch, model)``: the chunked ``T^2 KL`` of stage 1 over all non-padding positions.

    ``runner``: the live teacher, or its hidden states kept per sequence (:class:`TeacherHidden`; not with
    ``features``, which need the live teacher's intermediate layers).

    ``model`` is a :class:`glmd_lib.distill.distiller.Distiller` around the student; the teacher reads teacher ids,
    the student the same tokens mapped into its rows. ``features`` (task_loss='tinybert'): the teacher's pass also
    returns its hidden states and attentions, and the Distiller adds its intermediate-layer terms.
    """
    def loss_fn(batch: dict[str, torch.Tensor], model: nn.Module):
        ids, attn = batch["input_ids"], batch["attention_mask"]
        t_ids, t_attn, feats = ids.to(runner.device), attn.to(runner.device), None
        if features:
            teacher_fn, feats = teacher_features(runner, t_ids, t_attn, values=False)
        else:
            teacher_fn = runner.chunks(t_ids, t_attn)
        dev = ids.device

        def on_student_device(sl: slice) -> torch.Tensor:
            return teacher_fn(sl).to(dev)

        loss, logs = model(vocab_map.map_ids(ids), attn, on_student_device, attn.bool(), None, teacher_features=feats)
        extra = {k: logs[k] for k in ("hidden_mse", "attention_kl") if k in logs}
        return loss, {"kl": logs["kl"], **extra, "tokens": attn.sum(), "loss_count": logs["count"]}
    return loss_fn


# --------------------------------------------------------------------------------------------
# pass 2b: the task pass
# --------------------------------------------------------------------------------------------

def _tokens(clozes: Sequence[Cloze], idx: list[int]) -> int:
    return sum(len(seq) for i in idx for seq in clozes[i].sequences)


def make_2b_loss(student: nn.Module, clozes: Sequence[Cloze], teacher_scores: TeacherScores, vocab_map: Any
                 ) -> Callable:
    """``loss_fn(batch)``: ``soft_cross_entropy(student scores, teacher scores, T=1)`` for the batch's clozes."""
    def loss_fn(batch: dict[str, torch.Tensor]):
        idx = batch["index"].tolist()
        s = task_scores(student, [clozes[i] for i in idx], vocab_map=vocab_map)
        t = teacher_scores(idx).to(s.device)
        loss = soft_cross_entropy(s, t, temperature=1.0)
        agree = (s.argmax(-1) == t.argmax(-1)).float().mean()
        return loss, {"teacher_agreement": agree, "tokens": _tokens(clozes, idx), "loss_count": len(idx)}
    return loss_fn


def make_kd_loss(student: nn.Module, clozes: Sequence[Cloze], teacher_scores: TeacherScores, vocab_map: Any,
                 temperature: float, gold_weight: float) -> Callable:
    """``loss_fn(batch)``: ``T^2 soft_cross_entropy(s, t, T) + gold_weight * gold_cross_entropy(s)`` (one forward
    pass of the student; ``clozes`` carry their gold labels; with ``gold_weight=0`` they need none and the gold
    term is not computed: soft targets alone, TinyBERT's prediction-layer loss)."""
    T = float(temperature)

    def loss_fn(batch: dict[str, torch.Tensor]):
        idx = batch["index"].tolist()
        chosen = [clozes[i] for i in idx]
        s = task_scores(student, chosen, vocab_map=vocab_map)
        t = teacher_scores(idx).to(s.device)
        soft = T * T * soft_cross_entropy(s, t, temperature=T)
        gold = gold_cross_entropy(s, chosen) if gold_weight else torch.zeros((), device=s.device)
        agree = (s.argmax(-1) == t.argmax(-1)).float().mean()
        return soft + gold_weight * gold, {"soft_ce": soft.detach(), "gold_ce": gold.detach(),
                                           "teacher_agreement": agree, "tokens": _tokens(clozes, idx),
                                           "loss_count": len(idx)}
    return loss_fn


def make_finetune_loss(student: nn.Module, clozes: Sequence[Cloze], vocab_map: Any) -> Callable:
    """``loss_fn(batch)``: the task teachers' gold-label loss (:func:`glmd_lib.tasks.teachers.cloze_loss`) on the
    student's scores; no teacher anywhere in the step."""
    inner = cloze_loss(student, list(clozes), vocab_map=vocab_map)

    def loss_fn(batch: dict[str, torch.Tensor]):
        loss, logs = inner(batch)
        return loss, {**logs, "gold_ce": loss.detach(), "loss_count": len(batch["index"])}
    return loss_fn


def make_task_loss(cfg: Stage2Config, student: nn.Module, clozes: Sequence[Cloze],
                   teacher_scores: TeacherScores | None, vocab_map: Any) -> Callable:
    """The task pass's ``loss_fn`` for ``cfg.task_loss`` (``teacher_scores`` unused by ``finetune``)."""
    if cfg.task_loss == "finetune":
        return make_finetune_loss(student, clozes, vocab_map)
    if cfg.task_loss in ("kd", "tinybert"):  # tinybert's prediction-layer pass: soft targets only
        gold_weight = cfg.gold_weight if cfg.task_loss == "kd" else 0.0
        return make_kd_loss(student, clozes, teacher_scores, vocab_map, cfg.kd_temperature, gold_weight)
    return make_2b_loss(student, clozes, teacher_scores, vocab_map)
