"""Teacher cache: what stage 1 needs from the frozen teacher over a corpus, computed once, memory-mapped.

Beyond the paper. Stage 1 spends most of its time in the frozen teacher's forward pass, and that pass is
the same for every student. Sweeps over student shapes, temperatures and vocabulary sizes can reuse one
teacher pass. Two modes (``Stage1Config.cache_mode``); neither depends on the temperature.

``mode = "hidden"`` (the default, exact). For every position of every training block,

* ``hidden.npy`` [N, L, D] fp16: the teacher's final hidden state (after its final norm, i.e. the input
  of its output layer; ``D`` = 576 values = 1,152 bytes per position for SmolLM2).

and, for stage 1's intermediate-layer losses (TinyBERT, MiniLM: ``Stage1Config.loss``), when the key asks:

* ``layers.npy`` [N, L, n, D] fp16: the hidden states ``output_hidden_states[i]`` for the key's ``layers``
  (TinyBERT's embeddings and mapped layers), in that order;
* ``values.npy`` [N, L, Dv] fp16: the last layer's value projection (MiniLM's value relations).

Attention probabilities ([N, H, L, L] per layer) are never cached: a loss that compares them runs the live
teacher. At train time each chunk's teacher logits are ``hidden.float() @ W_kept.T (+ b_kept)``, with ``W_kept`` the
rows of the teacher's output layer at the ``VocabMap``'s kept ids (all rows without a map), the same rows
:class:`glmd_lib.distill.teacher.TeacherRunner` uses on the live path. This is the live teacher's logits up to fp16
rounding of the hidden state, so the loss is exact at every ``T`` (``docs/benchmarks.md``, Stage 1: loss
+0.0%, gradient cosine 1.0 at T = 15 on SmolLM2), while the transformer body (the expensive part) is
skipped. The teacher's head has to stay in memory. Only teachers whose logits are exactly that linear
layer applied to ``base_model``'s last hidden state qualify (:func:`hidden_mode_problem`); a logit
soft-cap (Gemma-2's ``final_logit_softcapping``) or scale (``logit_scale``) is refused, not approximated.

``mode = "topk"`` (the older, approximate mode). For every position,

* ``values.npy`` [N, L, k] fp16: the teacher's ``k`` largest logits,
* ``ids.npy``    [N, L, k] int32: their token ids (*teacher* ids over the full vocabulary),
* ``tail.npy``   [N, L, 2] fp32: mean and standard deviation of the *other* ``V - k`` logits.

Why the tail moments. At the paper's ``T = 15`` the tempered teacher is nearly flat: the top 64 of
SmolLM2's 49k tokens hold about 0.5% of its mass, so dropping the rest (probability 0) gives a different,
far too sharp target (``docs/benchmarks.md``, Stage 1). With the tail's mean ``mu`` and standard deviation
``sigma``, :func:`glmd_lib.distill.teacher.sparse_teacher_fn` gives every kept token outside the top-k one fill
logit ``mu + sigma^2 / (2T)``: if the tail logits were Gaussian, ``sum_tail exp(z/T) = n exp(mu/T +
sigma^2/(2T^2))`` exactly (the log-normal moment estimate), so the tail gets the right total mass, spread
evenly. That fixes the loss's magnitude, but NOT its gradient at high T: as ``T`` grows, ``T^2 KL`` tends
to half the variance of ``z_teacher - z_student`` over the vocabulary, so the signal is every tail token's
own logit, which two moments cannot carry. Measured on SmolLM2 at T = 15 (``benchmarks/bench_stage1.py``
item [5], ``docs/benchmarks.md``): gradient cosine 0.27 to the exact one (0.25 for plain truncation). So
the top-k cache is not a stand-in for the live teacher at the paper's T = 15; use the hidden mode.

A cache is keyed by the format, the mode, the teacher (name, a checksum of its weights and whether its
forward ran under bf16), the blocks (a hash of the ids) and ``k`` (top-k mode) or the hidden size (hidden
mode); a stale, older-format, other-mode or foreign cache is rebuilt by :func:`ensure_teacher_cache` rather
than silently used, and :class:`TeacherCache` refuses to read one in the wrong mode.

This module is the file format (build, read, reuse). The ``teacher_fn``s that turn a cache's contents into
the loss's teacher logits are in :mod:`glmd_lib.distill.teacher` (:func:`~glmd_lib.distill.teacher.cached_teacher_fn`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glmd_lib.artifacts import atomic_path
from glmd_lib.device import autocast

# 2: adds tail.npy (mean, std of the logits outside the top-k).
# 3: adds the key field ``mode`` ("hidden": final hidden states, "topk": format 2's contents) and the
#    teacher's precision. Caches of an older format are refused by TeacherCache and rebuilt by ensure_...
FORMAT = "glmd-teacher-cache-3"
MODES = ("hidden", "topk")
_FILES = {"hidden": ("hidden",), "topk": ("values", "ids", "tail")}


class TeacherCacheError(RuntimeError):
    """A cache is missing, incomplete or does not fit the blocks/teacher/mode it is used with."""


def blocks_hash(blocks: torch.Tensor) -> str:
    return hashlib.sha1(blocks.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def teacher_checksum(teacher: torch.nn.Module) -> str:
    """A cheap fingerprint of the weights, enough to tell two teachers apart: the bytes of about 4,096 evenly
    spaced values of every 7th tensor. Bytes, not sums: a float sum depends on the thread count (the reduction's
    order), and a cache built under 2 threads must be found again under 1."""
    h = hashlib.sha1()
    for i, (name, p) in enumerate(teacher.state_dict().items()):
        if i % 7 == 0:
            flat = p.detach().reshape(-1)
            h.update(name.encode())
            h.update(flat[::max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def hidden_mode_problem(teacher: torch.nn.Module) -> str | None:
    """Why ``teacher``'s logits cannot be rebuilt from its cached final hidden states, or None if they can.

    They can when ``logits == head(base_model(x).last_hidden_state)`` for a plain ``nn.Linear`` head: the
    numerical check of :func:`glmd_lib.models.teacher.linear_head` (the test that also decides the live
    ``TeacherRunner``'s kept-rows path). A transform the config declares after the output layer (Gemma's
    soft-cap, Cohere's logit scale, Granite's logits scaling: :mod:`glmd_lib.models.families`) is refused by
    name first, because with a tiny random model ``cap * tanh(z / cap)`` is within that check's tolerance of ``z``.
    """
    from glmd_lib.models.families import declared_logit_transform
    from glmd_lib.models.teacher import linear_head, model_kind

    cfg = teacher.config
    if model_kind(cfg) != "causal":
        return "only causal-LM teachers can be cached (masked LMs draw new masks every step)"
    transform = declared_logit_transform(cfg)
    if transform:
        return (f"the teacher's config declares a transform after its output layer ({transform}), so its logits "
                f"are not a plain linear layer of the hidden state")
    if linear_head(teacher) is None:
        return (f"the teacher ({type(teacher).__name__}) does not compute its logits as a plain linear output layer "
                f"applied to base_model's last hidden state")
    return None


def cache_key(teacher_name: str, teacher: torch.nn.Module, blocks: torch.Tensor, topk: int | None = None,
              mode: str | None = None, bf16: bool = False, layers: tuple[int, ...] = (), values: int = 0
              ) -> dict[str, Any]:
    """The identity of a cache. ``mode`` defaults to "topk" when ``topk`` is given, else "hidden".

    ``bf16``: the teacher's forward runs under bf16 autocast while the cache is built (its contents differ).
    ``layers`` / ``values`` (hidden mode only): also keep these hidden states / the last layer's values of
    width ``values`` (a cache without them is another cache).
    """
    mode = mode or ("topk" if topk is not None else "hidden")
    if mode not in MODES:
        raise TeacherCacheError(f"cache mode must be one of {MODES}, got {mode!r}")
    key: dict[str, Any] = {"format": FORMAT, "mode": mode, "teacher": str(teacher_name),
                           "teacher_checksum": teacher_checksum(teacher), "teacher_bf16": bool(bf16),
                           "blocks": blocks_hash(blocks), "shape": list(blocks.shape)}
    if mode == "topk" and (layers or values):
        raise TeacherCacheError("only a hidden-state teacher cache keeps intermediate layers or values")
    if mode == "topk":
        if topk is None or int(topk) < 1:
            raise TeacherCacheError(f"a top-k teacher cache needs topk >= 1, got {topk!r}")
        key["topk"] = int(topk)
    else:
        if topk is not None:
            raise TeacherCacheError("a hidden-state teacher cache takes no topk (it stores the exact hidden states)")
        head = teacher.get_output_embeddings() if hasattr(teacher, "get_output_embeddings") else None
        key["hidden_size"] = int(head.weight.shape[1] if head is not None else teacher.config.hidden_size)
        if layers:
            key["layers"] = [int(i) for i in layers]
        if values:
            key["values"] = int(values)
    return key


def _files(key: dict[str, Any]) -> tuple[str, ...]:
    """The ``.npy`` files of a cache with this key."""
    if key.get("mode") == "topk":
        return _FILES["topk"]
    return _FILES["hidden"] + ("layers",) * bool(key.get("layers")) + ("values",) * bool(key.get("values"))


def _shapes(key: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Each file's expected shape."""
    shape = tuple(key["shape"])
    if key.get("mode") == "topk":
        return {"values": (*shape, key["topk"]), "ids": (*shape, key["topk"]), "tail": (*shape, 2)}
    return {"hidden": (*shape, key["hidden_size"]), "layers": (*shape, len(key.get("layers", ())), key["hidden_size"]),
            "values": (*shape, key.get("values", 0))}


def key_digest(key: dict[str, Any]) -> str:
    """A short name for ``key`` (16 hex digits of its canonical JSON): the sub-folder of a shared cache folder."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class TeacherCache:
    """Read side. ``cache.mode`` is "hidden" or "topk".

    * hidden: ``cache.lookup_hidden(block_indices)`` -> [b, L, D] fp16; pass it with the kept rows of the
      teacher's output layer to :func:`glmd_lib.distill.teacher.hidden_teacher_fn`.
    * topk: ``cache.lookup(block_indices) -> (values, ids, tail)``, ``values`` [b, L, k] fp16, ``ids`` [b, L, k]
      int64 teacher ids, ``tail`` [b, L, 2] fp32 (mean, std of the logits outside the top-k); pass all three
      to :func:`glmd_lib.distill.teacher.sparse_teacher_fn`.

    Reading a cache in the other mode's way raises :class:`TeacherCacheError`.
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            raise TeacherCacheError(f"{self.directory} is not a teacher cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        key = self.meta.get("key", {})
        found = key.get("format")
        if found != FORMAT:
            raise TeacherCacheError(f"teacher cache {self.directory} has format {found!r}, this code reads {FORMAT!r} "
                                    f"(format 1 lacks the tail moments needed at high temperature, format 2 the "
                                    f"cache mode); delete it to rebuild")
        self.mode = key.get("mode")
        if self.mode not in MODES:
            raise TeacherCacheError(f"teacher cache {self.directory} has mode {self.mode!r}, expected one of {MODES}; "
                                    f"delete it to rebuild")
        self.hidden = self.values = self.ids = self.tail = self.layers = None
        try:
            for name in _files(key):
                setattr(self, name, np.load(self.directory / f"{name}.npy", mmap_mode="r"))
        except (OSError, ValueError) as e:
            raise TeacherCacheError(f"teacher cache {self.directory} is unreadable ({e}); delete it to rebuild") from e
        found_shapes = [getattr(self, name).shape for name in _files(key)]
        expected = [_shapes(key)[name] for name in _files(key)]
        if found_shapes != expected:
            raise TeacherCacheError(f"teacher cache {self.directory} holds {' / '.join(map(str, found_shapes))}, "
                                    f"expected {' / '.join(map(str, expected))}; delete it to rebuild")

    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]

    @property
    def topk(self) -> int | None:
        return int(self.key["topk"]) if self.mode == "topk" else None

    def __len__(self) -> int:
        return int(self.key["shape"][0])

    def _require(self, mode: str, what: str) -> None:
        if self.mode != mode:
            raise TeacherCacheError(f"teacher cache {self.directory} is a {self.mode!r} cache, {what} reads "
                                    f"{mode!r} caches; rebuild it with cache mode {mode!r}")

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self._require("topk", "lookup()")
        idx = np.asarray(index.cpu().numpy(), dtype=np.int64)
        return (torch.from_numpy(np.ascontiguousarray(self.values[idx])),
                torch.from_numpy(np.ascontiguousarray(self.ids[idx]).astype(np.int64)),
                torch.from_numpy(np.ascontiguousarray(self.tail[idx])))

    def lookup_hidden(self, index: torch.Tensor) -> torch.Tensor:
        self._require("hidden", "lookup_hidden()")
        idx = np.asarray(index.cpu().numpy(), dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.hidden[idx]))

    def lookup_features(self, index: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The kept intermediate hidden states [b, L, n, D] and last-layer values [b, L, Dv] (None: not kept)."""
        self._require("hidden", "lookup_features()")
        idx = np.asarray(index.cpu().numpy(), dtype=np.int64)
        return tuple(None if a is None else torch.from_numpy(np.ascontiguousarray(a[idx]))
                     for a in (self.layers, self.values))


def tail_moments(logits: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
    """Mean and (population) standard deviation of ``logits`` [..., V] outside ``topk_idx`` [..., k] -> [..., 2].

    Computed centred (not as E[z^2] - E[z]^2) so fp32 keeps the digits; no tail (k = V) gives (0, 0).
    """
    z = logits.float()
    inside = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, topk_idx, True)
    n = (z.shape[-1] - topk_idx.shape[-1])
    if n == 0:
        return z.new_zeros((*z.shape[:-1], 2))
    z = z.masked_fill(inside, 0.0)
    mu = z.sum(-1, keepdim=True) / n
    var = (z - mu).masked_fill(inside, 0.0).pow(2).sum(-1, keepdim=True) / n
    return torch.cat([mu, var.sqrt()], -1)


def _build_mode(teacher: torch.nn.Module, topk: int | None, key: dict[str, Any]) -> str:
    """The cache mode of ``key``, after checking that ``topk`` and the teacher fit it."""
    mode = key.get("mode")
    if mode not in MODES:
        raise TeacherCacheError(f"cache key has mode {mode!r}, expected one of {MODES}")
    if mode == "topk" and topk != key.get("topk"):
        raise TeacherCacheError(f"topk = {topk!r} does not match the cache key's topk = {key.get('topk')!r}")
    if mode == "hidden":
        problem = hidden_mode_problem(teacher)
        if problem:
            raise TeacherCacheError(f"hidden-state teacher cache: {problem}; use the top-k cache mode or no cache")
    return mode


def _open_arrays(tmp: Path, mode: str, shape: tuple[int, int], key: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The mode's memory-mapped ``.npy`` files (see the module docstring) and the bytes stored per position."""
    def arr(name: str, dtype: Any, last: int) -> np.memmap:
        return np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(*shape, last))

    if mode == "hidden":
        shapes = _shapes(key)
        arrays = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=np.float16,
                                                  shape=shapes[name]) for name in _files(key)}
        return arrays, sum(2 * int(np.prod(a.shape[2:])) for a in arrays.values())
    k = int(key["topk"])
    return {"values": arr("values", np.float16, k), "ids": arr("ids", np.int32, k),
            "tail": arr("tail", np.float32, 2)}, k * 6 + 8


def _body(teacher: torch.nn.Module, b: torch.Tensor, layers: list[int], values: bool) -> dict[str, torch.Tensor]:
    """One pass of the teacher's body: its final hidden states, and the kept layers / values when asked."""
    if not layers and not values:
        return {"hidden": teacher.base_model(input_ids=b, attention_mask=torch.ones_like(b)).last_hidden_state}
    from glmd_lib.distill.feature_objective import value_projection

    captured: dict[str, torch.Tensor] = {}
    hook = (value_projection(teacher).register_forward_hook(lambda m, i, o: captured.__setitem__("values", o))
            if values else None)
    try:
        out = teacher.base_model(input_ids=b, attention_mask=torch.ones_like(b), output_hidden_states=bool(layers))
    finally:
        if hook is not None:
            hook.remove()
    extra = {"layers": torch.stack([out.hidden_states[i] for i in layers], 2)} if layers else {}
    return {"hidden": out.last_hidden_state, **extra, **captured}


def _store_batch(teacher: torch.nn.Module, b: torch.Tensor, arrays: dict[str, Any], rows: slice,
                 key: dict[str, Any]) -> None:
    """Run the teacher on blocks ``b`` and write what the cache keeps of it into ``arrays[rows]``."""
    if "hidden" in arrays:
        # only the body: the output layer is applied at train time (kept rows only)
        for name, x in _body(teacher, b, key.get("layers", []), bool(key.get("values"))).items():
            x = x.to(torch.float16)
            if not bool(torch.isfinite(x).all()):
                raise TeacherCacheError(f"the teacher's {name} of blocks {rows.start}..{rows.stop - 1} exceed the "
                                        f"fp16 range; use the top-k cache mode or no cache")
            arrays[name][rows] = x.cpu().numpy()
        return
    logits = teacher(input_ids=b, attention_mask=torch.ones_like(b)).logits.float()
    v, i = logits.topk(arrays["values"].shape[-1], dim=-1)
    arrays["values"][rows] = v.cpu().numpy().astype(np.float16)
    arrays["ids"][rows] = i.cpu().numpy().astype(np.int32)
    arrays["tail"][rows] = tail_moments(logits, i).cpu().numpy()


@torch.no_grad()
def build_teacher_cache(teacher: torch.nn.Module, blocks: torch.Tensor, directory: Path | str, topk: int | None,
                        key: dict[str, Any], batch_size: int = 8, progress: bool = True) -> TeacherCache:
    """Run the teacher over ``blocks`` [N, L] once and write the cache into ``directory`` (atomically).

    The mode comes from ``key`` (see :func:`cache_key`); ``topk`` must match it (None in hidden mode). The
    teacher runs in the precision the key records (``teacher_bf16``, the one rule of :mod:`glmd_lib.device`).
    """
    from tqdm.auto import tqdm

    mode = _build_mode(teacher, topk, key)
    n = blocks.shape[0]
    device = next(teacher.parameters()).device
    teacher.eval()
    with atomic_path(directory, is_dir=True) as tmp:
        arrays, per_pos = _open_arrays(tmp, mode, tuple(blocks.shape), key)
        for start in tqdm(range(0, n, batch_size), desc=f"teacher cache ({mode})", disable=not progress):
            b = blocks[start: start + batch_size].to(device)
            with autocast(device, bool(key.get("teacher_bf16"))):
                _store_batch(teacher, b, arrays, slice(start, start + len(b)), key)
        while arrays:  # flush and drop every memory map before the directory is renamed into place
            arrays.popitem()[1].flush()
        (tmp / "meta.json").write_text(json.dumps({"key": key, "bytes_per_position": per_pos}, indent=2) + "\n")
    return TeacherCache(directory)


def ensure_teacher_cache(directory: Path | str, teacher: torch.nn.Module, blocks: torch.Tensor, topk: int | None,
                         key: dict[str, Any], **kwargs: Any) -> tuple[TeacherCache, bool]:
    """Open the cache in ``directory`` if it matches ``key`` (mode included), else (re)build it.

    Returns ``(cache, built)``.
    """
    directory = Path(directory)
    if (directory / "meta.json").exists():
        try:
            cache = TeacherCache(directory)
            if cache.key == key:
                return cache, False
        except (TeacherCacheError, json.JSONDecodeError, KeyError, TypeError):
            pass  # stale, other-mode or damaged: rebuilt below (atomically, so a reader never sees half a cache)
    return build_teacher_cache(teacher, blocks, directory, topk, key, **kwargs), True
