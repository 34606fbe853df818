"""The methods GLMD is compared with, and its ablations (issue #13): each a named set of ordinary parameters.

A method is not code: it is stage-qualified pipeline keys (``stage1.loss``, ``stage2.task_loss``,
``vocab.substitute`` ...) whose meaning each stage's config documents, so a method's run is an ordinary
``glmd run -p key=value ...`` and every artifact says what it was trained with. :func:`method_params` checks a
method's keys and values against the config classes (a typo or a value a stage does not know is a
``ConfigError`` naming the method), so the comparison never starts a run the pipeline would refuse.

Baselines keep the teacher's whole vocabulary (``stage1.use_vocab_map=False``: the student gets no map, the
vocabulary stage's outputs stay shared by every method). TinyBERT's task stage is its own ``task_loss``: pass 2a
its intermediate-layer distillation on the task inputs, pass 2b its prediction-layer soft targets. kd and finetune
run only the task pass (``steps_2b`` steps) where GLMD runs 2a and 2b: a comparison at equal budget sets ``stage2.steps_2b`` to
GLMD's ``steps_2a + steps_2b`` for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glmd_lib.config import stages
from glmd_lib.config.base import ConfigError, StageConfig


@dataclass(frozen=True)
class Method:
    """One row of the comparison: its short name, what it is, its parameters and which signals it uses."""

    name: str
    summary: str
    params: dict[str, Any] = field(default_factory=dict)
    uses_gold_labels: bool = False
    uses_intermediate_layers: bool = False
    # stage1.embedding_dim is set by glmd compare, once the vocabulary stage has run, to the width E at which this
    # full-vocabulary student has GLMD's parameter count (matched_embedding_dim); the registered E stands otherwise
    matches_glmd_size: bool = False


_FULL_VOCAB = {"stage1.use_vocab_map": False}
_NO_CACHE = {"stage1.teacher_cache": False}  # no teacher in stage 1: nothing to cache
_GLMD_STAGE2 = {"stage2.task_loss": "glmd"}


def _m(name: str, summary: str, params: dict[str, Any], gold: bool = False, layers: bool = False) -> Method:
    return Method(name, summary, params, gold, layers)


METHODS: dict[str, Method] = {m.name: m for m in [
    _m("no-kd", "no distillation: next-token CE pre-training on the same tokens, then gold-label fine-tuning",
       {**_FULL_VOCAB, **_NO_CACHE, "stage1.loss": "ce", "stage2.task_loss": "finetune"}, gold=True),
    _m("kd", "vanilla KD (Hinton / DistilBERT): soft targets at T + the student's own CE; task stage soft + gold",
       {**_FULL_VOCAB, "stage1.loss": "kd", "stage1.ce_weight": 1.0, "stage2.task_loss": "kd"}, gold=True),
    _m("tinybert", "TinyBERT: hidden MSE through a projection + attention KL + logit KL in stage 1 and on the task "
                   "inputs (2a); then soft task targets (2b)",
       {**_FULL_VOCAB, "stage1.loss": "tinybert", "stage2.task_loss": "tinybert"}, layers=True),
    _m("minilm", "MiniLM: last-layer attention and value-relation KL + logit KL; then gold-label fine-tuning",
       {**_FULL_VOCAB, "stage1.loss": "minilm", "stage2.task_loss": "finetune"}, gold=True, layers=True),
    _m("glmd-vc", "GLMD without vocabulary compression", {**_FULL_VOCAB, **_GLMD_STAGE2}),
    _m("glmd", "GLMD: vocabulary KL over the kept half of the vocabulary, passes 2a + 2b, no gold label",
       {"vocab.keep_rate": 0.5, **_GLMD_STAGE2}),
    _m("glmd+al", "GLMD plus a trained ALBERT-style factorised embedding (E = 16)",
       {"vocab.keep_rate": 0.5, "stage1.embedding_dim": 16, **_GLMD_STAGE2}),
    Method("dim-reduction", "full vocabulary, factorised embedding instead of pruning (E set by glmd compare to GLMD's "
                            "parameter count; 32 outside a comparison)",
           {**_FULL_VOCAB, "stage1.embedding_dim": 32, **_GLMD_STAGE2}, matches_glmd_size=True),
    _m("glmd-no-stage1", "GLMD without stage 1 (the untrained student goes to stage 2)",
       {"stage1.steps": 0, **_GLMD_STAGE2}),
    _m("glmd-no-2a", "GLMD without pass 2a", {"stage2.steps_2a": 0, **_GLMD_STAGE2}),
    _m("glmd-no-2b", "GLMD without pass 2b", {"stage2.steps_2b": 0, **_GLMD_STAGE2}),
    _m("glmd-t1", "GLMD at T = 1 instead of 15", {"stage1.temperature": 1.0, "stage2.temperature": 1.0}),
    _m("glmd-sub-unk", "GLMD, pruned tokens become UNK", {"vocab.substitute": "unk"}),
    _m("glmd-sub-dot", "GLMD, substitutes by dot product of teacher embeddings", {"vocab.substitute": "dot"}),
    _m("glmd-sub-cosine", "GLMD, substitutes by cosine of teacher embeddings", {"vocab.substitute": "cosine"}),
    _m("glmd-pruned-substitute", "GLMD, pruned mass added to the substitutes instead of renormalised",
       {"vocab.pruned_mass": "substitute"}),
]}


def stage_classes() -> dict[str, type[StageConfig]]:
    """Stage prefix of a qualified key (``stage1``) -> its config class."""
    return {obj.stage: obj for obj in vars(stages).values()
            if isinstance(obj, type) and issubclass(obj, StageConfig) and getattr(obj, "notebook", "")}


def validate_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against the stage configs (each key a parameter of its stage; each stage's values
    resolved together, so types, ranges and cross-field rules such as kd's ``ce_weight`` > 0 apply); a problem is
    a ``ConfigError`` naming the method ``name``. Returns the values as the configs hold them."""
    classes, by_stage = stage_classes(), {}
    for key, value in params.items():
        stage, _, key_name = key.rpartition(".")
        if stage not in classes:
            raise ConfigError(f"method {name!r}: key {key!r} names no stage; stages are {sorted(classes)}")
        if key_name not in classes[stage].field_names():
            raise ConfigError(f"method {name!r}: {classes[stage].__name__} has no parameter {key_name!r} (key {key!r})")
        by_stage.setdefault(stage, {})[key_name] = value
    out = {}
    for stage, mine in by_stage.items():
        try:
            cfg = classes[stage].resolve("smoke", run_dir="unused", **mine)
        except ConfigError as e:
            raise ConfigError(f"method {name!r}: {e}") from None
        out.update({f"{stage}.{k}": getattr(cfg, k) for k in mine})
    return out


def method_params(name: str) -> dict[str, Any]:
    """The validated stage-qualified parameters of the registered method ``name``."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return validate_params(name, METHODS[name].params)


def matched_embedding_dim(kept: int, vocab_size: int, hidden: int) -> int:
    """The factorised width E whose embedding (``V*E + 2*E*H``, full vocabulary) costs what GLMD's tied pruned
    one (``K*H``) does: the ``dim-reduction`` row at GLMD's parameter count."""
    return max(1, round(kept * hidden / (vocab_size + 2 * hidden)))
