"""The student: a smaller language model over the teacher's tokenizer and the kept vocabulary.

GLMD matches only the *outputs* (next-token distributions over the kept vocabulary), so the student's
architecture is free: by default the teacher's own (fewer, narrower layers), or any Hugging Face
architecture that reads the same token ids (e.g. a GPT-2-style student of a Llama teacher).

* :func:`build_student` makes it from the teacher's config with shape overrides and the ``VocabMap``'s
  ``K`` rows (:mod:`glmd_lib.models.student_config` derives and validates that config); initialised
  randomly (the paper) or from the teacher where shapes allow.
* :func:`save_student` writes one folder: ``save_pretrained`` weights + config, the teacher's tokenizer
  and ``vocab_map.json``.
* :func:`load_student` gives back a :class:`Student` that scores and generates from raw strings: text is
  tokenised with the teacher's tokenizer, ids are mapped into the student's rows and mapped back out.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glmd_lib.artifacts import atomic_path
from glmd_lib.models.factorized import CONFIG_KEY, factorize, load_factorized
from glmd_lib.models.families import layer_map
from glmd_lib.models.student_config import StudentError, derive_student_config, embedding_dim_of, hidden_size_of
from glmd_lib.models.teacher import count_parameters, model_class, model_kind
from glmd_lib.vocab.vocab_map import VocabMap, VocabMapError

log = logging.getLogger(__name__)

STUDENT_META = "student.json"
# the layer index in a parameter name: Llama/Qwen/Gemma "model.layers.3.", BERT "encoder.layer.3.", GPT-2 "h.3."
_LAYER_INDEX = re.compile(r"\.(?:layers?|h|blocks?)\.(\d+)\.")


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------

def build_student(teacher_config: Any, shape: dict | Any, vocab_map: VocabMap | None = None, arch: str = "same",
                  init: str = "random", teacher: nn.Module | None = None, seed: int | None = None):
    """A fresh student model (``PreTrainedModel``, eval mode off) for ``teacher_config``.

    ``shape``: a :class:`~glmd_lib.config.shared.StudentShape`, a ``Stage1Config`` or a dict (``layers``, ``hidden``,
    ``heads``, ``kv_heads``, ``intermediate``, ``max_positions``; ``student_`` prefixes accepted).
    ``vocab_map``: the student gets its ``num_kept`` rows (None: the full vocabulary).
    ``init``: ``random`` (the paper) or ``teacher``: copy evenly spaced teacher layers and the kept rows of
    the embeddings wherever the tensor shapes match (needs ``teacher``; the rest stays random).
    ``shape.embedding_dim`` (a ``Stage1Config``'s, or the dict's): an ALBERT-style factorised embedding of that
    width (:mod:`glmd_lib.models.factorized`; from the SVD of the copied rows with ``init='teacher'``).
    """
    cfg = derive_student_config(teacher_config, shape, vocab_map, arch)
    dim = embedding_dim_of(shape, cfg)
    if seed is not None:
        torch.manual_seed(seed)
    model = model_class(cfg).from_config(cfg)
    if getattr(model, "generation_config", None) is not None:
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(model.generation_config, k, getattr(cfg, k, None))
    if init == "teacher":
        if teacher is None:
            raise StudentError("init='teacher' needs the teacher model")
        report = init_from_teacher(model, teacher, vocab_map)
        log.info("initialised %d of %d student tensors from the teacher", report["copied"], report["total"])
    elif init != "random":
        raise StudentError(f"unknown init {init!r}; use 'random' or 'teacher'")
    if dim is not None:
        factorize(model, dim, init="svd" if init == "teacher" else "random")
    _check_forward(model)
    model.train()
    return model


@torch.no_grad()
def _check_forward(model: nn.Module) -> None:
    """One forward pass on a few tokens: what a config check cannot see fails here, before any training."""
    model.eval()
    ids = torch.arange(4, device=next(model.parameters()).device)[None] % int(model.config.vocab_size)
    try:
        logits = model(input_ids=ids).logits
    except Exception as e:  # noqa: BLE001 - any failure means this student cannot be trained
        raise StudentError(f"the {type(model).__name__} student fails on a 4-token input "
                           f"({type(e).__name__}): {e}") from e
    if logits.shape[-1] != int(model.config.vocab_size):
        raise StudentError(f"the student gives {logits.shape[-1]} logits per position, its config says "
                           f"{model.config.vocab_size}")


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, vocab_map: VocabMap | None = None) -> dict[str, Any]:
    """Copy teacher tensors into the student where shapes allow.

    Student layer ``i`` of ``n`` takes teacher layer ``round(i * (L - 1) / (n - 1))`` (first and last kept,
    :func:`glmd_lib.models.families.layer_map`, which also lays out per-layer config fields); vocabulary-sized
    tensors take the kept rows. Returns counts and the names copied.
    """
    s_state, t_state = student.state_dict(), teacher.state_dict()
    n_s = getattr(student.config, "num_hidden_layers", None)
    n_t = getattr(teacher.config, "num_hidden_layers", None)
    to_teacher = layer_map(n_s, n_t) if n_s and n_t else []
    kept = vocab_map.kept_ids if vocab_map is not None else None
    V = int(teacher.config.vocab_size)
    same_heads = _head_geometry(student.config) == _head_geometry(teacher.config)
    copied, skipped = [], []
    for name, tensor in s_state.items():
        t_name = name
        m = _LAYER_INDEX.search(name)
        if m and to_teacher:
            t_name = name[:m.start(1)] + str(to_teacher[int(m.group(1))]) + name[m.end(1):]
        src = t_state.get(t_name)
        if src is None:
            continue
        if kept is not None and src.shape and src.shape[0] == V and tensor.shape[0] == len(kept):
            src = src.index_select(0, kept.to(src.device))
        if src.shape == tensor.shape and not same_heads and _ATTENTION.search(name):
            skipped.append(name)  # same shape, other heads: the weights would land in the wrong heads
        elif src.shape == tensor.shape:
            tensor.copy_(src.to(tensor.dtype))
            copied.append(name)
    projected = _project_embeddings(student, teacher, s_state, t_state, kept, set(copied))
    student.load_state_dict(s_state)
    if hasattr(student, "tie_weights"):
        student.tie_weights()
    if skipped:
        log.warning("init='teacher': attention weights not copied (%d tensors): the student's heads %s differ from "
                    "the teacher's %s, so equal shapes would still put each head's weights into another head",
                    len(skipped), _head_geometry(student.config), _head_geometry(teacher.config))
    if projected:
        log.info("init='teacher': the student is narrower than the teacher; %s take the teacher's rows projected "
                 "onto their top %d principal directions", ", ".join(projected), hidden_size_of(student.config))
    if not copied and not projected:
        log.warning("init='teacher': no student tensor matched a teacher tensor's shape (different widths?); "
                    "the student stays randomly initialised")
    return {"copied": len(copied), "total": len(s_state), "names": copied, "skipped_attention": skipped,
            "projected": projected}


def _project_embeddings(student: nn.Module, teacher: nn.Module, s_state: dict, t_state: dict,
                        kept: torch.Tensor | None, copied: set[str]) -> list[str]:
    """A narrower student's embeddings from the teacher's, through the top principal directions.

    Layer weights of another width have no counterpart, but token embeddings do: the kept rows of the teacher's
    input embeddings, projected onto their ``d`` leading right-singular vectors (``d`` = the student's width),
    keep the geometry the teacher learned (similar tokens stay close). The same projection serves the output
    embeddings (untied heads) and learned position embeddings, so they share one basis; everything else stays
    random. Writes into ``s_state``; returns the names projected.
    """
    d, h = hidden_size_of(student.config), hidden_size_of(teacher.config)
    t_in, s_in = teacher.get_input_embeddings(), student.get_input_embeddings()
    if not d or not h or d >= h or t_in is None or s_in is None:
        return []

    def names_of(model: nn.Module, weight: torch.Tensor) -> list[str]:  # a tied weight has several names
        return [n for n, q in model.named_parameters(remove_duplicate=False) if q is weight]

    pairs = [(n, names_of(teacher, t_in.weight)[0]) for n in names_of(student, s_in.weight)]
    s_out, t_out = student.get_output_embeddings(), teacher.get_output_embeddings()
    if s_out is not None and t_out is not None and s_out.weight is not s_in.weight:
        pairs += [(n, names_of(teacher, t_out.weight)[0]) for n in names_of(student, s_out.weight)]
    pairs += [(n, n) for n in s_state if n.endswith(("wpe.weight", "position_embeddings.weight"))]
    rows = t_in.weight.detach().float()
    if kept is not None and rows.shape[0] == int(teacher.config.vocab_size):
        rows = rows.index_select(0, kept.to(rows.device))
    basis = torch.linalg.svd(rows, full_matrices=False).Vh[:d].T  # h x d, orthonormal columns
    done = []
    for s_name, t_name in pairs:
        if s_name in copied or s_name not in s_state or t_name not in t_state:
            continue
        src = t_state[t_name].float()
        if kept is not None and src.shape[0] == int(teacher.config.vocab_size):
            src = src.index_select(0, kept.to(src.device))
        target = s_state[s_name]
        if src.dim() != 2 or src.shape[1] != h or src.shape[0] != target.shape[0] or target.shape[1] != d:
            continue
        target.copy_((src @ basis.to(src.device)).to(target.dtype))
        done.append(s_name)
    return done


# attention parameters of the families the workbench builds (Llama-style q/k/v/o, GPT-2 c_attn/c_proj under
# .attn., GPT-NeoX query_key_value/dense under .attention., BERT's attention.self/.output)
_ATTENTION = re.compile(r"(self_attn|\.attn\.|\.attention\.|q_proj|k_proj|v_proj|o_proj|query_key_value|c_attn)")


def _head_geometry(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size): attention weights correspond only where all three agree."""
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 0)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or (hidden_size_of(config) // heads if heads else 0))
    return heads, kv, head_dim


# --------------------------------------------------------------------------------------------
# saving and loading
# --------------------------------------------------------------------------------------------

def check_student_map(model: nn.Module, vocab_map: VocabMap, where: str = "student") -> None:
    """The map's kept size must be the student's vocabulary size."""
    n = int(model.config.vocab_size)
    if vocab_map.num_kept != n:
        raise VocabMapError(f"{where}: the vocabulary map keeps {vocab_map.num_kept} tokens but the student has "
                            f"{n} vocabulary rows: this map does not belong to this student")


def save_student(model: nn.Module, directory: Path | str, tokenizer: Any, vocab_map: VocabMap | None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write weights + config, the teacher's tokenizer and ``vocab_map.json`` into ``directory`` (atomically)."""
    model = getattr(model, "module", model)
    if vocab_map is None:
        vocab_map = VocabMap.identity(tokenizer, int(model.config.vocab_size))
    check_student_map(model, vocab_map)
    directory = Path(directory)
    with atomic_path(directory, is_dir=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        vocab_map.save(tmp)
        meta = {"format": "glmd-student", "kind": model_kind(model.config), "vocab_size": vocab_map.vocab_size,
                "num_kept": vocab_map.num_kept, "parameters": count_parameters(model), **(extra or {})}
        (tmp / STUDENT_META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def load_student(path: Path | str, device: torch.device | str | None = None) -> "Student":
    """Load a folder written by :func:`save_student` into a ready-to-use :class:`Student`."""
    from transformers import AutoConfig

    from glmd_lib.models.teacher import load_tokenizer

    path = Path(path)
    if not (path / "config.json").exists():
        raise StudentError(f"{path} is not a saved student (no config.json); save it with save_student")
    tokenizer = load_tokenizer(path)
    vocab_map = VocabMap.load(path, tokenizer)
    try:
        config = AutoConfig.from_pretrained(path)
        model = (load_factorized(path, config) if getattr(config, CONFIG_KEY, None)
                 else model_class(config).from_pretrained(path, dtype=torch.float32))
    except Exception as e:  # a truncated or foreign safetensors file, a broken config.json ...
        raise StudentError(f"the student in {path} cannot be loaded ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else 'no details'}); its files are damaged or "
                           f"incomplete. {_remedy(path)}") from e
    check_student_map(model, vocab_map, where=str(path))
    model.eval()
    if device is not None:
        model.to(device)
    return Student(model, tokenizer, vocab_map)


def _remedy(path: Path) -> str:
    """Which notebook writes the student folder at ``path`` (a run directory's layout), to say what to rerun."""
    if path.parent.name == "stage1":
        return "Rerun notebook 03_stage1_distillation (glmd run --only 03) to write it again."
    if path.parent.parent.name == "stage2":
        return f"Rerun notebook 05_stage2_distillation for {path.parent.name} (glmd run --only 05) to write it again."
    return "Save it again with save_student (or export it again)."


class Student:
    """A model over ``vocab_map``'s rows plus the teacher's tokenizer: works on raw strings.

    Also wraps a teacher (``Student(teacher, tok, VocabMap.identity(tok))``) so both are compared with the
    same calls.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, vocab_map: VocabMap | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_map = vocab_map or VocabMap.identity(tokenizer, int(model.config.vocab_size))
        check_student_map(model, self.vocab_map)
        self.kind = model_kind(model.config)

    def __repr__(self) -> str:
        return (f"Student({type(self.model).__name__}, {count_parameters(self.model):,} parameters, "
                f"{self.vocab_map.num_kept:,} of {self.vocab_map.vocab_size:,} tokens)")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, texts: list[str] | str, add_special_tokens: bool = False) -> dict[str, torch.Tensor]:
        """Tokenise with the teacher's tokenizer (padded right) and map ids into student rows."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
        ids = self.vocab_map.map_ids(enc["input_ids"])
        return {"input_ids": ids.to(self.device), "attention_mask": enc["attention_mask"].to(self.device),
                "teacher_ids": enc["input_ids"].to(self.device)}

    @torch.no_grad()
    def score(self, texts: list[str] | str) -> list[dict[str, float]]:
        """Per text: summed log-probability of its tokens after the first, token count and perplexity.

        Tokens outside the kept vocabulary are scored as their substitute (what the student reads and writes).
        """
        if self.kind != "causal":
            raise NotImplementedError("score() needs a causal LM; masked-LM students score per masked position")
        enc = self.encode(texts)
        logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, enc["input_ids"][:, 1:, None]).squeeze(-1)
        mask = enc["attention_mask"][:, 1:].float()
        out = []
        for lp, m in zip(logp, mask):
            n = int(m.sum())
            total = float((lp * m).sum())
            out.append({"logprob": total, "tokens": n, "ppl": math.exp(-total / n) if n else float("nan")})
        return out

    @torch.no_grad()
    def next_token_topk(self, prompt: str, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most likely next tokens (decoded strings) with their probabilities."""
        if self.kind == "causal":
            enc = self.encode(prompt)
            logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0, -1]
        else:
            mask_id = self.tokenizer.mask_token_id
            enc = self.tokenizer(prompt + " " + self.tokenizer.mask_token, return_tensors="pt")
            ids = self.vocab_map.map_ids(enc["input_ids"]).to(self.device)
            pos = int((enc["input_ids"][0] == mask_id).nonzero()[-1])
            logits = self.model(input_ids=ids, attention_mask=enc["attention_mask"].to(self.device)).logits[0, pos]
        probs = torch.softmax(logits.float(), -1)
        p, idx = probs.topk(min(k, probs.numel()))
        teacher_ids = self.vocab_map.unmap_ids(idx.cpu())
        return [(self.tokenizer.decode([int(t)]), float(q)) for t, q in zip(teacher_ids, p)]

    @torch.no_grad()
    def generate(self, prompt: str, max_new_tokens: int = 20, **kwargs: Any) -> str:
        """Continue ``prompt`` (greedy unless sampling arguments are given); returns only the new text."""
        if self.kind != "causal":
            raise NotImplementedError("generate() needs a causal LM")
        enc = self.encode(prompt)
        out = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                  max_new_tokens=max_new_tokens, do_sample=kwargs.pop("do_sample", False),
                                  pad_token_id=self.model.config.pad_token_id, **kwargs)
        new = self.vocab_map.unmap_ids(out[0, enc["input_ids"].shape[1]:].cpu())
        return self.tokenizer.decode(new, skip_special_tokens=True)
