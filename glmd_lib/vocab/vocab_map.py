"""Long-tail vocabulary compression (notebook 02): the student keeps only the frequent tokens.

GLMD's student has the teacher's tokenizer but only the ``K`` most frequent tokens of the pre-training
corpus as rows of its embedding and output layer (paper: half the vocabulary). A :class:`VocabMap`
records which teacher ids are kept (``kept_ids``, in frequency order = the student's rows) and, for
every teacher id, the student row it becomes (``teacher_to_student``: kept ids their own row, pruned ids
the row of a *substitute*: UNK, or the kept token whose teacher input embedding is most similar,
found by :mod:`glmd_lib.vocab.substitutes`).

With a map one can
* turn teacher input ids into student ids (:meth:`VocabMap.map_ids`) and back (:meth:`VocabMap.unmap_ids`);
* shrink a model's input embedding and output layer to the kept rows (:meth:`VocabMap.shrink_model`);
* turn teacher logits into the target over the student's rows (:meth:`VocabMap.target_logits`, the
  distillation losses' teacher side): by the map's ``pruned_mass`` either drop the pruned mass and
  renormalise over the kept tokens (the paper), or add each pruned token's probability to its substitute's.

A map is saved as one JSON file next to the model (``vocab_map.json``) with a fingerprint of the
tokenizer; loading it against another tokenizer fails. :meth:`VocabMap.identity` keeps every token so
full-vocabulary runs share the code path.

The alternative the paper argues against (keep the whole vocabulary, factorise the embedding) is in
:mod:`glmd_lib.vocab.factorized`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from glmd_lib.artifacts import atomic_write_text
from glmd_lib.vocab.protected import protected_token_ids, special_token_ids
from glmd_lib.vocab.substitutes import embedding_matrix, nearest_kept

FILENAME = "vocab_map.json"
FORMAT_VERSION = 1
SUBSTITUTE_METHODS = ("unk", "dot", "cosine", "euclidean")
PRUNED_MASS = ("renormalize", "substitute")


class VocabMapError(ValueError):
    """A vocabulary map cannot be built, loaded or applied; the message names the cause."""


# --------------------------------------------------------------------------------------------
# tokenizer helpers
# --------------------------------------------------------------------------------------------

def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of what makes ids mean tokens: the vocabulary (token -> id) and the special tokens."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    payload = json.dumps({"vocab": vocab, "len": len(tokenizer),
                          "special": special_token_ids(tokenizer)}, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def kept_size(vocab_size: int, keep: float | int, multiple_of: int = 64) -> int:
    """``keep`` as a rate (float in (0, 1]) or a count (int), rounded up to a multiple of ``multiple_of``."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise VocabMapError(f"keep must be a rate (float) or a token count (int), got {keep!r}")
    if isinstance(keep, (float, np.floating)):
        if not 0.0 < keep <= 1.0:
            raise VocabMapError(f"keep rate {keep} must be in (0, 1]")
        n = math.ceil(keep * vocab_size)
    else:
        n = int(keep)
        if n < 1:
            raise VocabMapError(f"keep count {n} must be >= 1")
    multiple = max(1, int(multiple_of))
    return int(math.ceil(n / multiple) * multiple)


def select_kept(counts: np.ndarray, protected: Sequence[int], size: int) -> np.ndarray:
    """THE keep rule: the ``protected`` ids plus the most frequent others, ``size`` ids in all, ordered by
    count (descending, ties by id), which is the order of the student's rows. Notebook 02's table of kept
    sizes calls it for sizes other than the map's, so the table and the map cannot disagree."""
    counts = np.asarray(counts)
    is_protected = np.zeros(len(counts), dtype=bool)
    is_protected[list(protected)] = True
    order = np.argsort(-counts, kind="stable")
    others = order[~is_protected[order]][: max(size - len(protected), 0)]
    kept = np.concatenate([np.asarray(protected, dtype=np.int64), others])
    return kept[np.lexsort((kept, -counts[kept]))]


def _checked_size(V: int, tokenizer: Any, protected: list[int], keep: float | int, multiple_of: int,
                  substitute: str) -> int:
    """The kept size for :meth:`VocabMap.build`, after every check that can fail before any work."""
    if V != len(tokenizer):
        raise VocabMapError(f"counts cover {V} ids but the tokenizer has {len(tokenizer)}: "
                            f"were they counted with another tokenizer?")
    if substitute not in SUBSTITUTE_METHODS:
        raise VocabMapError(f"unknown substitute method {substitute!r}; use one of {list(SUBSTITUTE_METHODS)}")
    bad = [i for i in protected if not 0 <= i < V]
    if bad:
        raise VocabMapError(f"protected ids {bad[:5]} are outside the vocabulary [0, {V})")
    if substitute == "unk" and tokenizer.unk_token_id is None:
        raise VocabMapError("substitute='unk' but the tokenizer has no unk token; use a similarity "
                            "method (cosine, dot, euclidean)")
    K = kept_size(V, keep, multiple_of)
    if K <= len(protected):
        raise VocabMapError(f"kept size {K} (keep={keep!r}, multiple_of={multiple_of}) is not larger than "
                            f"the {len(protected)} protected tokens: nothing left for frequent tokens")
    if K >= V:
        raise VocabMapError(f"kept size {K} (keep={keep!r}, rounded up to a multiple of {multiple_of}) is not "
                            f"smaller than the vocabulary ({V}): nothing would be pruned; use "
                            f"VocabMap.identity(tokenizer) for a full-vocabulary student")
    return K


# --------------------------------------------------------------------------------------------
# the map
# --------------------------------------------------------------------------------------------

@dataclass(eq=False)
class VocabMap:
    """Teacher ids -> student rows. See the module docstring."""

    kept_ids: torch.Tensor            # [K] teacher ids kept, in the order of the student's rows
    teacher_to_student: torch.Tensor  # [V] student row of each teacher id
    method: str = "unk"
    fingerprint: str = ""
    protected_ids: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    pruned_mass: str = "renormalize"  # VocabConfig.pruned_mass, saved here so stages 1 and 2 follow notebook 02

    def __post_init__(self) -> None:
        if self.pruned_mass not in PRUNED_MASS:
            raise VocabMapError(f"unknown pruned_mass {self.pruned_mass!r}; use one of {list(PRUNED_MASS)}")
        self.kept_ids = torch.as_tensor(self.kept_ids, dtype=torch.long)
        self.teacher_to_student = torch.as_tensor(self.teacher_to_student, dtype=torch.long)
        self._pruned_ids = None
        self._device_cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- sizes -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self.teacher_to_student.numel())

    @property
    def num_kept(self) -> int:
        return int(self.kept_ids.numel())

    @property
    def is_identity(self) -> bool:
        return self.num_kept == self.vocab_size

    @property
    def pruned_ids(self) -> torch.Tensor:
        """Teacher ids not kept (ascending)."""
        if self._pruned_ids is None:
            mask = torch.ones(self.vocab_size, dtype=torch.bool)
            mask[self.kept_ids] = False
            self._pruned_ids = mask.nonzero().squeeze(-1)
        return self._pruned_ids

    @property
    def substitutes(self) -> torch.Tensor:
        """[V] the teacher id each teacher id becomes in the student (itself when kept)."""
        return self.kept_ids[self.teacher_to_student]

    def __repr__(self) -> str:
        return (f"VocabMap(kept {self.num_kept:,} of {self.vocab_size:,}, substitute={self.method!r}, "
                f"pruned_mass={self.pruned_mass!r}, protected={len(self.protected_ids)}, tokenizer {self.fingerprint})")

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def build(cls, counts: Sequence[int] | np.ndarray | torch.Tensor, tokenizer: Any, keep: float | int,
              protected_ids: Iterable[int] = (), multiple_of: int = 64, substitute: str = "cosine",
              embeddings: Any = None, chunk: int = 2048, coarse: str = "auto",
              pruned_mass: str = "renormalize", protect: str = "used") -> "VocabMap":
        """Keep the protected tokens and the most frequent others, ``keep`` (rate or count, rounded up to
        ``multiple_of``) in all; give every pruned token a substitute.

        ``protected_ids`` are added to the special tokens of the ``protect`` choice (pass the verbalizer tokens
        here; :mod:`glmd_lib.vocab.protected`).
        ``embeddings``: the teacher (or its ``[V, d]`` input-embedding matrix), needed unless
        ``substitute="unk"``; ``coarse``: see :func:`~glmd_lib.vocab.substitutes.nearest_kept`. The kept ids
        are ordered by count (ties by id): student row 0 is the most frequent token (:func:`select_kept`).
        Similarity substitutes are never special tokens. ``pruned_mass``: see :meth:`target_logits`.
        """
        counts = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.int64)
        V = len(counts)
        protected = protected_token_ids(tokenizer, protected_ids, protect)
        K = _checked_size(V, tokenizer, protected, keep, multiple_of, substitute)
        kept_ids = torch.from_numpy(select_kept(counts, protected, K).copy())
        t2s = torch.full((V,), -1, dtype=torch.long)
        t2s[kept_ids] = torch.arange(K)
        pruned = (t2s < 0).nonzero().squeeze(-1)
        if substitute == "unk":
            t2s[pruned] = int(t2s[tokenizer.unk_token_id])
        else:
            if embeddings is None:
                raise VocabMapError(f"substitute={substitute!r} needs the teacher's input embeddings "
                                    f"(embeddings=teacher or its [V, d] matrix); or use substitute='unk'")
            E = embedding_matrix(embeddings)
            if E.shape[0] < V:
                raise VocabMapError(f"embedding matrix has {E.shape[0]} rows, fewer than the vocabulary ({V})")
            # special tokens (<|im_start|>, <gh_stars> ...) are kept but never stand in for ordinary text
            special = set(special_token_ids(tokenizer))
            candidates = kept_ids[torch.tensor([int(i) not in special for i in kept_ids], dtype=torch.bool)]
            pos = nearest_kept(E[:V], pruned, candidates, substitute, chunk, coarse=coarse)
            t2s[pruned] = t2s[candidates[pos]]
        return cls(kept_ids, t2s, method=substitute, fingerprint=tokenizer_fingerprint(tokenizer),
                   protected_ids=protected, meta={"keep": keep, "multiple_of": multiple_of, "protect": protect},
                   pruned_mass=pruned_mass)

    @classmethod
    def identity(cls, tokenizer: Any, vocab_size: int | None = None) -> "VocabMap":
        """Keep every token in its own row (full-vocabulary runs go through the same code path)."""
        V = vocab_size or len(tokenizer)
        return cls(torch.arange(V), torch.arange(V), method="identity",
                   fingerprint=tokenizer_fingerprint(tokenizer), protected_ids=protected_token_ids(tokenizer))

    # ---- ids -------------------------------------------------------------------------------
    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = (self.kept_ids.to(device), self.teacher_to_student.to(device))
        return self._device_cache[key]

    def map_ids(self, teacher_ids: torch.Tensor) -> torch.Tensor:
        """Teacher ids -> student ids (pruned tokens become their substitute's row)."""
        return self._on(teacher_ids.device)[1][teacher_ids]

    def unmap_ids(self, student_ids: torch.Tensor) -> torch.Tensor:
        """Student ids -> teacher ids (decode these with the teacher's tokenizer)."""
        return self._on(student_ids.device)[0][student_ids]

    def is_kept(self, teacher_ids: torch.Tensor) -> torch.Tensor:
        kept, t2s = self._on(teacher_ids.device)
        return kept[t2s[teacher_ids]] == teacher_ids

    # ---- distributions ---------------------------------------------------------------------
    def restrict_logits(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """``[..., V] -> [..., K]``: the teacher's logits at the kept ids, in student row order."""
        if teacher_logits.shape[-1] < self.vocab_size:
            raise VocabMapError(f"logits have {teacher_logits.shape[-1]} entries, the map expects {self.vocab_size}")
        return teacher_logits.index_select(-1, self._on(teacher_logits.device)[0])

    def target_logits(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """``[..., V] -> [..., K]``: logits whose softmax at ``temperature`` is the student's target.

        ``renormalize`` (the paper): the kept logits, so the pruned mass is dropped and the rest rescaled
        (the same at every T). ``substitute``: ``T * log sum exp(z / T)`` over each row's group (the kept
        token and the pruned tokens it stands in for), so each pruned token's probability *at the loss
        temperature* is added to its substitute's. That needs the teacher's full ``V`` logits: a teacher
        computing only the kept rows of its output layer cannot give it.
        """
        if self.pruned_mass == "renormalize" or self.is_identity:
            return self.restrict_logits(teacher_logits)
        if teacher_logits.shape[-1] < self.vocab_size:
            raise VocabMapError(f"pruned_mass='substitute' needs all {self.vocab_size} teacher logits, got "
                                f"{teacher_logits.shape[-1]}")
        z = teacher_logits[..., : self.vocab_size].float() / temperature
        rows = self._on(z.device)[1]
        top = z.new_full((*z.shape[:-1], self.num_kept), -math.inf).scatter_reduce_(-1, rows.expand_as(z), z, "amax")
        summed = torch.zeros_like(top).index_add_(-1, rows, torch.exp(z - top.index_select(-1, rows)))
        return temperature * (top + summed.log())

    def restrict_probs(self, teacher_logits: torch.Tensor, temperature: float = 1.0,
                       pruned_mass: str | None = None) -> torch.Tensor:
        """The teacher's distribution over the student's ``K`` rows (``pruned_mass``: the map's by default)."""
        vm = self if pruned_mass in (None, self.pruned_mass) else dataclasses.replace(self, pruned_mass=pruned_mass)
        return torch.softmax(vm.target_logits(teacher_logits, temperature).float() / temperature, dim=-1)

    def kept_mass(self, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Share of the teacher's probability that falls on kept tokens, per position."""
        logits = teacher_logits.float() / temperature
        return torch.exp(torch.logsumexp(self.restrict_logits(logits), -1) - torch.logsumexp(logits, -1))

    # ---- models ----------------------------------------------------------------------------
    @torch.no_grad()
    def shrink_model(self, model: nn.Module) -> nn.Module:
        """In place: keep only the kept rows of the input embedding and of the output layer.

        Tied models stay tied (one ``[K, d]`` matrix); untied output layers (and their bias, if any) are
        sliced separately. ``config.vocab_size`` becomes ``K``; the config's special-token ids become
        student ids. On inputs made of kept tokens the shrunk model computes the same logits as the
        original at the kept ids.
        """
        old_in = model.get_input_embeddings()
        old_out = model.get_output_embeddings()
        if old_in.weight.shape[0] != self.vocab_size:
            raise VocabMapError(f"the model's input embedding has {old_in.weight.shape[0]} rows but the map is "
                                f"for a vocabulary of {self.vocab_size}")
        tied = old_out is not None and old_out.weight is old_in.weight
        kept = self.kept_ids.to(old_in.weight.device)

        pad = getattr(old_in, "padding_idx", None)
        new_pad = int(self.teacher_to_student[pad]) if pad is not None else None
        new_in = nn.Embedding(self.num_kept, old_in.weight.shape[1], padding_idx=new_pad,
                              device=old_in.weight.device, dtype=old_in.weight.dtype)
        new_in.weight = nn.Parameter(old_in.weight.index_select(0, kept).clone(),
                                     requires_grad=old_in.weight.requires_grad)
        model.set_input_embeddings(new_in)

        if old_out is not None:
            has_bias = getattr(old_out, "bias", None) is not None
            new_out = nn.Linear(old_out.weight.shape[1], self.num_kept, bias=has_bias,
                                device=old_out.weight.device, dtype=old_out.weight.dtype)
            new_out.weight = new_in.weight if tied else nn.Parameter(old_out.weight.index_select(0, kept).clone())
            if has_bias:
                new_out.bias = nn.Parameter(old_out.bias.index_select(0, kept).clone())
            model.set_output_embeddings(new_out)
            # BERT-style heads keep a second reference to the bias on the prediction head
            for mod in model.modules():
                if getattr(mod, "decoder", None) is new_out and isinstance(getattr(mod, "bias", None), nn.Parameter):
                    mod.bias = new_out.bias

        cfg = model.config
        cfg.vocab_size = self.num_kept
        if hasattr(cfg, "get_text_config"):
            cfg.get_text_config().vocab_size = self.num_kept
        for holder in (cfg, getattr(model, "generation_config", None)):
            if holder is None:
                continue
            for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
                val = getattr(holder, key, None)
                if isinstance(val, int) and 0 <= val < self.vocab_size:
                    setattr(holder, key, int(self.teacher_to_student[val]))
                elif isinstance(val, list):
                    setattr(holder, key, [int(self.teacher_to_student[v]) for v in val])
        cfg.glmd_vocab_map = {"kept": self.num_kept, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint}
        return model

    # ---- files -----------------------------------------------------------------------------
    def check_tokenizer(self, tokenizer: Any) -> None:
        fp = tokenizer_fingerprint(tokenizer)
        if fp != self.fingerprint:
            raise VocabMapError(f"this vocabulary map was built for the tokenizer {self.fingerprint}, but the "
                                f"given tokenizer is {fp} ({type(tokenizer).__name__}, {len(tokenizer)} tokens): "
                                f"rebuild the map (notebook 02) with this tokenizer")

    def to_dict(self) -> dict[str, Any]:
        pruned = self.pruned_ids
        return {
            "format": "glmd-vocab-map", "version": FORMAT_VERSION,
            "vocab_size": self.vocab_size, "num_kept": self.num_kept, "method": self.method,
            "fingerprint": self.fingerprint, "protected_ids": list(self.protected_ids), "meta": self.meta,
            "pruned_mass": self.pruned_mass,
            "kept_ids": self.kept_ids.tolist(),
            "pruned_ids": pruned.tolist(),
            "substitute_ids": self.substitutes[pruned].tolist(),  # teacher id replacing each pruned id
        }

    def save(self, directory: Path | str) -> Path:
        """Write ``directory/vocab_map.json`` atomically; returns its path."""
        path = Path(directory) / FILENAME
        atomic_write_text(path, json.dumps(self.to_dict(), separators=(",", ":")) + "\n")
        return path

    @classmethod
    def load(cls, path_or_dir: Path | str, tokenizer: Any = None) -> "VocabMap":
        """Read a map (a file or the folder holding ``vocab_map.json``); with ``tokenizer``, check it fits."""
        path = Path(path_or_dir)
        if path.is_dir():
            path = path / FILENAME
        if not path.exists():
            raise VocabMapError(f"vocabulary map {path} does not exist (run notebook 02, or use_vocab_map=False)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            if d.get("format") != "glmd-vocab-map":
                raise VocabMapError(f"{path} is not a GLMD vocabulary map")
            V, kept = int(d["vocab_size"]), torch.tensor(d["kept_ids"], dtype=torch.long)
            t2s = torch.full((V,), -1, dtype=torch.long)
            t2s[kept] = torch.arange(len(kept))
            pruned = torch.tensor(d["pruned_ids"], dtype=torch.long)
            subs = torch.tensor(d["substitute_ids"], dtype=torch.long)
            if len(pruned) + len(kept) != V or len(subs) != len(pruned):
                raise VocabMapError(f"{path}: kept + pruned ids do not cover the vocabulary of {V}")
            if len(pruned):
                t2s[pruned] = t2s[subs]
            if (t2s < 0).any():
                raise VocabMapError(f"{path}: some substitutes are not kept ids (corrupt file?)")
        except (KeyError, TypeError, ValueError, IndexError, json.JSONDecodeError) as e:
            if isinstance(e, VocabMapError):
                raise
            raise VocabMapError(f"{path} is not a valid vocabulary map ({type(e).__name__}: {e})") from e
        vm = cls(kept, t2s, method=d["method"], fingerprint=d["fingerprint"],  # maps before pruned_mass: renormalize
                 protected_ids=list(d.get("protected_ids", [])), meta=d.get("meta", {}),
                 pruned_mass=d.get("pruned_mass", "renormalize"))
        if tokenizer is not None:
            vm.check_tokenizer(tokenizer)
        return vm
