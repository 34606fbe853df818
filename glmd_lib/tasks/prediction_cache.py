"""A frozen model's predictions, kept on disk and read back instead of computed again.

Why: ``glmd compare`` evaluates some 40 runs, and each run's notebook 06 scores the same task teachers on the same
dev and unlabeled inputs (every student is compared with them). Their predictions do not change between runs, so
the first run computes them and the others read them (``EvalConfig.prediction_cache``, which ``glmd compare``
points at one folder for all its runs). Only frozen models are cached (the task teachers and the zero-shot
teacher); students never are.

A file is keyed by everything its predictions depend on: the model folder (its real path, and the names, sizes
and modification times of its weight files, so a retrained model is a new key), the task, the cloze pattern, the
input length, bf16, and the inputs themselves (their ids and fields). A damaged file is computed again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from glmd_lib.artifacts import atomic_path

CACHED_MODELS = ("teacher", "zero_shot")  # evaluate.ModelSpec names of frozen models


def folder_identity(folder: str | Path) -> list | None:
    """A model folder as a cache key: its real path and its weight files' names, sizes and modification times
    (a retrained model is a new key); None when it holds no weights (a hub id, say)."""
    folder = Path(folder)
    files = (sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))) if folder.is_dir() else []
    return [str(folder.resolve()), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]] if files else None


def digest(parts: Any, n: int = 20) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:n]


def cache_file(cache_dir: str | Path | None, model_path: str, task: str, examples: Sequence[Any], pattern_id: int,
               max_len: int, bf16: bool | None) -> Path | None:
    """The file for these predictions, or None (no cache folder, or ``model_path`` is no local folder of weights)."""
    model = folder_identity(model_path) if cache_dir is not None else None
    if model is None:
        return None
    inputs = [[e.idx, e.fields] for e in examples]
    return Path(cache_dir) / f"{task}-{digest([model, task, int(pattern_id), int(max_len), bool(bf16), inputs])}.pt"


def load_or_compute(path: Path | None, compute: Callable[[], tuple[list, list]]) -> tuple[list, list]:
    """``(predictions, scores)`` from ``path`` when it holds them, else ``compute()`` (written to ``path``)."""
    if path is not None and path.exists():
        try:
            data = torch.load(path, weights_only=True)
            return list(data["predictions"]), list(data["scores"])
        except Exception:  # damaged or from another format: computed again below
            pass
    preds, scores = compute()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"predictions": list(preds), "scores": [s.detach().cpu() for s in scores]}, tmp)
    return preds, scores
