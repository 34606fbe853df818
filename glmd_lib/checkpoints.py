"""Training checkpoints and RNG state: the file side of :class:`glmd_lib.trainer.Trainer`'s exact resume.

A checkpoint is one ``torch.save`` file ``<dir>/step-NNNNNNN.pt`` holding what the trainer needs to continue
bitwise where it stopped (model, optimizer, scheduler, data position, every rank's RNG states) plus the
run's *fingerprint* (the settings that must match to resume). It is written to a temporary file and
renamed, so a crash never leaves half a file; only the newest ``keep`` are kept.

Reading is strict on purpose: a truncated or foreign file, or one written with other settings, raises
:class:`CheckpointError` *before* anything is changed, with a message that says what to do.
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from glmd_lib.artifacts import atomic_path, atomic_write_text

CKPT_FORMAT = "glmd-checkpoint-1"
_CKPT_RE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the run being resumed."""


# --------------------------------------------------------------------------------------------
# RNG state (all generators a step may draw from)
# --------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states; NumPy's key array as a tensor so that
    ``torch.load(weights_only=True)`` accepts it."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_rng_states(num_processes: int) -> list[dict[str, Any]]:
    """Every rank's RNG state, in rank order (a collective call under several processes)."""
    if num_processes == 1:
        return [rng_state()]
    from accelerate.utils import gather_object

    return gather_object([rng_state()])


def restore_rng_state(states: list[dict[str, Any]], rank: int, num_processes: int, fallback_seed: int) -> None:
    """Restore this rank's saved RNG state. Resumed with another number of processes, the data order is
    still kept (it lives in the batch source) but random draws are not: each rank reseeds from
    ``fallback_seed + rank``."""
    if len(states) == num_processes:
        set_rng_state(states[rank])
    else:
        seed_everything(fallback_seed + rank)


# --------------------------------------------------------------------------------------------
# in-memory copies (the best-checkpoint hook keeps one)
# --------------------------------------------------------------------------------------------

def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the state that training can change: every state-dict entry except frozen parameters
    (tied names included), so ``load_state_dict(..., strict=False)`` restores the trained state."""
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k not in frozen}


# --------------------------------------------------------------------------------------------
# checkpoint files
# --------------------------------------------------------------------------------------------

def list_checkpoints(directory: Path | str) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of the checkpoints in ``directory``, oldest first."""
    d = Path(directory)
    if not d.exists():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


def write_checkpoint(directory: Path | str, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (plus the format tag and step) atomically; delete all but the newest ``keep``."""
    path = Path(directory) / f"step-{step:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save({"format": CKPT_FORMAT, "step": step, **state}, tmp)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, ...
        raise CheckpointError(f"checkpoint {path} is corrupted or unreadable ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}). Nothing was changed. Delete it to "
                              f"resume from an earlier checkpoint, or start over with resume=False.") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise CheckpointError(f"{path} is not a GLMD training checkpoint. Nothing was changed.")
    return ckpt


def latest_checkpoint(directory: Path | str, fingerprint: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``directory`` (path, contents), after checking that it was written with the
    same ``fingerprint``; None when there is none."""
    ckpts = list_checkpoints(directory)
    if not ckpts:
        return None
    path = ckpts[-1][1]
    ckpt = load_checkpoint(path)
    diff = describe_diff(ckpt.get("fingerprint", {}), fingerprint)
    if diff:
        raise CheckpointError(f"{path} was written by a run with other settings ({diff}). Nothing was changed. "
                              f"Resume with the same settings, use another run directory, or start over with "
                              f"resume=False.")
    return path, ckpt


def describe_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The settings that differ ('' if none). A key one side lacks counts as None there: a setting added to
    the code later, left at its None default, does not orphan the checkpoints written before it existed."""
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in keys[:6])


def read_history(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """The rows of a ``history.csv`` up to ``up_to_step`` (what a resumed run continues from).

    The history is a log, not state: an unreadable file gives an empty history that is rebuilt from here on.
    """
    if not path.exists():
        return []
    import pandas as pd

    try:
        return [r for r in pd.read_csv(path).to_dict("records") if r["step"] <= up_to_step]
    except Exception:  # noqa: BLE001 - see the docstring
        return []


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``history.csv`` atomically (nothing when there are no rows yet)."""
    if not rows:
        return
    import pandas as pd

    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))


# --------------------------------------------------------------------------------------------
# starting over (resume=False) without losing the old run before the new one has a checkpoint
# --------------------------------------------------------------------------------------------

class PreviousRun:
    """The old run's ``checkpoints/`` and ``history.csv``, set aside while a new run starts over.

    Starting over used to delete them first, so a new run that failed early (a NaN at step 1, a parameter
    that proved bad late, a kill) left nothing to resume. Now they move to ``.previous-run/`` (hidden: not an
    artifact), are deleted once the new run has written its first checkpoint (:meth:`drop`, also at the end of
    a run that writes none), and are put back if it fails before (:meth:`restore`). A run killed before that
    (SIGKILL) leaves them aside; the next resuming run finds no checkpoint and puts them back (:meth:`recover`).
    """

    def __init__(self, ckpt_dir: Path, history_path: Path):
        self.ckpt_dir, self.history_path = Path(ckpt_dir), Path(history_path)
        self.aside = self.ckpt_dir.parent / ".previous-run"

    def set_aside(self) -> None:
        """Move the old checkpoints and history aside (an earlier attempt's aside copy is kept if there is
        nothing newer: it is then still the last run that wrote a checkpoint)."""
        if not list_checkpoints(self.ckpt_dir):
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            self.history_path.unlink(missing_ok=True)
            return
        shutil.rmtree(self.aside, ignore_errors=True)
        self.aside.mkdir(parents=True)
        self.ckpt_dir.rename(self.aside / self.ckpt_dir.name)
        if self.history_path.exists():
            self.history_path.rename(self.aside / self.history_path.name)

    def restore(self) -> None:
        """The new run failed before its first checkpoint: its partial files go, the old run comes back."""
        if not self.aside.exists():
            return
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        self.history_path.unlink(missing_ok=True)
        for name in (self.ckpt_dir.name, self.history_path.name):
            if (self.aside / name).exists():
                (self.aside / name).rename(self.ckpt_dir.parent / name)
        shutil.rmtree(self.aside, ignore_errors=True)

    def recover(self) -> None:
        """Before resuming: an aside copy with no checkpoint of a newer run means that run was killed early."""
        if self.aside.exists() and not list_checkpoints(self.ckpt_dir):
            self.restore()

    def drop(self) -> None:
        shutil.rmtree(self.aside, ignore_errors=True)
