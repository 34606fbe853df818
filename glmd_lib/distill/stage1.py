"""GLMD stage 1: task-agnostic distillation of the teacher's next-token distributions into the student.

``run_stage1(cfg)`` is the whole stage (notebook 03 and ``glmd stage1`` both call it):

0. withdraw the stage's completion marker (:func:`glmd_lib.artifacts.begin_stage`): a run that fails from
   here on leaves the stage incomplete, never an old ``COMPLETE.json`` beside new settings;
1. load the teacher and (if ``use_vocab_map``) the ``VocabMap`` of notebook 02, and check they fit the config;
   the map's ``pruned_mass`` (notebook 02's setting) decides the target: kept tokens renormalised, or each
   pruned token's probability added to its substitute's (:meth:`glmd_lib.vocab.vocab_map.VocabMap.target_logits`);
2. cut the corpus into token blocks (training: the train shards; metrics: ``valid.txt``), lines separated as
   in the teacher's pre-training (``separator``, :func:`glmd_lib.data.blocks.separator_ids`);
3. build the student (teacher's config with the shape overrides, kept vocabulary, random or teacher init);
4. train with the chunked ``T^2 KL`` loss (:mod:`glmd_lib.distill.losses`) on the resumable trainer
   (:mod:`glmd_lib.trainer`), the teacher's logits made on the fly or from its cached final hidden states
   (exact) or top-k logits (approximate) (:mod:`glmd_lib.distill.teacher`, :mod:`glmd_lib.distill.teacher_cache`);
   TinyBERT's and MiniLM's losses (``loss``) read the teacher layers they compare from the same cache, except
   attention probabilities (equal head counts: the live teacher runs);
5. evaluate on held-out text (:mod:`glmd_lib.distill.heldout`; with a shared ``cache_dir`` the teacher's
   held-out hidden states are kept there, so a comparison's runs pay for that teacher pass once), save ``student/``, ``metrics.json`` and ``curves.png`` (the trainer wrote
   ``history.csv``), and mark the stage complete.

Under ``accelerate launch`` every process runs this function; only the main process evaluates and writes.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from glmd_lib.artifacts import STAGES, ArtifactError, artifact, atomic_write_json, atomic_write_text, begin_stage, \
    mark_complete, save_figure
from glmd_lib.config.base import PROFILES, ConfigError, parse_params
from glmd_lib.config.stages import Stage1Config
from glmd_lib.data.blocks import require_blocks, separator_ids, token_blocks
from glmd_lib.data.corpus import default_corpus
from glmd_lib.device import get_device, set_threads, use_bf16
from glmd_lib.distill.figures import stage1_curves
from glmd_lib.distill.distiller import stage1_distiller
from glmd_lib.distill.feature_objective import FEATURE_LOSSES, cached_feature_spec, cached_features, teacher_features
from glmd_lib.distill.heldout import evaluate
from glmd_lib.distill.losses import mask_tokens
from glmd_lib.distill.teacher import TeacherRunner, cached_teacher_fn, topk_cache_problem
from glmd_lib.distill.teacher_cache import TeacherCache, cache_key, ensure_teacher_cache, hidden_mode_problem, key_digest
from glmd_lib.models.student import build_student, save_student
from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind
from glmd_lib.trainer import IndexBatches, TrainConfig, Trainer
from glmd_lib.vocab.vocab_map import VocabMap

log = logging.getLogger(__name__)

ARTIFACTS = list(STAGES["stage1"].files)  # what a finished stage 1 holds (the artifact registry says so)
FIGURE = "curves"  # curves.png: loss, logged cross-entropy and learning rate per step
# settings that change what training computes; a checkpoint written under other values is not resumed
_NOT_IN_FINGERPRINT = ("run_dir", "profile", "device", "resume", "eval_batches", "checkpoint_every",
                       "keep_checkpoints", "max_lines", "loss_chunk")  # loss_chunk: same loss, other summation order


class Stage1Error(ValueError):
    """Stage-1 inputs do not fit together (sequence length, corpus size, vocabulary map ...)."""


# --------------------------------------------------------------------------------------------
# the loss closure
# --------------------------------------------------------------------------------------------

def make_loss_fn(cfg: Stage1Config, runner: TeacherRunner | None, vocab_map: VocabMap | None, kind: str,
                 tokenizer: Any, cache: TeacherCache | None = None, num_student_tokens: int | None = None):
    """``loss_fn(batch, model)`` for the trainer: teacher (live or cached) + student, chunked KL."""
    if cache is not None and cache.mode != cfg.cache_mode:
        raise Stage1Error(f"the teacher cache in {cache.directory} holds mode {cache.mode!r}, the config asks for "
                          f"cache_mode={cfg.cache_mode!r}; it is never used in the other mode")
    if cache is not None and cache.mode == "hidden" and (runner is None or runner.head_w is None):
        raise Stage1Error("a hidden-state teacher cache needs the TeacherRunner with the kept rows of the teacher's "
                          "output layer (runner.head_w)")
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
        feats = None
        if cfg.loss == "ce":  # the no-KD baseline: no teacher in the step
            teacher_fn = None
        elif cfg.loss in FEATURE_LOSSES and cache is None:
            teacher_fn, feats = teacher_features(runner, ids_in, attn, cfg.loss == "minilm")
        elif cache is not None:  # the teacher's body never runs: its outputs (and features) come from disk
            teacher_fn = cached_teacher_fn(cache, batch["index"], runner, vocab_map, num_student_tokens,
                                           cfg.temperature, ids.device)
            feats = cached_features(cache, batch["index"], ids.device) if cfg.loss in FEATURE_LOSSES else None
        else:
            teacher_fn = runner.chunks(ids_in, attn)
        loss, logs = model(to_student(ids_in), attn, teacher_fn, loss_mask, labels, teacher_features=feats)
        count = logs.pop("count")
        return loss, {**logs, "tokens": attn.sum(), "loss_count": count}

    return loss_fn


# --------------------------------------------------------------------------------------------
# the stage: set-up, data, teacher cache, training, evaluation and artifacts
# --------------------------------------------------------------------------------------------

@dataclass
class _Teacher:
    """The frozen teacher and what a run derives from it once."""

    model: nn.Module
    tokenizer: Any
    kind: str  # "causal" | "masked"
    bf16: bool  # the teacher's precision (glmd_lib.device.use_bf16 of cfg.teacher_bf16)
    vocab_map: VocabMap | None
    device: torch.device
    separator: list[int]  # the ids between two corpus lines (cfg.separator resolved for this tokenizer)

    @property
    def pruned_mass(self) -> str:
        return self.vocab_map.pruned_mass if self.vocab_map is not None else "renormalize"


def load_stage1_vocab_map(cfg: Stage1Config, tokenizer: Any) -> VocabMap | None:
    """Notebook 02's ``VocabMap`` (None with ``use_vocab_map=False``: the student keeps the full vocabulary)."""
    if not cfg.use_vocab_map:
        return None
    return VocabMap.load(STAGES["vocab"].require(cfg.run_dir), tokenizer)


def _load_teacher(cfg: Stage1Config) -> _Teacher:
    """Load the teacher and the vocabulary map, and refuse settings that do not fit them, before any work."""
    device = get_device(cfg.device)
    teacher, tokenizer = load_teacher(cfg.teacher, device=device)
    kind = model_kind(teacher.config)
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
    try:
        separator = separator_ids(tokenizer, cfg.separator)
    except ValueError as e:
        raise Stage1Error(str(e)) from None
    return _Teacher(teacher, tokenizer, kind, use_bf16(device, cfg.teacher_bf16), vocab_map, device, separator)


def heldout_blocks(cfg: Stage1Config, tokenizer: Any) -> torch.Tensor:
    """The held-out blocks stage 1 is evaluated on, ``[eval_batches x batch_size, seq_len]``."""
    valid = token_blocks(cfg.valid_corpus or default_corpus("valid"), tokenizer, cfg.seq_len,
                         max_blocks=cfg.eval_batches * cfg.batch_size, separator=cfg.separator)
    require_blocks(valid, 1, "validation", cfg.valid_corpus or "default (valid.txt)")
    return valid


def _blocks(cfg: Stage1Config, tokenizer: Any, world: int, training: bool = True
            ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Training blocks (as many as the steps consume; None unless ``training``) and held-out blocks, both
    ``[n, seq_len]``."""
    per_step = cfg.batch_size * cfg.grad_accum * world
    # max_blocks < steps x batch: fewer distinct blocks, several epochs (the trainer's batches cycle)
    wanted = cfg.steps * per_step if cfg.max_blocks is None else min(cfg.steps * per_step, cfg.max_blocks)
    blocks = None if not training else token_blocks(cfg.corpus or default_corpus("train"), tokenizer, cfg.seq_len,
                          max_blocks=wanted, max_lines=cfg.max_lines, separator=cfg.separator)
    if training:
        require_blocks(blocks, cfg.batch_size * world, "training", cfg.corpus or "default (train shards)")
    valid = heldout_blocks(cfg, tokenizer)
    log.info("stage 1: %d training blocks, %d held-out blocks of %d tokens", len(blocks) if training else 0,
             len(valid), cfg.seq_len)
    return blocks, valid


def _teacher_cache(cfg: Stage1Config, t: _Teacher, student: nn.Module, blocks: torch.Tensor, progress: bool
                   ) -> TeacherCache | None:
    """The teacher cache of these blocks (``teacher_cache=True``), reused when its key matches, else built.
    TinyBERT's and MiniLM's also keep the teacher layers their terms read, unless a term compares attention
    probabilities (never cached: the live teacher runs)."""
    if not cfg.teacher_cache:
        return None
    spec = ([], 0)
    if cfg.loss in FEATURE_LOSSES:
        spec = cached_feature_spec(cfg.loss, student.config, t.model)
        if spec is None:
            log.info("loss=%r compares attention probabilities (never cached): the live teacher runs", cfg.loss)
            return None
        if cfg.cache_mode != "hidden":
            raise Stage1Error(f"loss={cfg.loss!r} reads the teacher's hidden states: use cache_mode='hidden' or "
                              f"teacher_cache=False")
    if t.kind == "masked":
        raise Stage1Error("teacher_cache works with causal-LM teachers only (masked LMs draw new masks each step)")
    if cfg.cache_mode == "topk" and topk_cache_problem(t.vocab_map):
        raise Stage1Error(f"cache_mode='topk': {topk_cache_problem(t.vocab_map)}")
    if cfg.cache_mode == "hidden":
        problem = hidden_mode_problem(t.model)
        if problem:
            raise Stage1Error(f"cache_mode='hidden': {problem}; use cache_mode='topk' (approximate at high T) "
                              f"or teacher_cache=False")
    topk = cfg.cache_topk if cfg.cache_mode == "topk" else None
    key = cache_key(cfg.teacher, t.model, blocks, topk, mode=cfg.cache_mode, bf16=t.bf16, layers=spec[0],
                    values=spec[1])
    where = cfg.out_dir / "teacher_cache" if cfg.cache_dir is None else Path(cfg.cache_dir) / key_digest(key)
    return ensure_teacher_cache(where, t.model, blocks, topk, key, batch_size=cfg.batch_size, progress=progress)[0]


def heldout_hidden(cfg: Stage1Config, t: _Teacher, valid: torch.Tensor) -> torch.Tensor | None:
    """With a shared ``cache_dir`` (a comparison: every run evaluates on the same blocks), the teacher's final
    hidden states of the held-out blocks, built once there; None otherwise (evaluate runs the live teacher)."""
    if cfg.cache_dir is None or t.kind != "causal" or hidden_mode_problem(t.model):
        return None
    key = cache_key(cfg.teacher, t.model, valid, None, mode="hidden", bf16=t.bf16)
    cache = ensure_teacher_cache(Path(cfg.cache_dir) / key_digest(key), t.model, valid, None, key,
                                 batch_size=cfg.batch_size, progress=False)[0]
    return cache.lookup_hidden(torch.arange(len(valid)))


def _train(cfg: Stage1Config, t: _Teacher, student: nn.Module, blocks: torch.Tensor, cache: TeacherCache | None,
           progress: bool, on_log: Any) -> tuple[Trainer, dict[str, Any]]:
    """Train the student on the blocks (resuming from the last checkpoint if asked); returns the trainer and
    its summary with the training time added."""
    # The live path and the hidden-state cache both need the runner: the cache for the kept rows of the
    # teacher's output layer (head_w/head_b). The whole teacher stays in memory either way (the body is
    # not run from the cache, but evaluate() and the parameter count still use it).
    runner = (None if cache is not None and cache.mode == "topk"
              else TeacherRunner(t.model, t.vocab_map, t.bf16, cfg.temperature))
    distiller = stage1_distiller(cfg, student, t.model, t.kind)
    loss_fn = make_loss_fn(cfg, runner, t.vocab_map, t.kind, t.tokenizer, cache, int(student.config.vocab_size))
    batches = IndexBatches(len(blocks), cfg.batch_size,
                           lambda idx: {"input_ids": blocks[idx], "attention_mask": torch.ones_like(blocks[idx]),
                                        "index": idx}, seed=cfg.seed)
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                       lr_floor=cfg.lr_floor, decay_fraction=cfg.decay_fraction, betas=(0.9, cfg.adam_beta2),
                       eps=cfg.adam_eps,
                       max_grad_norm=cfg.max_grad_norm, grad_accum=cfg.grad_accum,
                       checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints, seed=cfg.seed,
                       bf16=use_bf16(t.device, cfg.bf16), cpu=t.device.type == "cpu")
    trainer = Trainer(distiller, loss_fn, batches, cfg.out_dir, tcfg, fingerprint=fingerprint(cfg, t.pruned_mass),
                      progress=progress, on_log=on_log, desc="stage 1")
    t0 = time.perf_counter()
    summary = trainer.train(resume=cfg.resume)
    skipped = distiller.features.skipped if distiller.features is not None else {}
    return trainer, {**summary, "train_time_s": time.perf_counter() - t0, "feature_terms_skipped": skipped}


def _finish(cfg: Stage1Config, t: _Teacher, student: nn.Module, summary: dict[str, Any], valid: torch.Tensor,
            world: int) -> dict[str, Any]:
    """Evaluate on held-out text, write the artifacts and the figure, and mark the stage complete."""
    metrics = {"steps": summary["steps"], "tokens_seen": summary["tokens_seen"], "resumed_from": summary["resumed_from"],
               "final_loss": summary["final_loss"], "train_time_s": summary["train_time_s"],
               "student_params": count_parameters(student), "teacher_params": count_parameters(t.model),
               "num_kept": int(student.config.vocab_size), "vocab_size": int(t.model.config.vocab_size),
               "temperature": cfg.temperature, "teacher_cache": cfg.teacher_cache, "processes": world,
               "pruned_mass": t.pruned_mass, "separator": t.tokenizer.decode(t.separator), "loss": cfg.loss,
               "embedding_dim": cfg.embedding_dim, "feature_terms_skipped": summary["feature_terms_skipped"]}
    if t.kind == "causal":
        metrics.update(evaluate(student, t.model, t.vocab_map, valid, cfg.batch_size, cfg.temperature, t.bf16,
                                teacher_hidden=heldout_hidden(cfg, t, valid)))
    save_student(student, artifact(cfg.run_dir, cfg.stage, "student"), t.tokenizer, t.vocab_map,
                 extra={"teacher": cfg.teacher, "stage": cfg.stage})
    atomic_write_json(artifact(cfg.run_dir, cfg.stage, "metrics.json"), metrics)
    history = pd.read_csv(artifact(cfg.run_dir, cfg.stage, "history.csv"))
    save_figure(stage1_curves(history), cfg.out_dir, FIGURE)
    cfg.save()
    mark_complete(cfg.out_dir, ARTIFACTS + [f"{FIGURE}.png"])
    return metrics


def fingerprint(cfg: Stage1Config, pruned_mass: str = "renormalize") -> dict[str, Any]:
    """What a checkpoint must have been trained with to be resumed: the settings and the map's target."""
    return {**{k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_FINGERPRINT}, "pruned_mass": pruned_mass}


def run_stage1(cfg: Stage1Config, progress: bool = True, on_log: Any = None) -> dict[str, Any]:
    """Run stage 1 as configured; returns the metrics (also written to ``<run_dir>/stage1/metrics.json``).

    Writes every artifact of ``STAGES["stage1"]`` plus ``curves.png`` and marks the stage complete; a rerun
    resumes from the last checkpoint (``resume=True``) or starts over (the old checkpoints are deleted only
    once the new run has one). The marker is withdrawn first, so a failing rerun leaves the stage incomplete.
    Other processes than the main one return ``{}``.
    """
    set_threads()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if os.environ.get("RANK", "0") == "0":  # one process withdraws the marker and saves the config
        begin_stage(cfg)
    t = _load_teacher(cfg)
    # the student (its config derived from the teacher's and validated) before the corpus is read, so a
    # student the teacher's family cannot have fails in seconds, not after tokenisation or training
    student = build_student(t.model.config, cfg, t.vocab_map, arch=cfg.student_arch, init=cfg.init,
                            teacher=t.model, seed=cfg.seed).to(t.device)
    if not cfg.train_embeddings:  # frozen: the optimizer takes only parameters that require a gradient
        for layer in (student.get_input_embeddings(), student.get_output_embeddings()):
            if layer is not None:
                layer.weight.requires_grad_(False)
    if cfg.steps == 0:  # no stage 1 (ablation glmd-no-stage1): the initialised student goes on, measured as it is
        atomic_write_text(artifact(cfg.run_dir, cfg.stage, "history.csv"), "step,loss,lr\n")
        valid = _blocks(cfg, t.tokenizer, world, training=False)[1]
        return _finish(cfg, t, student, {"steps": 0, "tokens_seen": 0, "resumed_from": None, "final_loss": None,
                                         "train_time_s": 0.0, "feature_terms_skipped": {}}, valid, world)
    blocks, valid = _blocks(cfg, t.tokenizer, world)
    cache = _teacher_cache(cfg, t, student, blocks, progress)
    trainer, summary = _train(cfg, t, student, blocks, cache, progress, on_log)
    if not trainer.accelerator.is_main_process:
        return {}
    return _finish(cfg, t, trainer.unwrapped.student, summary, valid, world)


# --------------------------------------------------------------------------------------------
# command line: glmd stage1 --run-dir D --profile P -p key=value ...
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """``glmd stage1`` (also ``python -m glmd_lib.distill.stage1``; works under ``accelerate launch``)."""
    ap = argparse.ArgumentParser(prog="glmd stage1", description="GLMD stage 1: distil the teacher's "
                                 "next-token distributions into the student (notebook 03 runs the same function).")
    ap.add_argument("--run-dir", default=None, help="run directory (default: $GLMD_RUN_DIR or runs/<profile>)")
    ap.add_argument("--profile", default=None, choices=PROFILES)
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a Stage1Config parameter (values parsed as YAML); repeatable")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # "stage1.lr" (the pipeline's stage-qualified form) means "lr" here; any other stage's key is refused
        params = {k.removeprefix(f"{Stage1Config.stage}."): v for k, v in parse_params(args.param).items()}
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
