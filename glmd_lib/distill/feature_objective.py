"""The intermediate-layer objectives of stage 1 (``loss='tinybert'`` / ``'minilm'``): runs and the trained module.

:mod:`glmd_lib.distill.feature_losses` is the math; this module gets its inputs. One forward pass of each model
with ``output_hidden_states`` and ``output_attentions`` (attention probabilities exist only in the ``eager``
attention implementation: :func:`use_eager_attention`), plus, for MiniLM, a hook on the last layer's value
projection (transformers does not return the values). The teacher's pass also yields its final hidden states,
so the logit KL of the same step needs no second teacher forward.

:class:`FeatureObjective` is an ``nn.Module`` because TinyBERT's projections are *trained*: it sits inside the
:class:`~glmd_lib.distill.distiller.Distiller` (so the optimizer and DDP see it, and checkpoints resume it) and
not inside the student (so the saved student is the plain model).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from glmd_lib.device import autocast
from glmd_lib.distill.feature_losses import FeatureLossError, attention_kl, hidden_mse, relation_heads, \
    uniform_layer_map, value_relation_kl
from glmd_lib.distill.losses import TeacherFn

log = logging.getLogger(__name__)

FEATURE_LOSSES = ("tinybert", "minilm")


@dataclass
class Features:
    """What one forward pass exposes: embeddings + one hidden state per layer (the last after the final norm,
    = ``last_hidden``), attention probabilities per layer [B, H, T, T], the last layer's values [B, T, Dv]."""

    hidden_states: tuple[torch.Tensor, ...]
    attentions: tuple[torch.Tensor, ...]
    values: torch.Tensor | None
    last_hidden: torch.Tensor | None  # None when read from a teacher cache (the logit KL reads its own copy)


def use_eager_attention(model: nn.Module) -> None:
    """Attention probabilities are returned only by the eager implementation (SDPA never forms them)."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")


def value_projection(model: nn.Module) -> nn.Module:
    """The last transformer layer's value projection (Llama-style ``layers[-1].self_attn.v_proj``)."""
    layers = getattr(model.base_model, "layers", None)
    attn = getattr(layers[-1], "self_attn", None) if layers is not None and len(layers) else None
    if attn is None or not isinstance(getattr(attn, "v_proj", None), nn.Linear):
        raise FeatureLossError(f"MiniLM's value relations need a Llama-style attention (layers[-1].self_attn.v_proj); "
                               f"the {type(model).__name__} has none: use loss='tinybert' or 'glmd'")
    return attn.v_proj


def run_features(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, values: bool) -> Features:
    """One forward pass of ``model``'s body with hidden states, attentions and (``values``) the last values."""
    captured: dict[str, torch.Tensor] = {}
    hook = (value_projection(model).register_forward_hook(lambda m, i, o: captured.__setitem__("v", o))
            if values else None)
    try:
        out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                               output_attentions=True)
    finally:
        if hook is not None:
            hook.remove()
    if not out.attentions or out.attentions[0] is None:
        raise FeatureLossError(f"the {type(model).__name__} returned no attention probabilities; it must run with "
                               f"attn_implementation='eager'")
    return Features(tuple(out.hidden_states), tuple(out.attentions), captured.get("v"), out.last_hidden_state)


@torch.no_grad()
def teacher_features(runner: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, values: bool
                     ) -> tuple[TeacherFn, Features]:
    """The teacher's features and its ``teacher_fn`` for the logit KL, from one forward pass.

    ``runner``: the stage's :class:`~glmd_lib.distill.teacher.TeacherRunner`, whose kept rows of the output
    layer (``head_w``/``head_b``) and target (``target``: the map's ``pruned_mass``) turn the final hidden
    states into the KL's target chunk by chunk, at the teacher's precision.
    """
    if runner.head_w is None:
        raise FeatureLossError("intermediate-layer losses need a teacher whose logits are a plain linear layer of "
                               "its final hidden states (Llama, GPT-2, ...)")
    with autocast(runner.device, runner.bf16):
        feats = run_features(runner.teacher, input_ids, attention_mask, values)
    h = feats.last_hidden.reshape(-1, feats.last_hidden.shape[-1])

    def fn(sl: slice) -> torch.Tensor:
        with torch.no_grad(), autocast(runner.device, runner.bf16):
            logits = F.linear(h[sl].to(runner.head_w.dtype), runner.head_w, runner.head_b)
        return runner.target(logits)
    return fn, feats


def _heads(config: Any) -> int:
    return int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))


def _tinybert_layers(layer_map: list[int]) -> list[int]:
    """The ``hidden_states`` indices TinyBERT reads of the teacher: its embeddings and the mapped layers."""
    return [0] + [j + 1 for j in layer_map]


def cached_feature_spec(method: str, student_config: Any, teacher: nn.Module) -> tuple[list[int], int] | None:
    """What a teacher cache has to keep for ``method``'s terms: (``hidden_states`` indices, width of the last
    layer's values, 0 = none). None when a term compares attention probabilities (equal head counts): those
    ([B, H, T, T] per layer) are never cached, so the live teacher runs."""
    if _heads(student_config) == _heads(teacher.config):
        return None
    if method == "tinybert":
        layers = uniform_layer_map(int(student_config.num_hidden_layers), int(teacher.config.num_hidden_layers))
        return _tinybert_layers(layers), 0
    return [], int(value_projection(teacher).out_features)


def cached_features(cache: Any, index: torch.Tensor, device: torch.device) -> Features:
    """The teacher's features of the training blocks ``index`` from a teacher cache built with
    :func:`cached_feature_spec`'s key (``cache.key["layers"]`` / ``["values"]``), as fp32 on ``device``;
    ``hidden_states[i]`` is None for a layer the cache does not keep (no term reads it)."""
    layers, values = cache.lookup_features(index)
    wanted = cache.key.get("layers", [])
    hidden: list[torch.Tensor | None] = [None] * (max(wanted, default=-1) + 1)
    for n, i in enumerate(wanted):
        hidden[i] = layers[:, :, n].to(device).float()
    return Features(tuple(hidden), (), None if values is None else values.to(device).float(), None)


class FeatureObjective(nn.Module):
    """TinyBERT's or MiniLM's intermediate-layer terms between a student and a teacher of given configs.

    ``skipped`` records, term by term, why a term is left out (attention distributions are compared head by
    head, so only when both models have as many heads); the stage writes it into ``metrics.json``.
    """

    def __init__(self, method: str, student_config: Any, teacher_config: Any, causal: bool):
        super().__init__()
        if method not in FEATURE_LOSSES:
            raise FeatureLossError(f"unknown intermediate-layer loss {method!r}; known: {FEATURE_LOSSES}")
        self.method, self.causal = method, causal
        hs, ht = int(student_config.hidden_size), int(teacher_config.hidden_size)
        self.teacher_heads = _heads(teacher_config)
        self.skipped: dict[str, str] = {}
        if _heads(student_config) != self.teacher_heads:
            self.skipped["attention"] = (f"the student has {_heads(student_config)} attention heads, the teacher "
                                         f"{self.teacher_heads}: attention distributions are matched head by head")
        self.layer_map = uniform_layer_map(int(student_config.num_hidden_layers), int(teacher_config.num_hidden_layers))
        # TinyBERT: W_e for the embeddings, W_h shared by the layers (trained, never saved with the student)
        self.project = nn.ModuleList([nn.Linear(hs, ht), nn.Linear(hs, ht)]) if method == "tinybert" else None
        for term, why in self.skipped.items():
            log.warning("loss=%r: %s term skipped: %s", method, term, why)

    @property
    def needs_values(self) -> bool:
        return self.method == "minilm"

    def forward(self, s: Features, t: Features, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sum of the terms (each a mean) and each term detached for the log."""
        terms: dict[str, torch.Tensor] = {}
        if self.method == "tinybert":
            pairs_s = [s.hidden_states[0]] + [s.hidden_states[i + 1] for i in range(len(self.layer_map))]
            pairs_t = [t.hidden_states[i] for i in _tinybert_layers(self.layer_map)]
            terms["hidden_mse"] = hidden_mse(pairs_s, pairs_t, lambda k, x: self.project[min(k, 1)](x), mask)
            if "attention" not in self.skipped:
                terms["attention_kl"] = sum(attention_kl(s.attentions[i], t.attentions[j], mask)
                                            for i, j in enumerate(self.layer_map)) / len(self.layer_map)
        else:
            if "attention" not in self.skipped:
                terms["attention_kl"] = attention_kl(s.attentions[-1], t.attentions[-1], mask)
            heads = relation_heads(s.values.shape[-1], t.values.shape[-1], self.teacher_heads)
            terms["value_kl"] = value_relation_kl(s.values, t.values, heads, mask, self.causal)
        total = sum(terms.values())
        return total, {k: v.detach() for k, v in terms.items()}
