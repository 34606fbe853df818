"""The student's config: derived from the teacher's (or a fresh GPT-2/BERT one) and validated before training.

:func:`derive_student_config` is the one entry point: the teacher's config with the student's shape and
vocabulary, per-layer and head-sized fields fitted (:mod:`glmd_lib.models.families`), then saved to a
temporary folder, reloaded and built on the meta device (:func:`validate_student_config`), so a config that
transformers refuses fails in seconds with the field named, not after a training run when it is saved.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
from typing import Any

import torch

from glmd_lib.models.families import (GATED_MLP, INTERMEDIATE_ATTR, FamilyError, depth_problems, fit_depth,
                                      fit_head_size, fit_positions, per_layer_fields)
from glmd_lib.models.teacher import model_class, model_kind
from glmd_lib.vocab.vocab_map import VocabMap

SHAPE_KEYS = ("layers", "hidden", "heads", "kv_heads", "intermediate", "max_positions")


class StudentError(ValueError):
    """A student cannot be built, saved or loaded as asked; the message names the cause."""


# --------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------

def normalize_shape(shape: Any) -> dict[str, Any]:
    """A ``StudentShape`` (or any object/dict with ``student_*`` or short keys) -> dict of the short keys."""
    if dataclasses.is_dataclass(shape):
        shape = {f.name: getattr(shape, f.name) for f in dataclasses.fields(shape)}
    shape = dict(shape or {})
    out: dict[str, Any] = {}
    for k in SHAPE_KEYS:
        for key in (f"student_{k}", k):
            if shape.get(key) is not None:
                out[k] = int(shape[key])
                break
    unknown = set(shape) - {f"student_{k}" for k in SHAPE_KEYS} - set(SHAPE_KEYS) - {"student_arch", "arch"}
    if unknown and not dataclasses.is_dataclass(shape):
        # a Stage1Config has many other fields; a plain dict with stray keys is probably a typo
        stray = [k for k in unknown if k.startswith("student_") or k in ("layer", "hidden_size", "num_layers")]
        if stray:
            raise StudentError(f"unknown student shape key(s) {sorted(stray)}; known: {list(SHAPE_KEYS)}")
    for k, v in out.items():
        if v < 1:
            raise StudentError(f"student shape {k!r} must be >= 1, got {v}")
    if "hidden" in out and "heads" in out and out["hidden"] % out["heads"]:
        raise StudentError(f"student hidden size {out['hidden']} is not divisible by its {out['heads']} heads")
    if "kv_heads" in out and out.get("heads", out["kv_heads"]) % out["kv_heads"]:
        raise StudentError(f"student heads {out.get('heads')} are not a multiple of its {out['kv_heads']} KV heads")
    return out


def _round_up(n: float, multiple: int = 64) -> int:
    return int(math.ceil(n / multiple) * multiple)


def _special_ids(teacher_config: Any, vocab_map: VocabMap | None) -> dict[str, int | None]:
    """bos/eos/pad ids of the teacher, translated into student rows."""
    out = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(teacher_config, name, None)
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        if v is not None and vocab_map is not None:
            v = int(vocab_map.map_ids(torch.tensor([int(v)]))[0])
        out[name] = v
    return out


def student_config(teacher_config: Any, shape: dict | Any, vocab_size: int, arch: str = "same",
                   special: dict[str, int | None] | None = None):
    """The student's ``PretrainedConfig``: the teacher's (``same``/``llama``) or a fresh ``gpt2``/``bert`` one.

    Not validated: :func:`derive_student_config` is the checked entry point.
    """
    s = normalize_shape(shape)
    special = special or {}
    kind = model_kind(teacher_config)
    if arch in ("same", "llama"):
        cfg = _same_family_config(teacher_config, s, arch, kind)
        cfg.vocab_size = vocab_size
        for k, v in special.items():
            setattr(cfg, k, v)
        if "max_positions" in s:
            fit_positions(cfg, s["max_positions"])  # after the pad id: RoBERTa's positions start after it
    elif arch in ("gpt2", "bert"):
        cfg = _fresh_config(arch, kind, s, vocab_size, special)
    else:
        raise StudentError(f"unknown student_arch {arch!r}; use 'same', 'llama', 'gpt2' or 'bert'")
    cfg.architectures = None
    return cfg


def _same_family_config(teacher_config: Any, s: dict[str, int], arch: str, kind: str):
    """A copy of the teacher's config (or a default Llama one) with the student's shape.

    Per-layer fields follow the depth and head-sized fields the head size (:mod:`glmd_lib.models.families`).
    """
    from transformers import LlamaConfig

    if arch == "llama" and kind != "causal":
        raise StudentError("a Llama (causal) student cannot learn a masked-LM teacher's distributions; "
                           "use student_arch='same' or 'bert'")
    same = arch == "same" or teacher_config.model_type == "llama"
    cfg = copy.deepcopy(teacher_config if same else LlamaConfig())
    try:
        fit_depth(cfg, int(cfg.num_hidden_layers), s.get("layers", int(cfg.num_hidden_layers)))
    except FamilyError as e:
        raise StudentError(str(e)) from e
    names = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
             "kv_heads": "num_key_value_heads",
             "intermediate": INTERMEDIATE_ATTR.get(cfg.model_type, "intermediate_size")}
    for k, attr in names.items():
        if k in s:
            if not hasattr(cfg, attr):
                raise StudentError(f"the {cfg.model_type} config has no {attr!r}: cannot set student {k}")
            setattr(cfg, attr, s[k])
    heads = int(cfg.num_attention_heads)
    if hasattr(cfg, "num_key_value_heads"):
        if "kv_heads" not in s:  # StudentShape: None = as many KV heads as heads
            cfg.num_key_value_heads = heads
        if heads % cfg.num_key_value_heads:
            raise StudentError(f"student heads {heads} are not a multiple of its {cfg.num_key_value_heads} KV heads")
    if "hidden" in s or "heads" in s:
        fit_head_size(cfg, int(cfg.hidden_size) // heads)
    if "intermediate" not in s and "hidden" in s:
        width = _round_up(cfg.hidden_size * 8 / 3) if cfg.model_type in GATED_MLP else 4 * cfg.hidden_size
        setattr(cfg, names["intermediate"], width)
    return cfg


def _fresh_config(arch: str, kind: str, s: dict[str, int], vocab_size: int, special: dict[str, int | None]):
    """A new GPT-2 (causal teachers) or BERT (masked teachers) config of the student's shape."""
    from transformers import BertConfig, GPT2Config

    hidden = s.get("hidden", 256)
    if arch == "gpt2":
        if kind != "causal":
            raise StudentError("a GPT-2 (causal) student cannot learn a masked-LM teacher; use 'same' or 'bert'")
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=s.get("layers", 4),
                          n_head=s.get("heads", 4), n_inner=s.get("intermediate", 4 * hidden),
                          n_positions=s.get("max_positions", 512), tie_word_embeddings=True, **special)
    if kind != "masked":
        raise StudentError("a BERT (masked-LM) student of a causal teacher would see the tokens it must "
                           "predict; use student_arch='same', 'llama' or 'gpt2'")
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=s.get("layers", 4),
                      num_attention_heads=s.get("heads", 4), intermediate_size=s.get("intermediate", 4 * hidden),
                      max_position_embeddings=s.get("max_positions", 512),
                      pad_token_id=special.get("pad_token_id") or 0)


def validate_student_config(cfg: Any) -> Any:
    """Check that ``cfg`` saves, reloads and builds a model; returns the reloaded config.

    Run before any training (by :func:`derive_student_config`, hence by ``build_student``), so that a config
    transformers refuses fails in seconds, with the field named, instead of when the trained student is
    saved. The model is built on the meta device (no memory, no initialisation).
    """
    from transformers import AutoConfig

    where = f"the {cfg.model_type} student config"
    problems = depth_problems(cfg, int(cfg.num_hidden_layers))
    if problems:
        raise StudentError(f"{where}: {'; '.join(problems)}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg.save_pretrained(tmp)
            reloaded = AutoConfig.from_pretrained(tmp)
        with torch.device("meta"):
            model_class(reloaded).from_config(reloaded)
    except Exception as e:  # noqa: BLE001 - transformers raises many types; its message names the field
        raise StudentError(f"{where} is invalid ({type(e).__name__}): {e}") from e
    for name in ("num_hidden_layers", "hidden_size", "vocab_size", *per_layer_fields(cfg, cfg.num_hidden_layers)):
        before, after = (_plain(getattr(c, name, None)) for c in (cfg, reloaded))
        if before != after:
            raise StudentError(f"{where}: field {name!r} does not survive saving and reloading "
                               f"({before!r} became {after!r})")
    return reloaded


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # JSON has no tuples


def embedding_dim_of(shape: dict | Any, cfg: Any) -> int | None:
    """The factorised embedding width ``embedding_dim`` asked for by ``shape`` (None: a plain embedding),
    checked against the student's ``cfg``: below its hidden size, and a causal LM (the output layer that shares
    the table is a next-token head)."""
    dim = shape.get("embedding_dim") if isinstance(shape, dict) else getattr(shape, "embedding_dim", None)
    if dim is None:
        return None
    hidden = hidden_size_of(cfg)
    if not 0 < int(dim) < hidden:
        raise StudentError(f"embedding_dim = {dim} must be in (0, student hidden = {hidden})")
    if model_kind(cfg) != "causal":
        raise StudentError("a factorised embedding (embedding_dim) is built for causal-LM students only")
    return int(dim)


def derive_student_config(teacher_config: Any, shape: dict | Any, vocab_map: VocabMap | None = None,
                          arch: str = "same"):
    """The student's validated config for ``teacher_config``: call it before loading data or training.

    ``vocab_map`` gives the student's vocabulary size and the rows of the special tokens (None: the
    teacher's full vocabulary).
    """
    V = int(teacher_config.vocab_size)
    if vocab_map is not None and vocab_map.vocab_size != V:
        raise StudentError(f"the vocabulary map covers {vocab_map.vocab_size} teacher ids but the teacher has "
                           f"{V}: it was built for another tokenizer/teacher")
    K = vocab_map.num_kept if vocab_map is not None else V
    cfg = student_config(teacher_config, shape, K, arch, _special_ids(teacher_config, vocab_map))
    validate_student_config(cfg)
    return cfg


def hidden_size_of(config: Any) -> int:
    """The model width, by either name a config may use (``hidden_size``; GPT-2's ``n_embd``); 0 if neither."""
    return int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
