"""Task teachers: fine-tune the pre-trained teacher on one SuperGLUE task's gold labels.

This is the only place in GLMD where labels train anything: the task teachers made here are what
stage 2 distils into the student. The loss is the cross-entropy of the gold choice under the softmax
of the cloze scores (verbalizer log-probabilities, or candidate log-likelihoods for COPA/ReCoRD), as in
PET/GLM. The dev score is measured before training (zero-shot) and at ``evals_per_epoch`` points per
epoch; the best fine-tuned checkpoint is kept.

To make this affordable on a CPU, only the top ``train_layers`` transformer layers (and the parameters
after the layer stack, such as the final norm) are trained; the embeddings and lower layers stay frozen,
so autograd records nothing below the first trainable layer.

Artifacts, in ``<run_dir>/teachers/<TASK>/``: ``model/`` (``save_pretrained`` + tokenizer, written
atomically) and ``metrics.json`` (dev metrics before and after, the history, the timings).
"""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import torch

from glmd_lib.device import get_device
from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind
from glmd_lib.artifacts import atomic_path, atomic_write_json
from glmd_lib.tasks.scoring import autocast, score_clozes, task_scores
from glmd_lib.superglue.data import read_split, subsample
from glmd_lib.superglue.metrics import task_metrics, task_score
from glmd_lib.superglue.patterns import build_cloze

log = logging.getLogger(__name__)


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
    of trainable parameters."""
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


def evaluate_clozes(model, task: str, clozes, examples, batch_size: int = 16, vocab_map: Any = None,
                    bf16: bool = False) -> dict:
    """Dev metrics of ``model`` on prepared clozes (with their examples): metrics, score, predictions."""
    scores = score_clozes(model, clozes, vocab_map=vocab_map, batch_size=batch_size, bf16=bf16)
    preds = [c.choices[int(torch.argmax(s))] if len(s) else None for c, s in zip(clozes, scores)]
    metrics = task_metrics(task, preds, examples)
    return {"metrics": metrics, "score": task_score(task, metrics), "predictions": preds}


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


def finetune_teacher(cfg, task: str, data_dir: str | Path | None = None,
                     log_fn: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Fine-tune ``cfg.teacher`` on ``task`` (``cfg``: a ``TeacherConfig``); save model and metrics.json.

    Returns the metrics dict that is also written to ``<cfg.out_dir>/<task>/metrics.json``.
    """
    say = log_fn or (lambda s: None)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = get_device(cfg.device)
    model, tok = load_teacher(cfg.teacher, device=device)
    kind = model_kind(model.config)
    data_dir = data_dir or getattr(cfg, "superglue_dir", None)

    train_ex = subsample(read_split(task, "train", data_dir), cfg.max_train_examples, seed=cfg.seed)
    dev_ex = subsample(read_split(task, "val", data_dir), cfg.max_eval_examples, seed=cfg.seed)
    train_cl = [c for c in build_cloze(task, train_ex, tok, kind=kind, pattern_id=cfg.pattern_id,
                                       max_len=cfg.max_seq_len) if c.label is not None]
    dev_cl = build_cloze(task, dev_ex, tok, kind=kind, pattern_id=cfg.pattern_id, max_len=cfg.max_seq_len)
    if not train_cl:
        raise ValueError(f"{task}: no labelled training examples")
    trainable = freeze_lower_layers(model, cfg.train_layers)
    eval_bs = max(cfg.batch_size, 16)
    bf16 = bool(getattr(cfg, "bf16", False))
    say(f"{task}: {len(train_cl)} train / {len(dev_cl)} dev examples, {kind} LM, "
        f"{trainable:,} of {count_parameters(model):,} parameters trained")

    t0 = time.perf_counter()
    before = evaluate_clozes(model, task, dev_cl, dev_ex, eval_bs, bf16=bf16)
    t_eval0 = time.perf_counter() - t0
    say(f"{task}: dev before fine-tuning {_fmt(before['metrics'])} (score {before['score']:.4f}, {t_eval0:.1f}s)")

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_cl) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / max(total, 1)))
    evals_per_epoch = max(1, min(getattr(cfg, "evals_per_epoch", 1), steps_per_epoch))
    eval_at = {min(steps_per_epoch, math.ceil(steps_per_epoch * (k + 1) / evals_per_epoch))
               for k in range(evals_per_epoch)}

    rng = random.Random(cfg.seed)
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    history, step, t_train, t_eval = [], 0, 0.0, 0.0
    for epoch in range(cfg.epochs):
        batches = length_bucketed_batches([c.max_len for c in train_cl], cfg.batch_size, rng)
        model.train()
        running, n_run = 0.0, 0
        for b, idx in enumerate(batches):
            t0 = time.perf_counter()
            batch = [train_cl[i] for i in idx]
            with autocast(device, bf16):
                scores = task_scores(model, batch, device=device).float()
            labels = torch.as_tensor([c.label for c in batch], device=scores.device)
            loss = torch.nn.functional.cross_entropy(scores, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            t_train += time.perf_counter() - t0
            running, n_run = running + loss.item(), n_run + 1
            if (b + 1) in eval_at:
                t0 = time.perf_counter()
                res = evaluate_clozes(model, task, dev_cl, dev_ex, eval_bs, bf16=bf16)
                t_eval += time.perf_counter() - t0
                history.append({"step": step, "epoch": epoch + 1, "train_loss": running / n_run,
                                "dev_score": res["score"], **{f"dev_{k}": v for k, v in res["metrics"].items()}})
                say(f"{task}: step {step}/{total} train loss {running / n_run:.4f} dev {_fmt(res['metrics'])}")
                running, n_run = 0.0, 0
                model.train()
                if best is None or res["score"] > best["score"]:
                    best = {**res, "step": step}
                    best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.eval()
    assert best is not None and best_state is not None
    with torch.no_grad():
        named = dict(model.named_parameters())
        for n, v in best_state.items():
            named[n].copy_(v)

    out = Path(cfg.out_dir) / task
    with atomic_path(out / "model", is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    metrics = {
        "task": task, "teacher": cfg.teacher, "kind": kind, "pattern_id": cfg.pattern_id,
        "score": "mean of the task's official metrics (glmd_lib.superglue.metrics.task_score)",
        "dev_before": before["metrics"], "dev_after": best["metrics"],
        "score_before": before["score"], "score_after": best["score"], "best_step": best["step"],
        "steps": step, "epochs": cfg.epochs, "train_examples": len(train_cl), "dev_examples": len(dev_cl),
        "trainable_params": trainable, "bf16": bf16, "params": count_parameters(model), "history": history,
        "seconds": {"train": round(t_train, 1), "eval": round(t_eval0 + t_eval, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
    }
    atomic_write_json(out / "metrics.json", metrics)
    say(f"{task}: kept step {best['step']}: dev {_fmt(best['metrics'])} (score {before['score']:.4f} -> "
        f"{best['score']:.4f}); train {t_train:.0f}s, eval {t_eval0 + t_eval:.0f}s")
    return metrics


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
