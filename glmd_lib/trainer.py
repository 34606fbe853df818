"""A small, resumable training loop on Hugging Face ``accelerate`` (used by stage 1 and stage 2).

What it does, and why:

* One process on CPU/GPU, or several under ``accelerate launch`` (DDP; gloo on CPU). Each rank draws its
  own slice of every global batch, gradients are averaged by DDP, so every rank holds the same weights.
* AdamW, linear warm-up then cosine decay (``transformers.get_cosine_schedule_with_warmup``), gradient
  accumulation, gradient clipping, bf16 autocast on CUDA only (fp32 on CPU keeps runs bitwise repeatable).
* Checkpoints every ``checkpoint_every`` steps hold the model, optimizer, scheduler, every rank's RNG states
  and the data position, written to a temporary file and renamed (a crash never leaves half a file); the
  last ``keep_checkpoints`` are kept. ``train(resume=True)`` continues from the newest one exactly: a run
  killed with SIGKILL and resumed ends with bitwise the same weights as an uninterrupted run (CPU, 1 process).
* A non-finite loss stops the run *before* the optimizer step with a message naming the step; the
  checkpoints on disk are the last good state.
* ``history.csv`` (step, loss, lr, tokens/s and whatever the loss reports) is rewritten atomically every
  step; tqdm bars work in terminals and notebooks; ``on_log`` callbacks (e.g. :class:`LiveLossPlot`) see
  every row.

The loss is a closure ``loss_fn(batch) -> (loss, logs)`` or ``loss_fn(batch, model) -> (loss, logs)``; the
second form receives the *prepared* model (DDP-wrapped under several processes) and must call it for its
forward pass, otherwise DDP cannot synchronise the gradients. ``logs`` is a dict of scalars (floats or
0-dim tensors); a ``tokens`` entry counts tokens for tokens/s (default: ``batch["attention_mask"].sum()``).

The batch source is any object with ``next_batch()``, ``state_dict()`` and ``load_state_dict()``;
:class:`IndexBatches` is the usual one (shuffled epochs over indices, sharded by rank).
"""
from __future__ import annotations

import inspect
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from glmd_lib.artifacts import atomic_path, atomic_write_text

CKPT_FORMAT = "glmd-checkpoint-1"
_CKPT_RE = re.compile(r"^step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the run being resumed."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stopped before updating the weights."""


# --------------------------------------------------------------------------------------------
# configuration and batch sources
# --------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    steps: int
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    grad_accum: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none elsewhere; or "no" / "bf16"
    cpu: bool | None = None  # force CPU (None: whatever accelerate finds)

    def __post_init__(self) -> None:
        for k in ("steps", "grad_accum", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, k) < 1:
                raise ValueError(f"TrainConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.warmup_steps < 0:
            raise ValueError("TrainConfig.warmup_steps must be >= 0")


class BatchSource(Protocol):
    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class IndexBatches:
    """Endless shuffled batches of ``collate(indices)``; the position is part of the checkpoint.

    Epoch ``e`` is a permutation drawn from ``seed + e`` (not from the global RNG), so a resumed run sees the
    same order. Under ``world_size`` processes every *global* batch has ``batch_size * world_size`` indices
    and rank ``r`` takes the ``r``-th slice, so all ranks move through the data in step.
    """

    def __init__(self, n: int, batch_size: int, collate: Callable[[torch.Tensor], Any], seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.collate = int(n), int(batch_size), collate
        self.seed, self.shuffle = int(seed), shuffle
        self.epoch, self.pos = 0, 0
        self._perm: torch.Tensor | None = None
        self.set_rank(rank, world_size)

    def set_rank(self, rank: int, world_size: int) -> None:
        if self.n < self.batch_size * world_size:
            raise ValueError(f"{self.n} examples are fewer than one global batch ({self.batch_size} x "
                             f"{world_size} process(es)); use more data or a smaller batch")
        self.rank, self.world_size = rank, world_size

    def _order(self) -> torch.Tensor:
        if self._perm is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                self._perm = torch.randperm(self.n, generator=g)
            else:
                self._perm = torch.arange(self.n)
        return self._perm

    def next_batch(self) -> Any:
        glob = self.batch_size * self.world_size
        if self.pos + glob > self.n:  # drop the last partial batch of an epoch
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        idx = self._order()[self.pos: self.pos + glob]
        self.pos += glob
        return self.collate(idx[self.rank * self.batch_size: (self.rank + 1) * self.batch_size])

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "n": self.n, "batch_size": self.batch_size,
                "world_size": self.world_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("n", "batch_size", "seed"):
            if int(state[k]) != getattr(self, k):
                raise CheckpointError(f"the checkpoint's data position was saved for {k}={state[k]}, "
                                      f"this run has {k}={getattr(self, k)}")
        self.epoch, self.pos, self._perm = int(state["epoch"]), int(state["pos"]), None


# --------------------------------------------------------------------------------------------
# RNG state (all generators a step may draw from)
# --------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------

def list_checkpoints(directory: Path | str) -> list[tuple[int, Path]]:
    d = Path(directory)
    if not d.exists():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _CKPT_RE.match(p.name))]
    return sorted(found)


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


def _describe_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in keys[:6])


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------

class Trainer:
    """See the module docstring. ``train()`` returns a summary dict (steps, tokens_seen, final loss ...)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., tuple[torch.Tensor, dict[str, Any]]],
                 batches: BatchSource, out_dir: Path | str, config: TrainConfig, fingerprint: dict | None = None,
                 progress: bool = True, on_log: Callable[[dict[str, Any]], None] | list | None = None,
                 step_hook: Callable[[int], None] | None = None, desc: str = "train"):
        self.model, self.loss_fn, self.batches = model, loss_fn, batches
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.history_path = self.out_dir / "history.csv"
        self.config = config
        self.fingerprint = dict(fingerprint or {})
        self.progress, self.desc = progress, desc
        self.on_log = on_log if isinstance(on_log, list) else ([on_log] if on_log else [])
        self.step_hook = step_hook  # called at the start of every step (tests use it to kill the process)
        self.history: list[dict[str, Any]] = []
        self.accelerator = None
        self._loss_takes_model = len(inspect.signature(loss_fn).parameters) >= 2

    # ---- set-up ------------------------------------------------------------------------------
    def _setup(self):
        from accelerate import Accelerator
        from transformers import get_cosine_schedule_with_warmup

        c = self.config
        cuda = torch.cuda.is_available() and not c.cpu
        mp = ("bf16" if cuda else "no") if c.mixed_precision == "auto" else c.mixed_precision
        self.accelerator = acc = Accelerator(cpu=not cuda, mixed_precision=mp)
        if hasattr(self.batches, "set_rank"):
            self.batches.set_rank(acc.process_index, acc.num_processes)
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        # tied weights appear once in .parameters(), so nothing is optimised twice
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=c.lr)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        # stepped by hand once per optimizer step (accelerate's wrapper would step it once per process)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer.optimizer if hasattr(
            self.optimizer, "optimizer") else self.optimizer, c.warmup_steps, c.steps)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model) if self.accelerator else self.model

    # ---- checkpoints -------------------------------------------------------------------------
    def _save_checkpoint(self, step: int) -> Path:
        acc = self.accelerator
        rngs = [rng_state()]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            rngs = gather_object([rng_state()])
        path = self.ckpt_dir / f"step-{step:07d}.pt"
        if acc.is_main_process:
            state = {"format": CKPT_FORMAT, "step": step, "model": self.unwrapped.state_dict(),
                     "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "batches": self.batches.state_dict(), "rng": rngs, "world_size": acc.num_processes,
                     "fingerprint": self.fingerprint, "config": asdict(self.config)}
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
            for _, old in list_checkpoints(self.ckpt_dir)[:-self.config.keep_checkpoints]:
                old.unlink(missing_ok=True)
            self._write_history()
        acc.wait_for_everyone()
        return path

    def _resume(self) -> int:
        ckpts = list_checkpoints(self.ckpt_dir)
        if not ckpts:
            return 0
        step, path = ckpts[-1]
        ckpt = load_checkpoint(path)
        if ckpt.get("fingerprint", {}) != self.fingerprint:
            raise CheckpointError(f"{path} was written by a run with other settings ({_describe_diff(ckpt.get('fingerprint', {}), self.fingerprint)}). "
                                  f"Nothing was changed. Resume with the same settings, use another run "
                                  f"directory, or start over with resume=False.")
        try:
            self.unwrapped.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} does not fit this model/optimizer ({e}). Nothing was changed.") from e
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.batches.load_state_dict(ckpt["batches"])
        rngs = ckpt["rng"]
        if len(rngs) == self.accelerator.num_processes:
            set_rng_state(rngs[self.accelerator.process_index])
        else:  # resumed with another number of processes: data order is kept, random draws are not
            seed_everything(self.config.seed + 1000 * step + self.accelerator.process_index)
        if self.history_path.exists():
            import pandas as pd

            try:
                df = pd.read_csv(self.history_path)
                self.history = [r for r in df.to_dict("records") if r["step"] <= step]
            except Exception:  # history is a log, not state: a bad file is rebuilt from here on
                self.history = []
        return int(ckpt["step"])

    def _write_history(self) -> None:
        if not self.history:
            return
        import pandas as pd

        atomic_write_text(self.history_path, pd.DataFrame(self.history).to_csv(index=False))

    # ---- the loop ----------------------------------------------------------------------------
    def _call_loss(self, batch: Any):
        if self._loss_takes_model:
            return self.loss_fn(batch, self.model)
        return self.loss_fn(batch)

    def train(self, resume: bool = True) -> dict[str, Any]:
        from accelerate.utils import send_to_device
        from tqdm.auto import tqdm

        c = self.config
        seed_everything(c.seed)
        self._setup()
        acc = self.accelerator
        if acc.num_processes > 1:  # ranks draw different dropout / masking, like independent workers
            seed_everything(c.seed + acc.process_index)
        start = self._resume() if resume else 0
        if not resume and acc.is_main_process and self.ckpt_dir.exists():
            shutil.rmtree(self.ckpt_dir)  # starting over: the old run's checkpoints no longer apply
            self.history_path.unlink(missing_ok=True)
        acc.wait_for_everyone()
        self.model.train()
        bar = tqdm(total=c.steps, initial=start, desc=self.desc, disable=not (self.progress and acc.is_main_process),
                   dynamic_ncols=True)
        tokens_seen = int(self.history[-1]["tokens_seen"]) if self.history and "tokens_seen" in self.history[-1] else 0
        last_ckpt = list_checkpoints(self.ckpt_dir)[-1][1] if list_checkpoints(self.ckpt_dir) else None
        row: dict[str, Any] = {}
        for step in range(start + 1, c.steps + 1):
            if self.step_hook is not None:
                self.step_hook(step)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=acc.device)
            n_tokens = torch.zeros((), device=acc.device)
            logs_sum: dict[str, float] = {}
            for micro in range(c.grad_accum):
                batch = send_to_device(self.batches.next_batch(), acc.device)
                sync = micro == c.grad_accum - 1
                ctx = acc.no_sync(self.model) if (not sync and acc.num_processes > 1) else _null()
                with ctx:
                    with acc.autocast():
                        loss, logs = self._call_loss(batch)
                    acc.backward(loss / c.grad_accum)
                loss_sum += loss.detach().float()
                tok = logs.get("tokens") if isinstance(logs, dict) else None
                if tok is None and isinstance(batch, dict) and "attention_mask" in batch:
                    tok = batch["attention_mask"].sum()
                n_tokens += float(tok if tok is not None else 0)
                for k, v in (logs or {}).items():
                    if k != "tokens":
                        logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / c.grad_accum
            mean_loss = acc.reduce(loss_sum / c.grad_accum, reduction="mean")
            n_tokens = acc.reduce(n_tokens, reduction="sum")
            if not torch.isfinite(mean_loss):
                bar.close()
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(
                    f"non-finite loss ({float(mean_loss)}) at step {step}: stopped before updating the weights. "
                    f"The last good checkpoint is {last_ckpt or 'none (no checkpoint written yet)'}; lower the "
                    f"learning rate or check the inputs, then resume.")
            grad_norm = None
            if c.max_grad_norm:
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            tokens_seen += int(n_tokens)
            row = {"step": step, "loss": float(mean_loss), "lr": lr, "tokens_per_s": float(n_tokens) / dt,
                   "tokens_seen": tokens_seen, "step_time_s": dt,
                   **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}), **logs_sum}
            self.history.append(row)
            if acc.is_main_process:
                self._write_history()
                for cb in self.on_log:
                    cb(row)
            bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            if step % c.checkpoint_every == 0 or step == c.steps:
                last_ckpt = self._save_checkpoint(step)
        bar.close()
        self.model.eval()
        return {"steps": c.steps, "resumed_from": start, "tokens_seen": tokens_seen,
                "final_loss": row.get("loss", self.history[-1]["loss"] if self.history else float("nan")),
                "history": str(self.history_path)}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


# --------------------------------------------------------------------------------------------
# notebook helper
# --------------------------------------------------------------------------------------------

class LiveLossPlot:
    """An ``on_log`` callback that redraws the loss curve in a notebook every ``every`` steps."""

    def __init__(self, keys: tuple[str, ...] = ("loss",), every: int = 5, title: str = "training loss"):
        self.keys, self.every, self.title = keys, every, title
        self.rows: list[dict[str, Any]] = []
        self.handle = None

    def __call__(self, row: dict[str, Any]) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.rows.append(row)
        if len(self.rows) % self.every and len(self.rows) > 1:
            return
        fig, ax = plt.subplots(figsize=(7, 3))
        steps = [r["step"] for r in self.rows]
        for k in self.keys:
            ax.plot(steps, [r.get(k, math.nan) for r in self.rows], label=k)
        ax.set_xlabel("step"), ax.set_title(self.title), ax.legend()
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)


class BestCheckpoint:
    """The trainer's best-checkpoint hook (an ``on_log`` callback): evaluates the model every ``every`` steps and
    after the last step, and (``select_by_dev``) keeps a copy of the best weights; :meth:`finish` loads them back.

    With ``select_by_dev=False`` the evaluations are only recorded: the last weights are kept.
    Evaluation runs under a forked RNG so it cannot change the training run.
    """

    def __init__(self, name: str, student: nn.Module, evaluate: Callable[[nn.Module], dict], steps: int,
                 every: int, select_by_dev: bool):
        self.name, self.student, self.evaluate = name, student, evaluate
        self.steps, self.every, self.select = steps, every, select_by_dev
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def __call__(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        if step != self.steps and not (self.every and step % self.every == 0):
            return
        with torch.random.fork_rng(devices=[]):
            res = self.evaluate(self.student)
        rec = {"pass": self.name, "step": step, "dev_score": res["score"],
               **{f"dev_{k}": v for k, v in res["metrics"].items()}}
        self.records.append(rec)
        if self.select and (self.best is None or res["score"] > self.best["dev_score"]):
            self.best = rec
            self.best_state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}
        elif not self.select and step == self.steps:
            self.best = rec

    def finish(self) -> dict[str, Any]:
        """Load the selected weights into the student; return the selected evaluation record."""
        if self.best is None:
            raise RuntimeError(f"pass {self.name}: no dev evaluation was recorded (did training run?)")
        if self.select and self.best_state is not None:
            self.student.load_state_dict(self.best_state)
        return self.best
