"""Task teachers: fine-tune the pre-trained teacher on one SuperGLUE task's gold labels (notebook 04).

This is the only place in GLMD where labels *train* anything: the task teachers made here are what
stage 2 distils into the student. The loss is the cross-entropy of the gold choice under the softmax
of the cloze scores (verbalizer log-probabilities, or candidate log-likelihoods for COPA/ReCoRD), as in
PET/GLM. Training runs on the one training loop, :class:`glmd_lib.trainer.Trainer` (AdamW without weight
decay, linear decay to 0, clipping at 1, NaN guard), over length-bucketed batches (less padding).

Selection is not evaluation (:mod:`glmd_lib.tasks.selection`): the checkpoint is chosen on a **selection
split**, by default a seeded holdout carved from the task's train split and removed from training
(``select_on='train_holdout'``); it is scored before training and ``evals_per_epoch`` times per epoch by the
trainer's best-checkpoint hook (:class:`glmd_lib.trainer.BestCheckpoint`), and the best checkpoint is kept.
``select_on='dev'`` selects on dev as the paper does (its dev scores are then optimistic), ``'last'`` keeps the
last weights. Dev is scored once per final model, in notebook 06.

To make this affordable on a CPU, only the top ``train_layers`` transformer layers (and the parameters
after the layer stack, such as the final norm) are trained; the embeddings and lower layers stay frozen,
so autograd records nothing below the first trainable layer.

Artifacts (:data:`glmd_lib.artifacts.STAGES` ``["teachers"]``): ``teachers/<TASK>/model/`` (``save_pretrained``
+ tokenizer, written atomically) and ``metrics.json`` (pattern, what selected the checkpoint, the selection
scores before and after, the evaluations, the timings) per task, ``teachers/summary.json`` for the run.
"""
from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from glmd_lib.artifacts import artifact, atomic_path, atomic_write_json, begin_stage, mark_complete, STAGES
from glmd_lib.device import get_device, use_bf16
from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind
from glmd_lib.superglue.data import Example, subsample
from glmd_lib.superglue.patterns import Cloze, build_cloze
from glmd_lib.tasks.evaluate import evaluate_clozes
from glmd_lib.tasks.scoring import task_scores
from glmd_lib.tasks.selection import SelectionSplit, split_for
from glmd_lib.trainer import BestCheckpoint, IndexBatches, TrainConfig, Trainer


def transformer_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks (the ModuleList as long as ``num_hidden_layers``)."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError(f"cannot find the {n} transformer layers of {type(model).__name__}")


def freeze_lower_layers(model: torch.nn.Module, train_layers: int) -> int:
    """Train only the top ``train_layers`` layers plus the non-embedding parameters outside the layer
    stack (final norm, MLM head transform); ``train_layers=0`` trains everything. Returns the number
    of trainable parameters (the trainer optimises exactly those: the ones that require grad)."""
    if train_layers <= 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return count_parameters(model, trainable_only=True)
    layers = transformer_layers(model)
    if train_layers > len(layers):
        raise ValueError(f"train_layers={train_layers} but the model has {len(layers)} layers")
    in_layers = {id(p) for p in layers.parameters()}
    top = {id(p) for layer in list(layers)[-train_layers:] for p in layer.parameters()}
    embeddings = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None}
    for p in model.parameters():
        p.requires_grad_(id(p) in top or (id(p) not in in_layers and id(p) not in embeddings))
    return count_parameters(model, trainable_only=True)


# --------------------------------------------------------------------------------------------
# batches and loss
# --------------------------------------------------------------------------------------------

def length_bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random,
                            bucket_batches: int = 8) -> list[list[int]]:
    """Random batches of similar length: shuffle, sort within windows of ``bucket_batches`` batches,
    cut into batches, shuffle the batches. Less padding, still a random order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * bucket_batches
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class LengthBatches(IndexBatches):
    """The trainer's batch source for fine-tuning: epochs of :func:`length_bucketed_batches` (every example
    once per epoch; the last batch of a window may be short). Epoch ``e`` is drawn from ``seed + e`` and
    ``pos`` counts batches, so the position is a checkpointable state like :class:`IndexBatches`'. One process
    only: batches differ in size, so ranks could not move through them in step."""

    def __init__(self, lengths: list[int], batch_size: int, collate: Callable[[torch.Tensor], Any],
                 seed: int = 0, bucket_batches: int = 8):
        self.lengths, self.bucket_batches = [int(x) for x in lengths], bucket_batches
        super().__init__(len(self.lengths), batch_size, collate, seed=seed)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def set_rank(self, rank: int, world_size: int) -> None:
        if world_size != 1:
            raise ValueError(f"length-bucketed batches run in one process, not {world_size}")
        if self.n < 1:
            raise ValueError("no examples to batch")
        self.rank, self.world_size = rank, world_size

    def next_batch(self) -> Any:
        if self.pos >= self.batches_per_epoch:
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        if self._perm is None:
            rng = random.Random(self.seed + self.epoch)
            self._perm = length_bucketed_batches(self.lengths, self.batch_size, rng, self.bucket_batches)
        idx = self._perm[self.pos]
        self.pos += 1
        return self.collate(torch.as_tensor(idx, dtype=torch.long))


def gold_cross_entropy(scores: torch.Tensor, clozes: list[Cloze]) -> torch.Tensor:
    """Cross-entropy of each cloze's gold choice under the softmax of its task scores, mean over the clozes."""
    labels = torch.as_tensor([c.label for c in clozes], device=scores.device)
    return torch.nn.functional.cross_entropy(scores.float(), labels)


def cloze_loss(model: torch.nn.Module, clozes: list[Cloze], vocab_map: Any = None) -> Callable:
    """``loss_fn(batch)`` for the trainer: :func:`gold_cross_entropy` of the task scores of the batch's clozes
    (``batch["index"]``); ``vocab_map``: a stage-2 student's (the no-KD baseline fine-tunes with this loss)."""
    def loss_fn(batch: dict[str, torch.Tensor]):
        chosen = [clozes[i] for i in batch["index"].tolist()]
        scores = task_scores(model, chosen, vocab_map=vocab_map)
        tokens = sum(len(s) for c in chosen for s in c.sequences)
        return gold_cross_entropy(scores, chosen), {"tokens": tokens}
    return loss_fn


def eval_steps(batches_per_epoch: int, epochs: int, evals_per_epoch: int) -> set[int]:
    """The optimizer steps after which dev is evaluated: ``evals_per_epoch`` evenly spaced points in every
    epoch, the last at the epoch's end (at most one per step)."""
    k = max(1, min(evals_per_epoch, batches_per_epoch))
    within = {min(batches_per_epoch, math.ceil(batches_per_epoch * (j + 1) / k)) for j in range(k)}
    return {e * batches_per_epoch + s for e in range(epochs) for s in within}


# --------------------------------------------------------------------------------------------
# one task
# --------------------------------------------------------------------------------------------

@dataclass
class TaskData:
    """One task's (capped) labelled train clozes, and the selection clozes that choose the checkpoint (from the
    train holdout, or dev, or none: :mod:`glmd_lib.tasks.selection`) with their examples."""

    train: list[Cloze]
    selection: list[Cloze]
    selection_examples: list[Example]
    split: SelectionSplit


def task_data(cfg, task: str, tokenizer: Any, kind: str, data_dir: str | Path | None = None) -> TaskData:
    """The selection split is carved from the whole train split first, then what trains is capped."""
    split = split_for(cfg, task, data_dir)
    train_ex = subsample(split.train, cfg.max_train_examples, seed=cfg.seed)
    train = [c for c in build_cloze(task, train_ex, tokenizer, kind=kind, pattern_id=cfg.pattern_id,
                                    max_len=cfg.max_seq_len) if c.label is not None]
    if not train:
        raise ValueError(f"{task}: no labelled training examples")
    selection = build_cloze(task, split.selection, tokenizer, kind=kind, pattern_id=cfg.pattern_id,
                            max_len=cfg.max_seq_len)
    return TaskData(train, selection, split.selection, split)


def _history(records: list[dict[str, Any]], losses: list[float], per_epoch: int) -> list[dict[str, Any]]:
    """One row per evaluation (or, without a selection split, per epoch): the step, the epoch, the mean train
    loss since the previous row and the selection metrics (``selection_score``, ``selection_<metric>``)."""
    history, prev = [], 0
    for rec in records:
        step = rec["step"]
        history.append({"step": step, "epoch": math.ceil(step / per_epoch),
                        "train_loss": sum(losses[prev:step]) / max(1, step - prev),
                        **{k: v for k, v in rec.items() if k not in ("pass", "step")}})
        prev = step
    return history


def _train(cfg, task: str, model: torch.nn.Module, data: TaskData, evaluate: Callable, device: torch.device,
           bf16: bool, say: Callable[[str], None], progress: bool) -> tuple[BestCheckpoint | None, list[dict]]:
    """Fine-tune on the trainer; with a selection split, evaluate on it at :func:`eval_steps` and load the best
    weights back (None: ``select_on='last'``, the last weights stay). Returns the selector and the history."""
    batches = LengthBatches([c.max_len for c in data.train], cfg.batch_size, lambda idx: {"index": idx},
                            seed=cfg.seed)
    per_epoch = batches.batches_per_epoch
    steps = per_epoch * cfg.epochs
    selector = None
    if data.selection:
        selector = BestCheckpoint(task, model, evaluate, steps, eval_steps(per_epoch, cfg.epochs, cfg.evals_per_epoch),
                                  keep_best=True)

    def report(row: dict[str, Any]) -> None:
        if selector and selector.records and selector.records[-1]["step"] == row["step"]:
            say(f"{task}: step {row['step']}/{steps} selection score ({data.split.source}) "
                f"{selector.records[-1]['selection_score']:.4f}")

    work = artifact(cfg.run_dir, "teachers", "model", task).parent / ".work"
    tcfg = TrainConfig(steps=steps, lr=cfg.lr, weight_decay=0.0, schedule="linear", max_grad_norm=1.0,
                       checkpoint_every=0, seed=cfg.seed, bf16=bf16, cpu=device.type != "cuda")
    trainer = Trainer(model, cloze_loss(model, data.train), batches, work, tcfg, progress=progress,
                      on_log=[selector, report] if selector else [], desc=f"{task} teacher")
    trainer.train(resume=False)
    shutil.rmtree(work, ignore_errors=True)  # only the loss log is there; the evaluations go into metrics.json
    records = selector.records if selector else [{"step": e * per_epoch} for e in range(1, cfg.epochs + 1)]
    if selector:
        selector.finish()
    return selector, _history(records, [r["loss"] for r in trainer.history], per_epoch)


def _selection_metrics(before: dict[str, Any] | None, selector: BestCheckpoint | None) -> dict[str, Any]:
    """What the selection split said before training and at the kept step (None where nothing was selected)."""
    best = selector.best if selector else None
    return {"selection_before": before["metrics"] if before else None,
            "selection_score_before": before["score"] if before else None,
            "selection_after": {k[len("selection_"):]: v for k, v in best.items()
                                if k.startswith("selection_") and k != "selection_score"}
            if best else None,
            "selection_score_after": best["selection_score"] if best else None}


def finetune_teacher(cfg, task: str, data_dir: str | Path | None = None,
                     log_fn: Callable[[str], None] | None = print, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``cfg.teacher`` on ``task`` (``cfg``: a ``TeacherConfig``); write ``teachers/<task>/model`` and
    ``metrics.json``, and return the metrics. Dev is not scored here unless ``select_on='dev'``."""
    say = log_fn or (lambda s: None)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = get_device(cfg.device)
    model, tok = load_teacher(cfg.teacher, device=device)
    kind = model_kind(model.config)
    data = task_data(cfg, task, tok, kind, data_dir or cfg.superglue_dir)
    trainable = freeze_lower_layers(model, cfg.train_layers)
    bf16 = use_bf16(device, cfg.bf16)
    say(f"{task}: {len(data.train)} train / {len(data.selection)} selection examples ({data.split.source}), "
        f"{kind} LM, {trainable:,} of {count_parameters(model):,} parameters trained")
    eval_time = [0.0]

    def evaluate(m: torch.nn.Module) -> dict[str, Any]:
        t0 = time.perf_counter()
        res = evaluate_clozes(m, task, data.selection, data.selection_examples, max(cfg.batch_size, 16), bf16=bf16)
        eval_time[0] += time.perf_counter() - t0
        return res

    before = evaluate(model) if data.selection else None
    t0, eval_before = time.perf_counter(), eval_time[0]
    selector, history = _train(cfg, task, model, data, evaluate, device, bf16, say, progress)
    t_train = time.perf_counter() - t0 - (eval_time[0] - eval_before)
    with atomic_path(artifact(cfg.run_dir, "teachers", "model", task), is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    metrics = {
        "task": task, "teacher": cfg.teacher, "kind": kind, "pattern_id": cfg.pattern_id, "max_seq_len": cfg.max_seq_len,
        "score": "mean of the task's official metrics (glmd_lib.superglue.metrics.task_score)",
        **data.split.describe(), "train_examples": len(data.train), **_selection_metrics(before, selector),
        "best_step": selector.best["step"] if selector else history[-1]["step"], "steps": history[-1]["step"],
        "epochs": cfg.epochs, "trainable_params": trainable, "bf16": bf16, "params": count_parameters(model),
        "history": history, "seconds": {"train": round(t_train, 1), "eval": round(eval_time[0], 1),
                                        "total": round(time.perf_counter() - t_start, 1)},
    }
    atomic_write_json(artifact(cfg.run_dir, "teachers", "metrics.json", task), metrics)
    say(f"{task}: kept step {metrics['best_step']} ({_kept(metrics)}); train {t_train:.0f}s, eval {eval_time[0]:.0f}s")
    return metrics


def _kept(m: dict[str, Any]) -> str:
    if m["selection_score_after"] is None:
        return "the last step: no selection"
    return (f"selection score on the {m['source']} {m['selection_score_before']:.4f} -> "
            f"{m['selection_score_after']:.4f}, {_fmt(m['selection_after'])}")


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


# --------------------------------------------------------------------------------------------
# the stage (notebook 04)
# --------------------------------------------------------------------------------------------

SUMMARY_KEYS = ("select_on", "source", "selection_score_before", "selection_score_after", "best_step", "seconds")


def run_teachers(cfg, log_fn: Callable[[str], None] | None = print, progress: bool = True) -> dict[str, dict]:
    """Notebook 04: one task teacher per task of ``cfg``; writes ``teachers/<TASK>/{model,metrics.json}`` and
    ``teachers/summary.json``, marks the stage complete, returns ``{task: metrics}``."""
    begin_stage(cfg)
    results = {task: finetune_teacher(cfg, task, log_fn=log_fn, progress=progress) for task in cfg.tasks}
    atomic_write_json(artifact(cfg.run_dir, "teachers", "summary.json"),
                      {t: {k: m[k] for k in SUMMARY_KEYS} for t, m in results.items()})
    spec = STAGES["teachers"]
    mark_complete(cfg.out_dir, list(spec.files) + [f"{t}/{name}" for t in cfg.tasks for name in spec.per_task])
    return results
