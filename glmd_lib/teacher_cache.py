"""Teacher cache: the teacher's top-k logits (plus two tail moments) over a corpus, computed once, memory-mapped.

Beyond the paper. Stage 1 spends most of its time in the frozen teacher's forward pass, and that pass is
the same for every student. The cache stores, for every position of every training block,

* ``values.npy`` [N, L, k] fp16: the teacher's ``k`` largest logits,
* ``ids.npy``    [N, L, k] int32: their token ids (*teacher* ids over the full vocabulary),
* ``tail.npy``   [N, L, 2] fp32: mean and standard deviation of the *other* ``V - k`` logits,

opened with ``mmap_mode="r"``: sweeps over student shapes, temperatures and vocabulary sizes then reuse
one teacher pass. The cache does not depend on the temperature.

Why the tail moments. At the paper's ``T = 15`` the tempered teacher is nearly flat: the top 64 of
SmolLM2's 49k tokens hold about 0.5% of its mass, so dropping the rest (probability 0) gives a different,
far too sharp target (``docs/benchmarks.md``, Stage 1). With the tail's mean ``mu`` and standard deviation
``sigma``, :func:`glmd_lib.losses.sparse_teacher_fn` gives every kept token outside the top-k one fill
logit ``mu + sigma^2 / (2T)``: if the tail logits were Gaussian, ``sum_tail exp(z/T) = n exp(mu/T +
sigma^2/(2T^2))`` exactly (the log-normal moment estimate), so the tail gets the right total mass, spread
evenly. That fixes the loss's magnitude, but NOT its gradient at high T: as ``T`` grows, ``T^2 KL`` tends
to half the variance of ``z_teacher - z_student`` over the vocabulary, so the signal is every tail token's
own logit, which two moments cannot carry. Measured on SmolLM2 at T = 15 (``benchmarks/bench_stage1.py``
item [5], ``docs/benchmarks.md``): gradient cosine 0.27 to the exact one (0.25 for plain truncation). So
the cache is still not a stand-in for the live teacher at the paper's T = 15. Caching the teacher's final
hidden states (exact at every T) is the measured way out; it is not implemented yet.

A cache is keyed by the format, the teacher (name and a checksum of its weights), the blocks (a hash of
the ids) and ``k``; a stale, older-format or foreign cache is rebuilt rather than silently used.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .runs import atomic_path

# 2: adds tail.npy (mean, std of the logits outside the top-k). Format-1 caches are rebuilt, not read.
FORMAT = "glmd-teacher-cache-2"


class TeacherCacheError(RuntimeError):
    """A cache is missing, incomplete or does not fit the blocks/teacher it is used with."""


def blocks_hash(blocks: torch.Tensor) -> str:
    return hashlib.sha1(blocks.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def teacher_checksum(teacher: torch.nn.Module) -> str:
    """A cheap fingerprint of the weights (sums of a few tensors), enough to tell two teachers apart."""
    h = hashlib.sha1()
    for i, (name, p) in enumerate(teacher.state_dict().items()):
        if i % 7 == 0:
            h.update(name.encode())
            h.update(np.float64(p.detach().float().sum().item()).tobytes())
    return h.hexdigest()[:16]


def cache_key(teacher_name: str, teacher: torch.nn.Module, blocks: torch.Tensor, topk: int) -> dict[str, Any]:
    return {"format": FORMAT, "teacher": str(teacher_name), "teacher_checksum": teacher_checksum(teacher),
            "blocks": blocks_hash(blocks), "shape": list(blocks.shape), "topk": int(topk)}


class TeacherCache:
    """Read side: ``cache.lookup(block_indices) -> (values, ids, tail)``.

    ``values`` [b, L, k] fp16, ``ids`` [b, L, k] int64 teacher ids, ``tail`` [b, L, 2] fp32 (mean, std of
    the logits outside the top-k); pass all three to :func:`glmd_lib.losses.sparse_teacher_fn`.
    """

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            raise TeacherCacheError(f"{self.directory} is not a teacher cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        found = self.meta.get("key", {}).get("format")
        if found != FORMAT:
            raise TeacherCacheError(f"teacher cache {self.directory} has format {found!r}, this code reads {FORMAT!r} "
                                    f"(format 1 lacks the tail moments needed at high temperature); "
                                    f"delete it to rebuild")
        try:
            self.values = np.load(self.directory / "values.npy", mmap_mode="r")
            self.ids = np.load(self.directory / "ids.npy", mmap_mode="r")
            self.tail = np.load(self.directory / "tail.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise TeacherCacheError(f"teacher cache {self.directory} is unreadable ({e}); delete it to rebuild") from e
        expect = (*self.meta["key"]["shape"], self.meta["key"]["topk"])
        expect_tail = (*self.meta["key"]["shape"], 2)
        if self.values.shape != expect or self.ids.shape != expect or self.tail.shape != expect_tail:
            raise TeacherCacheError(f"teacher cache {self.directory} holds {self.values.shape} / {self.ids.shape} / "
                                    f"{self.tail.shape}, expected {expect} / {expect} / {expect_tail}; "
                                    f"delete it to rebuild")

    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]

    @property
    def topk(self) -> int:
        return int(self.key["topk"])

    def __len__(self) -> int:
        return self.values.shape[0]

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(index.cpu().numpy(), dtype=np.int64)
        return (torch.from_numpy(np.ascontiguousarray(self.values[idx])),
                torch.from_numpy(np.ascontiguousarray(self.ids[idx]).astype(np.int64)),
                torch.from_numpy(np.ascontiguousarray(self.tail[idx])))


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


@torch.no_grad()
def build_teacher_cache(teacher: torch.nn.Module, blocks: torch.Tensor, directory: Path | str, topk: int,
                        key: dict[str, Any], batch_size: int = 8, autocast: Any = None,
                        progress: bool = True) -> TeacherCache:
    """Run the teacher over ``blocks`` [N, L] once and write the cache into ``directory`` (atomically)."""
    from tqdm.auto import tqdm

    n, L = blocks.shape
    device = next(teacher.parameters()).device
    teacher.eval()
    with atomic_path(directory, is_dir=True) as tmp:
        values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float16, shape=(n, L, topk))
        ids = np.lib.format.open_memmap(tmp / "ids.npy", mode="w+", dtype=np.int32, shape=(n, L, topk))
        tail = np.lib.format.open_memmap(tmp / "tail.npy", mode="w+", dtype=np.float32, shape=(n, L, 2))
        for start in tqdm(range(0, n, batch_size), desc="teacher cache", disable=not progress):
            b = blocks[start: start + batch_size].to(device)
            with (autocast or contextlib.nullcontext()):
                logits = teacher(input_ids=b, attention_mask=torch.ones_like(b)).logits
            logits = logits.float()
            v, i = logits.topk(topk, dim=-1)
            values[start: start + len(b)] = v.cpu().numpy().astype(np.float16)
            ids[start: start + len(b)] = i.cpu().numpy().astype(np.int32)
            tail[start: start + len(b)] = tail_moments(logits, i).cpu().numpy()
            del logits
        values.flush(), ids.flush(), tail.flush()
        del values, ids, tail
        (tmp / "meta.json").write_text(json.dumps({"key": key, "bytes_per_position": topk * 6 + 8}, indent=2) + "\n")
    return TeacherCache(directory)


def ensure_teacher_cache(directory: Path | str, teacher: torch.nn.Module, blocks: torch.Tensor, topk: int,
                         key: dict[str, Any], **kwargs: Any) -> tuple[TeacherCache, bool]:
    """Open the cache in ``directory`` if it matches ``key``, else (re)build it. Returns ``(cache, built)``."""
    directory = Path(directory)
    if (directory / "meta.json").exists():
        try:
            cache = TeacherCache(directory)
            if cache.key == key:
                return cache, False
        except (TeacherCacheError, json.JSONDecodeError, KeyError):
            pass  # stale or damaged: rebuilt below (atomically, so a reader never sees half a cache)
    return build_teacher_cache(teacher, blocks, directory, topk, key, **kwargs), True


def student_space(ids: torch.Tensor, vocab_map: Any) -> torch.Tensor:
    """Teacher ids -> student rows, ``-1`` for pruned tokens (they are dropped from the cached distribution)."""
    if vocab_map is None:
        return ids
    kept_row = torch.full((vocab_map.vocab_size,), -1, dtype=torch.long)
    kept_row[vocab_map.kept_ids] = torch.arange(vocab_map.num_kept)
    return kept_row.to(ids.device)[ids]
