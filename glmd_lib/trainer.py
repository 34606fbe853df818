"""The ONE training loop (stage 1, both stage-2 passes, the task teachers), on Hugging Face ``accelerate``.

What it does, and why:

* One process on CPU/GPU, or several under ``accelerate launch`` (DDP; gloo on CPU). Each rank draws its
  own slice of every global batch, gradients are averaged by DDP, so every rank holds the same weights.
* AdamW over the parameters that require grad (freeze a part of the model by switching ``requires_grad``
  off), linear warm-up then cosine or linear decay to a floor (:mod:`glmd_lib.optim`), gradient accumulation,
  gradient clipping, and bf16 autocast by :func:`glmd_lib.device.use_bf16`'s rule (``None``: CUDA only; fp32 on CPU keeps runs bitwise
  repeatable).
* Checkpoints every ``checkpoint_every`` steps (0: none, for short runs that start over), the last
  ``keep_checkpoints`` kept (:mod:`glmd_lib.checkpoints`). ``train(resume=True)`` continues from the newest one
  exactly: killed with SIGKILL and resumed, a run ends with bitwise the weights of an uninterrupted one (CPU).
* A non-finite loss stops the run *before* the optimizer step, naming the step; the checkpoints on disk are
  the last good state. Starting over (``resume=False``) sets the old run's checkpoints aside and deletes them
  only once the new run has written its first checkpoint (:class:`glmd_lib.checkpoints.PreviousRun`).
* A step's loss is the mean over *all* its valid tokens, across micro-batches and processes: each loss is
  weighted by its denominator (``logs["loss_count"]``; without one every micro-batch weighs 1) and the
  gradients are divided by the all-reduced total, so a micro-batch of padded inputs weighs by what it holds.
* ``history.csv`` (step, loss, lr, tokens/s and whatever the loss reports) is rewritten atomically every
  step; tqdm bars work in terminals and notebooks; ``on_log`` callbacks see every row: ``LiveLossPlot``
  (:mod:`glmd_lib.distill.figures`) draws it, :class:`BestCheckpoint` evaluates on dev and keeps the best weights.

The loss is a closure ``loss_fn(batch) -> (loss, logs)`` or ``loss_fn(batch, model) -> (loss, logs)``; the
second form receives the *prepared* model (DDP-wrapped under several processes) and must call it for its
forward pass, otherwise DDP cannot synchronise the gradients. ``logs`` is a dict of scalars (floats or
0-dim tensors); a ``tokens`` entry counts tokens for tokens/s (default: ``batch["attention_mask"].sum()``),
a ``loss_count`` entry is the loss's denominator (a weight, not logged).

The batch source is any object with ``next_batch()``, ``state_dict()`` and ``load_state_dict()``;
:class:`IndexBatches` is the usual one (shuffled epochs over indices, sharded by rank).
"""
from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import torch
from torch import nn

from glmd_lib.checkpoints import (CheckpointError, PreviousRun, all_rng_states, latest_checkpoint, list_checkpoints,
                                  read_history, restore_rng_state, seed_everything, trainable_state,
                                  write_checkpoint, write_history)
from glmd_lib.device import use_bf16
from glmd_lib.optim import build_optimizer, build_scheduler


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
    schedule: Literal["cosine", "linear"] = "cosine"  # decay after the warm-up
    max_grad_norm: float | None = 1.0
    grad_accum: int = 1
    checkpoint_every: int = 50  # 0: no checkpoints (the run cannot resume)
    keep_checkpoints: int = 2
    seed: int = 0
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW (PyTorch's defaults; the paper's stage 1: 0.9, 0.98)
    eps: float = 1e-8
    lr_floor: float = 0.0  # the decay ends at lr_floor x lr (glmd_lib.optim.lr_factor) ...
    decay_fraction: float = 1.0  # ... after this share of the steps, and stays there
    bf16: bool | None = None  # bf16 autocast; None: on CUDA only (glmd_lib.device.use_bf16)
    cpu: bool | None = None  # force CPU (None: whatever accelerate finds)

    def __post_init__(self) -> None:
        for k in ("steps", "grad_accum", "keep_checkpoints"):
            if getattr(self, k) < 1:
                raise ValueError(f"TrainConfig.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("warmup_steps", "checkpoint_every"):
            if getattr(self, k) < 0:
                raise ValueError(f"TrainConfig.{k} must be >= 0, got {getattr(self, k)}")
        if not (0 <= self.lr_floor <= 1 and 0 < self.decay_fraction <= 1):
            raise ValueError(f"TrainConfig: lr_floor must be in [0, 1] and decay_fraction in (0, 1], got "
                             f"{self.lr_floor} and {self.decay_fraction}")
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"TrainConfig.schedule must be 'cosine' or 'linear', got {self.schedule!r}")


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
        self._perm: Any = None  # this epoch's order, drawn on first use
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
        self.previous = PreviousRun(self.ckpt_dir, self.history_path)  # the old run, while one starts over
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

        c = self.config
        cuda = torch.cuda.is_available() and not c.cpu
        mp = "bf16" if use_bf16("cuda" if cuda else "cpu", c.bf16) else "no"
        self.accelerator = acc = Accelerator(cpu=not cuda, mixed_precision=mp)
        if hasattr(self.batches, "set_rank"):
            self.batches.set_rank(acc.process_index, acc.num_processes)
        self.model, self.optimizer = acc.prepare(self.model, build_optimizer(self.model, c))
        # stepped by hand once per optimizer step (accelerate's wrapper would step it once per process)
        self.scheduler = build_scheduler(getattr(self.optimizer, "optimizer", self.optimizer), c)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model) if self.accelerator else self.model

    # ---- checkpoints -------------------------------------------------------------------------
    def _save_checkpoint(self, step: int) -> Path:
        acc = self.accelerator
        rngs = all_rng_states(acc.num_processes)  # collective: every rank takes part
        path = self.ckpt_dir / f"step-{step:07d}.pt"
        if acc.is_main_process:
            state = {"model": self.unwrapped.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "batches": self.batches.state_dict(), "rng": rngs,
                     "world_size": acc.num_processes, "fingerprint": self.fingerprint, "config": asdict(self.config)}
            path = write_checkpoint(self.ckpt_dir, step, state, self.config.keep_checkpoints)
            write_history(self.history_path, self.history)
            self.previous.drop()  # the new run can resume from here: the old one is no longer needed
        acc.wait_for_everyone()
        return path

    def _resume(self) -> int:
        found = latest_checkpoint(self.ckpt_dir, self.fingerprint)
        if found is None:
            return 0
        path, ckpt = found
        try:
            self.unwrapped.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} does not fit this model/optimizer ({e}). Nothing was changed.") from e
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.batches.load_state_dict(ckpt["batches"])
        step, acc = int(ckpt["step"]), self.accelerator
        restore_rng_state(ckpt["rng"], acc.process_index, acc.num_processes, self.config.seed + 1000 * step)
        self.history = read_history(self.history_path, step)
        return step

    # ---- one optimizer step ------------------------------------------------------------------
    def _call_loss(self, batch: Any):
        return self.loss_fn(batch, self.model) if self._loss_takes_model else self.loss_fn(batch)

    def _accumulate(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Forward and backward over ``grad_accum`` micro-batches: (loss, tokens, logs) of the whole step.

        Each micro-batch's loss is a mean over its own ``loss_count`` valid tokens; backpropagating
        ``loss * loss_count`` sums the per-token terms, and dividing the gradients by the global count (all
        micro-batches, all-reduced over processes; times the number of processes, which DDP averaged over)
        makes them the gradient of the mean over every valid token of the step."""
        from accelerate.utils import send_to_device

        c, acc = self.config, self.accelerator
        loss_sum, count, n_tokens = (torch.zeros((), device=acc.device) for _ in range(3))
        logs_sum: dict[str, float] = {}
        for micro in range(c.grad_accum):
            batch = send_to_device(self.batches.next_batch(), acc.device)
            last = micro == c.grad_accum - 1  # DDP all-reduces the gradients on the last backward only
            ctx = acc.no_sync(self.model) if (not last and acc.num_processes > 1) else contextlib.nullcontext()
            with ctx:
                with acc.autocast():
                    loss, logs = self._call_loss(batch)
                logs = dict(logs or {})
                weight = torch.as_tensor(logs.pop("loss_count", 1.0), dtype=torch.float32, device=acc.device)
                acc.backward(loss * weight.detach())
            loss_sum += loss.detach().float() * weight
            count += weight
            tok = logs.pop("tokens", None)
            if tok is None and isinstance(batch, dict) and "attention_mask" in batch:
                tok = batch["attention_mask"].sum()
            n_tokens += float(tok if tok is not None else 0)
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) * float(weight)
        total = acc.reduce(count, reduction="sum").clamp(min=1e-12)  # no valid token at all: zero gradients
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(acc.num_processes / total.to(p.grad.dtype))
        logs = {k: v / max(float(count), 1e-12) for k, v in logs_sum.items()}  # this process's token mean
        return acc.reduce(loss_sum, reduction="sum") / total, acc.reduce(n_tokens, reduction="sum"), logs

    def _step(self, step: int, last_ckpt: Path | None, bar) -> dict[str, Any]:
        """One optimizer step; returns its history row (not yet appended)."""
        c = self.config
        t0 = time.perf_counter()
        mean_loss, n_tokens, logs = self._accumulate()
        if not torch.isfinite(mean_loss):
            bar.close()
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"non-finite loss ({float(mean_loss)}) at step {step}: stopped before updating the weights. "
                f"The last good checkpoint is {last_ckpt or 'none (no checkpoint written yet)'}; lower the "
                f"learning rate or check the inputs, then resume.")
        grad_norm = None
        if c.max_grad_norm:
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        seen = int(self.history[-1].get("tokens_seen", 0)) if self.history else 0
        return {"step": step, "loss": float(mean_loss), "lr": lr, "tokens_per_s": float(n_tokens) / dt,
                "tokens_seen": seen + int(n_tokens), "step_time_s": dt,
                **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}), **logs}

    # ---- the loop ----------------------------------------------------------------------------
    def _begin(self, resume: bool) -> int:
        """Set up, and either resume (the step to continue after) or start over (0; the old run set aside)."""
        c = self.config
        seed_everything(c.seed)
        self._setup()
        acc = self.accelerator
        if acc.num_processes > 1:  # ranks draw different dropout / masking, like independent workers
            seed_everything(c.seed + acc.process_index)
        if acc.is_main_process and resume:
            self.previous.recover()
        elif acc.is_main_process:
            self.previous.set_aside()
        acc.wait_for_everyone()
        return self._resume() if resume else 0

    def train(self, resume: bool = True) -> dict[str, Any]:
        from tqdm.auto import tqdm

        c = self.config
        start = self._begin(resume)
        acc = self.accelerator
        self.model.train()
        bar = tqdm(total=c.steps, initial=start, desc=self.desc, disable=not (self.progress and acc.is_main_process),
                   dynamic_ncols=True)
        last_ckpt = (list_checkpoints(self.ckpt_dir) or [(0, None)])[-1][1]
        try:
            for step in range(start + 1, c.steps + 1):
                if self.step_hook is not None:
                    self.step_hook(step)
                row = self._step(step, last_ckpt, bar)
                self.history.append(row)
                if acc.is_main_process:
                    write_history(self.history_path, self.history)
                    for cb in self.on_log:
                        cb(row)
                bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
                bar.update(1)
                if c.checkpoint_every and (step % c.checkpoint_every == 0 or step == c.steps):
                    last_ckpt = self._save_checkpoint(step)
        except BaseException:
            if acc.is_main_process:  # no-op once the new run has a checkpoint (the old one is gone then)
                self.previous.restore()
            raise
        finally:
            bar.close()
        if acc.is_main_process:
            self.previous.drop()  # a run without checkpoints: the old one goes once this one has finished
        self.model.eval()
        last = self.history[-1] if self.history else {}
        return {"steps": c.steps, "resumed_from": start, "tokens_seen": int(last.get("tokens_seen", 0)),
                "final_loss": last.get("loss", float("nan")), "history": str(self.history_path)}


# --------------------------------------------------------------------------------------------
# on_log hooks: the best-checkpoint selector (a live plot for notebooks: glmd_lib.distill.figures.LiveLossPlot)
# --------------------------------------------------------------------------------------------

class BestCheckpoint:
    """The trainer's best-checkpoint hook (an ``on_log`` callback): evaluates the model after the steps in
    ``every`` (an int: every that many steps, 0 never; a collection: exactly those steps) and after the last
    step, and (``keep_best``) keeps a copy of the best weights; :meth:`finish` loads them back.

    ``evaluate(model)`` returns ``{"score": float, "metrics": {name: float}}`` on the caller's selection split;
    each is recorded as ``selection_score`` and ``selection_<metric>``, and a tie keeps the earlier step.
    With ``keep_best=False`` the evaluations are only recorded: the last weights are kept.
    Evaluation runs under a forked RNG so it cannot change the training run. Only what training can change is
    copied (parameters that require grad, and buffers): a model with a frozen body costs little memory.
    """

    def __init__(self, name: str, student: nn.Module, evaluate: Callable[[nn.Module], dict], steps: int,
                 every: int | Collection[int], keep_best: bool):
        self.name, self.student, self.evaluate = name, student, evaluate
        self.steps, self.select = steps, keep_best
        self.every = every if isinstance(every, int) else 0
        self.at = frozenset(every) if not isinstance(every, int) else frozenset()
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def due(self, step: int) -> bool:
        return step == self.steps or step in self.at or bool(self.every and step % self.every == 0)

    def __call__(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        if not self.due(step):
            return
        with torch.random.fork_rng(devices=[]):
            res = self.evaluate(self.student)
        rec = {"pass": self.name, "step": step, "selection_score": res["score"],
               **{f"selection_{k}": v for k, v in res["metrics"].items()}}
        self.records.append(rec)
        if self.select and (self.best is None or res["score"] > self.best["selection_score"]):
            self.best = rec
            self.best_state = trainable_state(self.student)
        elif not self.select and step == self.steps:
            self.best = rec

    def finish(self) -> dict[str, Any]:
        """Load the selected weights into the student; return the selected evaluation record."""
        if self.best is None:
            raise RuntimeError(f"pass {self.name}: no selection evaluation was recorded (did training run?)")
        if self.select and self.best_state is not None:
            self.student.load_state_dict(self.best_state, strict=False)
        return self.best

