"""What the workbench must know about Hugging Face architecture families beyond their config's shape fields.

A student of architecture ``same`` is the teacher's config with fewer or narrower layers. Most fields follow
by themselves; the ones here do not:

* **per-layer fields.** Gemma-2/3 and Qwen2/3 (and many newer families) declare one entry per layer
  (``layer_types``: sliding or full attention, ``mlp_layer_types``, ``no_rope_layers`` ...) or layer indices
  (``mlp_only_layers``). A student with the teacher's list and fewer layers is refused by transformers when
  the config is saved (``num_hidden_layers (4) must be equal to the number of layer_types (18)``).
  :func:`fit_depth` gives them the student's depth, keeping the teacher's pattern (:func:`resample_layers`).
* **head-size fields.** ``head_dim`` (Gemma, Qwen3: not always hidden/heads), ``query_pre_attn_scalar``
  (Gemma's query scale, the head size in the released models) and the per-frequency RoPE factors of
  Phi-3's long-context ``longrope`` (one per rotary dimension pair) follow the student's head size.
* **final logit transforms.** Some families change the logits after the output layer (Gemma-2 soft-caps
  them, Cohere and Granite scale them). The workbench makes teacher logits from the last hidden state and
  the output layer's kept rows, which is exact only without such a transform: :func:`declared_logit_transform`
  reads it from the config (a numerical check cannot see a soft-cap on a small model's small logits).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

# config attribute -> the value at which the family's logits are just the output layer's (None/0: off)
LOGIT_TRANSFORMS = {
    "final_logit_softcapping": None,  # Gemma-2/3/3n/4, VaultGemma, T5Gemma: cap * tanh(logits / cap)
    "logit_softcapping": None,
    "logits_soft_cap": None,          # RecurrentGemma
    "output_logit_soft_cap": None,    # xLSTM
    "logit_scale": 1.0,               # Cohere, Cohere2: logits * scale
    "logits_scaling": 1.0,            # Granite (and its MoE/hybrid variants): logits / scaling
    "lm_head_multiplier": 1.0,        # Falcon-H1: logits * multiplier
    "output_multiplier": 1.0,
}

# families whose MLP is gated (gate, up, down: 3 matrices), so a default width of 8/3 x hidden gives the
# parameter count of a 4 x hidden two-matrix MLP; everything else defaults to 4 x hidden
GATED_MLP = {"llama", "mistral", "mixtral", "ministral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma",
             "gemma2", "gemma3_text", "phi3", "olmo", "olmo2", "olmo3", "cohere", "cohere2", "granite",
             "smollm3", "stablelm", "helium", "glm", "exaone4"}

# families whose position ids start after the padding id (RoBERTa's fairseq heritage): n usable positions
# need n + pad_token_id + 1 position embeddings (RoBERTa-base: 512 + 1 + 1 = 514)
PADDED_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                    "data2vec-text", "ibert", "longformer", "luke"}

# shape attribute per family where it is not the common name (GPT-2 and relatives say n_inner)
INTERMEDIATE_ATTR = {"gpt2": "n_inner", "gpt_bigcode": "n_inner", "gptj": "n_inner", "codegen": "n_inner"}

# per-layer lists are found by length; these hold layer *indices* instead (any length)
INDEX_LISTS = ("mlp_only_layers", "moe_layers", "attn_layer_indices", "rope_scaling_layers", "local_layer_ids")
# layer counts (the first n layers are special): scaled with the depth
COUNT_FIELDS = ("max_window_layers", "first_k_dense_replace")
_PER_LAYER_NAME = re.compile(r"layer|block|window")


class FamilyError(ValueError):
    """A config field cannot be fitted to the student; the message names the field."""


def declared_logit_transform(config: Any) -> str | None:
    """``"name = value"`` of a transform the config declares after the output layer, or None.

    Multimodal configs declare it on their text config, which is read too.
    """
    configs = [config]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is not config:
        configs.append(text)
    for cfg in configs:
        for name, identity in LOGIT_TRANSFORMS.items():
            value = getattr(cfg, name, None)
            if value is None or value == identity or (identity is None and not value):
                continue
            return f"{name} = {value}"
    return None


def layer_map(n_student: int, n_teacher: int) -> list[int]:
    """Teacher layer for each student layer: evenly spaced, first and last kept (one layer: the last)."""
    if n_student == 1:
        return [n_teacher - 1]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def _period(values: list[Any]) -> int | None:
    """The shortest p with ``values[i] == values[i % p]`` for all i, if the list repeats at least twice."""
    for p in range(1, len(values) // 2 + 1):
        if all(values[i] == values[i % p] for i in range(len(values))):
            return p
    return None


def resample_layers(values: list[Any] | tuple, n: int) -> list[Any]:
    """A per-layer list for ``n`` layers that keeps the teacher's pattern.

    A repeating pattern (Gemma-2: sliding, full; Gemma-3: five sliding, one full) is continued, as the
    family's own config would lay out ``n`` layers. Otherwise (Qwen2: the first ``max_window_layers`` full,
    the rest sliding) student layer i takes the entry of teacher layer :func:`layer_map` ``[i]``, the layer
    ``init='teacher'`` copies into it. If the teacher has full-attention layers and the student would have
    none (a 4-layer Gemma-3 student of a 5:1 pattern), its last layer becomes one: a model whose layers all
    attend within a window cannot relate tokens further apart than the window.
    """
    values = list(values)
    p = _period(values)
    out = [values[i % p] for i in range(n)] if p else [values[j] for j in layer_map(n, len(values))]
    if "full_attention" in values and "full_attention" not in out:
        out[-1] = "full_attention"
    return out


def per_layer_fields(config: Any, depth: int) -> list[str]:
    """Names of the config's list fields with one entry per layer (found by name and length ``depth``)."""
    return [k for k, v in vars(config).items()
            if not k.startswith("_") and isinstance(v, (list, tuple)) and len(v) == depth
            and k not in INDEX_LISTS and _PER_LAYER_NAME.search(k) and not k.endswith("_token_id")]


def fit_depth(config: Any, n_teacher: int, n_student: int) -> list[str]:
    """Give every per-layer field of ``config`` (a copy of the teacher's) the student's depth, in place.

    Call it before changing ``num_hidden_layers`` (the fields are recognised by the teacher's depth).
    Returns the names of the fields changed.
    """
    changed = []
    if n_student == n_teacher:
        return changed
    for name in per_layer_fields(config, n_teacher):
        _set(config, name, resample_layers(getattr(config, name), n_student))
        changed.append(name)
    for name in INDEX_LISTS:
        idx = getattr(config, name, None)
        if isinstance(idx, (list, tuple)) and idx:
            member = resample_layers([i in set(idx) for i in range(n_teacher)], n_student)
            _set(config, name, [i for i, m in enumerate(member) if m])
            changed.append(name)
    for name in COUNT_FIELDS:
        v = getattr(config, name, None)
        if isinstance(v, int) and not isinstance(v, bool):
            _set(config, name, min(n_student, round(v * n_student / n_teacher)))
            changed.append(name)
    return changed


def depth_problems(config: Any, depth: int) -> list[str]:
    """Per-layer-looking list fields whose length is not ``depth`` (named, for an error message)."""
    return [f"{k} has {len(v)} entries for {depth} layers" for k, v in vars(config).items()
            if not k.startswith("_") and isinstance(v, (list, tuple)) and k.endswith("layer_types")
            and len(v) != depth]


def fit_head_size(config: Any, head_dim: int) -> None:
    """Fields sized by the attention head: ``head_dim``, Gemma's query scale, longrope's per-pair factors.

    A read-only ``head_dim`` (Falcon computes it from hidden/heads) is left alone.
    """
    prop = getattr(type(config), "head_dim", None)
    if hasattr(config, "head_dim") and not (isinstance(prop, property) and prop.fset is None):
        config.head_dim = head_dim
    if getattr(config, "query_pre_attn_scalar", None) is not None:
        config.query_pre_attn_scalar = head_dim
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict):
        _fit_rope_factors(rope, head_dim, getattr(config, "partial_rotary_factor", None))


def _fit_rope_factors(params: dict, head_dim: int, partial: float | None) -> None:
    """Resample ``short_factor``/``long_factor`` (one per rotary dimension pair) to the student's head size.

    Linear interpolation keeps the teacher's curve of per-frequency scales. Nested dicts (Gemma-3: one set
    of parameters per attention type) are walked.
    """
    factor = params.get("partial_rotary_factor", partial) or 1.0
    pairs = int(head_dim * factor) // 2
    for key, value in params.items():
        if isinstance(value, dict):
            _fit_rope_factors(value, head_dim, partial)
        elif key in ("short_factor", "long_factor") and isinstance(value, list) and value and len(value) != pairs:
            old = np.linspace(0.0, 1.0, len(value))
            params[key] = [float(x) for x in np.interp(np.linspace(0.0, 1.0, pairs), old, value)]


def fit_positions(config: Any, max_positions: int) -> None:
    """``max_position_embeddings`` for ``max_positions`` usable positions (RoBERTa-style offsets added)."""
    extra = 0
    if config.model_type in PADDED_POSITIONS:
        extra = int(config.pad_token_id or 0) + 1
    config.max_position_embeddings = max_positions + extra


def _set(config: Any, name: str, value: Any) -> None:
    try:
        setattr(config, name, value)
    except (AttributeError, TypeError, ValueError) as e:
        raise FamilyError(f"cannot set {config.model_type} config field {name!r} for the student: {e}") from e
