"""GLMD stage 1: task-agnostic distillation of the teacher's next-token distributions into the student.

``run_stage1(cfg)`` is the whole stage (the notebook and ``glmd stage1`` both call it):

1. load the teacher and (if ``use_vocab_map``) the ``VocabMap`` of notebook 02;
2. cut the corpus into token blocks (training: the train shards; metrics: ``valid.txt``);
3. build the student (teacher's config with the shape overrides, kept vocabulary, random or teacher init);
4. train with the chunked ``T^2 KL`` loss (:mod:`glmd_lib.distill.losses`) on the resumable trainer
   (:mod:`glmd_lib.trainer`), running the teacher on the fly or reading its cached final hidden states
   (exact) or top-k logits (approximate) from the cache (:mod:`glmd_lib.distill.teacher_cache`);
5. evaluate on held-out text, save ``student/``, ``history.csv``, ``metrics.json``, mark the stage complete.

Under ``accelerate launch`` every process runs this function; only the main process evaluates and writes.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from glmd_lib.config.stages import Stage1Config
from glmd_lib.device import get_device, set_threads
from glmd_lib.distill.losses import distill_loss, mask_tokens, sparse_teacher_fn
from glmd_lib.models.teacher import count_parameters, linear_head, load_teacher, model_kind
from glmd_lib.artifacts import ArtifactError, atomic_write_json, mark_complete, require_complete
from glmd_lib.models.student import build_student, save_student
from glmd_lib.data.blocks import default_corpus, require_blocks, token_blocks
from glmd_lib.trainer import IndexBatches, TrainConfig, Trainer
from glmd_lib.vocab.vocab_map import VocabMap

log = logging.getLogger(__name__)

ARTIFACTS = ["student", "history.csv", "metrics.json", "config.json"]
# settings that change what training computes; a checkpoint written under other values is not resumed
_NOT_IN_FINGERPRINT = ("run_dir", "profile", "device", "resume", "eval_batches", "checkpoint_every",
                       "keep_checkpoints", "max_lines", "loss_chunk")  # loss_chunk: same loss, other summation order


class Stage1Error(ValueError):
    """Stage-1 inputs do not fit together (sequence length, corpus size, vocabulary map ...)."""


# --------------------------------------------------------------------------------------------
# model pieces
# --------------------------------------------------------------------------------------------

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


class TeacherRunner:
    """The frozen teacher, producing per-chunk logits over the student's vocabulary.

    For causal teachers with a plain linear head only the final hidden states are computed for the batch;
    each chunk's logits are made from the *kept rows* of the output layer (K of V columns, fewer FLOPs
    and no ``[B, L, V]`` tensor). Other teachers run in full and are restricted chunk by chunk.
    """

    def __init__(self, teacher: nn.Module, vocab_map: VocabMap | None, bf16: bool):
        self.teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.vocab_map = vocab_map
        self.device = next(teacher.parameters()).device
        self.bf16 = bf16
        head = linear_head(teacher)
        self.head_w = self.head_b = None
        if head is not None:
            w, b = head.weight.detach(), head.bias
            if vocab_map is not None and not vocab_map.is_identity:
                kept = vocab_map.kept_ids.to(w.device)
                w = w.index_select(0, kept)
                b = None if b is None else b.detach().index_select(0, kept)
            self.head_w, self.head_b = w, b

    def autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def chunks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Callable[[slice], torch.Tensor]:
        with self.autocast():
            if self.head_w is not None:
                h = self.teacher.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                h = h.reshape(-1, h.shape[-1])

                def fn(sl: slice) -> torch.Tensor:
                    with torch.no_grad(), self.autocast():
                        return F.linear(h[sl], self.head_w, self.head_b).float()
                return fn
            logits = self.teacher(input_ids=input_ids, attention_mask=attention_mask).logits
        flat = logits.reshape(-1, logits.shape[-1])
        vm = self.vocab_map
        return lambda sl: (flat[sl] if vm is None or vm.is_identity else vm.restrict_logits(flat[sl])).float()


# --------------------------------------------------------------------------------------------
# loss closure
# --------------------------------------------------------------------------------------------

def make_loss_fn(cfg: Stage1Config, runner: TeacherRunner | None, vocab_map: VocabMap | None, kind: str,
                 tokenizer: Any, cache: Any = None, num_student_tokens: int | None = None):
    """``loss_fn(batch, model)`` for the trainer: teacher (or cache) + student, chunked KL."""
    from glmd_lib.distill.teacher_cache import hidden_teacher_fn, student_space

    if cache is not None and cache.mode != cfg.cache_mode:
        raise Stage1Error(f"the teacher cache in {cache.directory} holds mode {cache.mode!r}, the config asks for "
                          f"cache_mode={cfg.cache_mode!r}; it is never used in the other mode")
    if cache is not None and cache.mode == "hidden" and (runner is None or runner.head_w is None):
        raise Stage1Error("a hidden-state teacher cache needs the TeacherRunner with the kept rows of the teacher's "
                          "output layer (runner.head_w)")
    K = num_student_tokens
    special = tuple(int(i) for i in (tokenizer.all_special_ids or []))

    def to_student(ids: torch.Tensor) -> torch.Tensor:
        return vocab_map.map_ids(ids) if vocab_map is not None else ids

    def loss_fn(batch: dict[str, torch.Tensor], model: nn.Module):
        ids, attn = batch["input_ids"], batch["attention_mask"]
        if kind == "masked":
            ids_in, selected = mask_tokens(ids, attn, tokenizer.mask_token_id, len(tokenizer),
                                           cfg.mlm_probability, special_ids=special)
            loss_mask = (selected if cfg.mlm_loss_on == "masked" else attn.bool()) & attn.bool()
            labels = torch.where(selected, to_student(ids), torch.full_like(ids, -100))
        else:
            ids_in, loss_mask = ids, attn.bool()
            # every position predicts the next token; the last one (or one before padding) has no label
            nxt = to_student(ids[:, 1:])
            labels = torch.full_like(ids, -100)
            labels[:, :-1] = torch.where(attn[:, 1:].bool(), nxt, torch.full_like(nxt, -100))
        if cache is not None and cache.mode == "hidden":
            # exact: the teacher's cached final hidden states times the kept rows of its output layer
            # (the runner's head_w/head_b, the same rows the live path uses; the body is never run)
            teacher_fn = hidden_teacher_fn(cache.lookup_hidden(batch["index"]).to(ids.device),
                                           runner.head_w, runner.head_b)
        elif cache is not None:
            values, t_ids, tail = cache.lookup(batch["index"])
            teacher_fn = sparse_teacher_fn(values.to(ids.device), student_space(t_ids, vocab_map).to(ids.device), K,
                                           tail=tail.to(ids.device), temperature=cfg.temperature)
        else:
            teacher_fn = runner.chunks(ids_in, attn)
        loss, logs = model(to_student(ids_in), attn, teacher_fn, loss_mask, labels)
        return loss, {"kl": logs["kl"], "ce": logs["ce"], "tokens": attn.sum()}

    return loss_fn


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(student: nn.Module, teacher: nn.Module, vocab_map: VocabMap | None, blocks: torch.Tensor,
             batch_size: int, temperature: float, bf16_teacher: bool = False) -> dict[str, float]:
    """Held-out KL (T = 1 and the training T), top-1 agreement, both perplexities, both models' tokens/s.

    Agreement and KL are over the kept vocabulary (the teacher restricted and renormalised). Perplexities:
    the teacher over its full vocabulary; the student over its kept rows with pruned next tokens counted
    as their substitutes (what it can write), so the two are close but not identical measures.
    """
    device = next(student.parameters()).device
    student.eval()
    teacher.eval()
    sums = {"kl": 0.0, "kl_T": 0.0, "agree": 0.0, "s_nll": 0.0, "t_nll": 0.0, "n": 0, "n_next": 0}
    t_time = s_time = 0.0
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16_teacher else contextlib.nullcontext
    for start in range(0, len(blocks), batch_size):
        ids = blocks[start: start + batch_size].to(device)
        attn = torch.ones_like(ids)
        t0 = time.perf_counter()
        with ctx():
            t_logits = teacher(input_ids=ids, attention_mask=attn).logits
        t_logits = t_logits.float()
        t1 = time.perf_counter()
        s_ids = vocab_map.map_ids(ids) if vocab_map is not None else ids
        s_logits = student(input_ids=s_ids, attention_mask=attn).logits.float()
        t2 = time.perf_counter()
        t_time, s_time = t_time + (t1 - t0), s_time + (t2 - t1)
        t_kept = vocab_map.restrict_logits(t_logits) if vocab_map is not None else t_logits
        log_pt = torch.log_softmax(t_kept, -1)
        log_ps = torch.log_softmax(s_logits, -1)
        sums["kl"] += float((log_pt.exp() * (log_pt - log_ps)).sum())
        lpt_T, lps_T = torch.log_softmax(t_kept / temperature, -1), torch.log_softmax(s_logits / temperature, -1)
        sums["kl_T"] += temperature ** 2 * float((lpt_T.exp() * (lpt_T - lps_T)).sum())
        sums["agree"] += float((t_kept.argmax(-1) == s_logits.argmax(-1)).sum())
        sums["n"] += ids.numel()
        sums["s_nll"] += float(F.cross_entropy(s_logits[:, :-1].reshape(-1, s_logits.shape[-1]),
                                               s_ids[:, 1:].reshape(-1), reduction="sum"))
        sums["t_nll"] += float(F.cross_entropy(t_logits[:, :-1].reshape(-1, t_logits.shape[-1]),
                                               ids[:, 1:].reshape(-1), reduction="sum"))
        sums["n_next"] += ids[:, 1:].numel()
    n, nn_ = max(sums["n"], 1), max(sums["n_next"], 1)
    return {"valid_kl": sums["kl"] / n, "valid_kl_at_T": sums["kl_T"] / n, "valid_top1_agreement": sums["agree"] / n,
            "valid_student_ppl": math.exp(sums["s_nll"] / nn_), "valid_teacher_ppl": math.exp(sums["t_nll"] / nn_),
            "valid_tokens": sums["n"], "teacher_tokens_per_s": sums["n"] / max(t_time, 1e-9),
            "student_tokens_per_s": sums["n"] / max(s_time, 1e-9)}


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------

def load_stage1_vocab_map(cfg: Stage1Config, tokenizer: Any) -> VocabMap | None:
    if not cfg.use_vocab_map:
        return None
    vocab_dir = require_complete(Path(cfg.run_dir) / "vocab", "02_vocab_pruning")
    return VocabMap.load(vocab_dir, tokenizer)


def fingerprint(cfg: Stage1Config) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_FINGERPRINT}


@dataclass
class Stage1Result:
    metrics: dict[str, Any]
    out_dir: Path


def run_stage1(cfg: Stage1Config, progress: bool = True, on_log: Any = None) -> dict[str, Any]:
    """Run stage 1 as configured; returns the metrics (also written to ``<run_dir>/stage1/metrics.json``)."""
    set_threads()
    device = get_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    teacher, tokenizer = load_teacher(cfg.teacher, device=device)
    kind = model_kind(teacher.config)
    bf16 = device.type == "cuda" if cfg.teacher_bf16 is None else bool(cfg.teacher_bf16)

    # ---- checks before any work -------------------------------------------------------------
    t_max = int(getattr(teacher.config, "max_position_embeddings", 0) or 0)
    if t_max and cfg.seq_len > t_max:
        raise Stage1Error(f"parameter 'seq_len' = {cfg.seq_len} is above the teacher's maximum of {t_max} positions")
    if cfg.seq_len > cfg.student_max_positions:
        raise Stage1Error(f"parameter 'seq_len' = {cfg.seq_len} is above 'student_max_positions' = "
                          f"{cfg.student_max_positions}; raise student_max_positions or shorten seq_len")
    if kind == "masked" and tokenizer.mask_token_id is None:
        raise Stage1Error(f"the masked-LM teacher {cfg.teacher!r} has a tokenizer without a mask token")
    vocab_map = load_stage1_vocab_map(cfg, tokenizer)
    if vocab_map is not None and vocab_map.vocab_size != int(teacher.config.vocab_size):
        raise Stage1Error(f"the vocabulary map covers {vocab_map.vocab_size} ids, the teacher has "
                          f"{teacher.config.vocab_size}: it belongs to another teacher")
    out_dir = cfg.out_dir

    # ---- data ------------------------------------------------------------------------------------
    per_step = cfg.batch_size * cfg.grad_accum * world
    train_src = cfg.corpus or default_corpus("train")
    valid_src = cfg.valid_corpus or default_corpus("valid")
    blocks = token_blocks(train_src, tokenizer, cfg.seq_len, max_blocks=cfg.steps * per_step, max_lines=cfg.max_lines)
    require_blocks(blocks, cfg.batch_size * world, "training", cfg.corpus or "default (train shards)")
    valid = token_blocks(valid_src, tokenizer, cfg.seq_len, max_blocks=cfg.eval_batches * cfg.batch_size)
    require_blocks(valid, 1, "validation", cfg.valid_corpus or "default (valid.txt)")
    log.info("stage 1: %d training blocks, %d held-out blocks of %d tokens", len(blocks), len(valid), cfg.seq_len)

    # ---- student -------------------------------------------------------------------------------------
    student = build_student(teacher.config, cfg, vocab_map, arch=cfg.student_arch, init=cfg.init,
                            teacher=teacher, seed=cfg.seed).to(device)
    K = int(student.config.vocab_size)

    cache = None
    if cfg.teacher_cache:
        from glmd_lib.distill.teacher_cache import cache_key, ensure_teacher_cache, hidden_mode_problem

        if kind == "masked":
            raise Stage1Error("teacher_cache works with causal-LM teachers only (masked LMs draw new masks each step)")
        if cfg.cache_mode == "hidden":
            problem = hidden_mode_problem(teacher)
            if problem:
                raise Stage1Error(f"cache_mode='hidden': {problem}; use cache_mode='topk' (approximate at high T) "
                                  f"or teacher_cache=False")
        topk = cfg.cache_topk if cfg.cache_mode == "topk" else None
        key = cache_key(cfg.teacher, teacher, blocks, topk, mode=cfg.cache_mode, bf16=bf16)
        ac = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else None
        cache, _ = ensure_teacher_cache(out_dir / "teacher_cache", teacher, blocks, topk, key,
                                        batch_size=cfg.batch_size, autocast=ac, progress=progress)

    # The live path and the hidden-state cache both need the runner: the cache for the kept rows of the
    # teacher's output layer (head_w/head_b). The whole teacher stays in memory either way (the body is
    # not run from the cache, but evaluate() and the parameter count below still use it).
    runner = None if cache is not None and cache.mode == "topk" else TeacherRunner(teacher, vocab_map, bf16)
    distiller = Distiller(student, cfg.temperature, cfg.teacher_topk, cfg.loss_chunk, cfg.ce_weight)
    loss_fn = make_loss_fn(cfg, runner, vocab_map, kind, tokenizer, cache, K)
    batches = IndexBatches(len(blocks), cfg.batch_size,
                           lambda idx: {"input_ids": blocks[idx], "attention_mask": torch.ones_like(blocks[idx]),
                                        "index": idx}, seed=cfg.seed)
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                       max_grad_norm=cfg.max_grad_norm, grad_accum=cfg.grad_accum,
                       checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, seed=cfg.seed,
                       cpu=device.type == "cpu")
    trainer = Trainer(distiller, loss_fn, batches, out_dir, tcfg, fingerprint=fingerprint(cfg), progress=progress,
                      on_log=on_log, desc="stage 1")
    t0 = time.perf_counter()
    summary = trainer.train(resume=cfg.resume)
    train_time = time.perf_counter() - t0
    if not trainer.accelerator.is_main_process:
        return {}

    # ---- evaluation and artifacts ---------------------------------------------------------------
    student = trainer.unwrapped.student
    metrics = {"steps": summary["steps"], "tokens_seen": summary["tokens_seen"], "resumed_from": summary["resumed_from"],
               "final_loss": summary["final_loss"], "train_time_s": train_time,
               "student_params": count_parameters(student), "teacher_params": count_parameters(teacher),
               "num_kept": K, "vocab_size": int(teacher.config.vocab_size), "temperature": cfg.temperature,
               "teacher_cache": cfg.teacher_cache, "processes": world}
    if kind == "causal":
        metrics.update(evaluate(student, teacher, vocab_map, valid, cfg.batch_size, cfg.temperature, bf16))
    save_student(student, out_dir / "student", tokenizer, vocab_map,
                 extra={"teacher": cfg.teacher, "stage": "stage1"})
    atomic_write_json(out_dir / "metrics.json", metrics)
    cfg.save()
    mark_complete(out_dir, ARTIFACTS)
    return metrics


# --------------------------------------------------------------------------------------------
# command line: glmd stage1 --run-dir D --profile P -p key=value ...
# --------------------------------------------------------------------------------------------

def parse_params(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"-p expects key=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v.strip() else None
    return out


def main(argv: list[str] | None = None) -> int:
    """``glmd stage1`` (also ``python -m glmd_lib.distill.stage1``; works under ``accelerate launch``)."""
    from glmd_lib.config.base import ConfigError

    ap = argparse.ArgumentParser(prog="glmd stage1", description="GLMD stage 1: distil the teacher's "
                                 "next-token distributions into the student (notebook 03 runs the same function).")
    ap.add_argument("--run-dir", default=None, help="run directory (default: $GLMD_RUN_DIR or runs/<profile>)")
    ap.add_argument("--profile", default=None, choices=["smoke", "demo", "full"])
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a Stage1Config parameter (values parsed as YAML); repeatable")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        params = parse_params(args.param)
        cfg = Stage1Config.resolve(args.profile, run_dir=args.run_dir, **params)
        metrics = run_stage1(cfg, progress=not args.no_progress)
    except (ConfigError, Stage1Error, ArtifactError) as e:
        print(f"error: {e}")
        return 2
    if metrics:
        width = max(len(k) for k in metrics)
        for k, v in metrics.items():
            print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
