"""Device selection: CUDA (with bf16 autocast) when present, else MPS, else CPU.

Every stage calls :func:`get_device` with its ``device`` parameter ("auto" by default), so the same
notebook runs on a laptop, on these 2-core CI machines and on a GPU without edits.
"""
from __future__ import annotations

import contextlib
import os

import torch


def get_device(preference: str | None = "auto") -> torch.device:
    """Return the device to use. ``"auto"`` picks CUDA, then MPS, then CPU; anything else is explicit."""
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={preference!r} was asked for but CUDA is not available on this machine")
    return dev


def set_threads(n: int | None = None) -> int:
    """Use ``n`` intra-op threads (default: every core this process may run on)."""
    if n is None or n <= 0:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS
            n = os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere (fp32 on CPU keeps tests bitwise reproducible)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

