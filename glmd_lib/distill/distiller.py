"""The module stages 1 and 2a train: the student together with the chunked vocabulary KL.

Why a module and not only a loss function: under several processes the trainer wraps what it trains in
DDP, which synchronises the gradients of work done inside the wrapped module's ``forward``. The chunked loss
uses the student's output layer itself (its weight goes straight into :func:`glmd_lib.distill.losses.distill_loss`),
so the loss has to run inside ``forward``, together with the student.
"""
from __future__ import annotations

from torch import nn

from glmd_lib.distill.losses import distill_loss
from glmd_lib.models.teacher import linear_head


class Distiller(nn.Module):
    """The trained module: the student plus the loss, so DDP sees every parameter use in ``forward``."""

    def __init__(self, student: nn.Module, temperature: float, topk: int | None, chunk: int, ce_weight: float):
        super().__init__()
        self.student = student
        self.temperature, self.topk, self.chunk, self.ce_weight = temperature, topk, chunk, ce_weight
        self.use_hidden = linear_head(student) is not None

    def forward(self, input_ids, attention_mask, teacher_fn, loss_mask, labels):
        if self.use_hidden:
            hidden = self.student.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            head = self.student.get_output_embeddings()
        else:
            hidden = self.student(input_ids=input_ids, attention_mask=attention_mask).logits
            head = None
        return distill_loss(hidden, head, teacher_fn, loss_mask, self.temperature, labels=labels,
                            ce_weight=self.ce_weight, topk=self.topk, chunk=self.chunk)
