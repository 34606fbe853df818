"""Where the shared data lives: the SuperGLUE folder and the unlabeled corpus.

Each resolver takes the explicit parameter first, then an environment variable, then the shared data
folder beside the checkout (``../shared/data``), and last a folder inside the repository. Pure path
logic: nothing here reads a file, so the SuperGLUE readers (which must not import torch) can use it.
"""
from __future__ import annotations

import os
from pathlib import Path

from glmd_lib.artifacts import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _resolve(explicit: str | Path | None, env: str, shared: tuple[str, ...], fallback: Path) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    # beside the checkout, then beside the working directory (a notebook started from another folder)
    for root in (SHARED_DATA, Path.cwd().parent / "shared" / "data"):
        if root.joinpath(*shared).exists():
            return root.joinpath(*shared)
    return fallback


def resolve_superglue_dir(explicit: str | Path | None = None) -> Path:
    """Explicit parameter, then ``$GLMD_DATA``, then ``../shared/data/superglue``, then ``data/superglue``."""
    return _resolve(explicit, "GLMD_DATA", ("superglue",), REPO_ROOT / "data" / "superglue")


def resolve_corpus_dir(explicit: str | Path | None = None) -> Path:
    """Explicit parameter, then ``$GLMD_CORPUS``, then ``../shared/data/corpus/gutenberg``, then ``data/corpus``."""
    return _resolve(explicit, "GLMD_CORPUS", ("corpus", "gutenberg"), REPO_ROOT / "data" / "corpus")
