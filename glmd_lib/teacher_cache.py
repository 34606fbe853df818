"""Teacher cache: the teacher's top-k logits over a corpus, computed once and memory-mapped.

Beyond the paper. Stage 1 spends most of its time in the frozen teacher's forward pass, and that pass is
the same for every student. The cache stores, for every position of every training block, the teacher's
``k`` largest logits (fp16) and their token ids (int32, *teacher* ids over the full vocabulary), as two
``.npy`` files opened with ``mmap_mode="r"``: sweeps over student shapes, temperatures and vocabulary
sizes then reuse one teacher pass.

The approximation: the teacher's distribution at temperature ``T`` is renormalised over its top-k tokens
(restricted to the kept vocabulary; pruned ones are dropped) and every other token gets probability 0.
At ``T = 15`` the distribution is flat, so the mass outside the top-k is large; the benchmark
(``benchmarks/bench_stage1.py``) measures the mass covered and how far the truncated loss is from the
exact one. ``docs/benchmarks.md`` records what it costs.

A cache is keyed by the teacher (name and a checksum of its weights), the blocks (a hash of the ids) and
``k``; a stale or foreign cache is rebuilt rather than silently used.
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

FORMAT = "glmd-teacher-cache-1"


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
    """Read side: ``cache.lookup(block_indices) -> (values [b, L, k] fp16, ids [b, L, k] int64 teacher ids)``."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        meta_path = self.directory / "meta.json"
        if not meta_path.exists():
            raise TeacherCacheError(f"{self.directory} is not a teacher cache (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        try:
            self.values = np.load(self.directory / "values.npy", mmap_mode="r")
            self.ids = np.load(self.directory / "ids.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise TeacherCacheError(f"teacher cache {self.directory} is unreadable ({e}); delete it to rebuild") from e
        expect = (*self.meta["key"]["shape"], self.meta["key"]["topk"])
        if self.values.shape != expect or self.ids.shape != expect:
            raise TeacherCacheError(f"teacher cache {self.directory} holds {self.values.shape}, expected {expect}; "
                                    f"delete it to rebuild")

    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]

    @property
    def topk(self) -> int:
        return int(self.key["topk"])

    def __len__(self) -> int:
        return self.values.shape[0]

    def lookup(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(index.cpu().numpy(), dtype=np.int64)
        return torch.from_numpy(np.ascontiguousarray(self.values[idx])), \
            torch.from_numpy(np.ascontiguousarray(self.ids[idx]).astype(np.int64))


@torch.no_grad()
def build_teacher_cache(teacher: torch.nn.Module, blocks: torch.Tensor, directory: Path | str, topk: int,
                        key: dict[str, Any], batch_size: int = 8, autocast: Any = None,
                        progress: bool = True) -> TeacherCache:
    """Run the teacher over ``blocks`` [N, L] once and write the top-k cache into ``directory`` (atomically)."""
    from tqdm.auto import tqdm

    n, L = blocks.shape
    device = next(teacher.parameters()).device
    teacher.eval()
    with atomic_path(directory, is_dir=True) as tmp:
        values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float16, shape=(n, L, topk))
        ids = np.lib.format.open_memmap(tmp / "ids.npy", mode="w+", dtype=np.int32, shape=(n, L, topk))
        for start in tqdm(range(0, n, batch_size), desc="teacher cache", disable=not progress):
            b = blocks[start: start + batch_size].to(device)
            with (autocast or contextlib.nullcontext()):
                logits = teacher(input_ids=b, attention_mask=torch.ones_like(b)).logits
            v, i = logits.float().topk(topk, dim=-1)
            values[start: start + len(b)] = v.cpu().numpy().astype(np.float16)
            ids[start: start + len(b)] = i.cpu().numpy().astype(np.int32)
        values.flush(), ids.flush()
        del values, ids
        (tmp / "meta.json").write_text(json.dumps({"key": key, "bytes_per_position": topk * 6}, indent=2) + "\n")
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
