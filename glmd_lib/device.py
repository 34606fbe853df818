"""Device selection: CUDA (with bf16 autocast) when present, else MPS, else CPU.

Every stage calls :func:`get_device` with its ``device`` parameter ("auto" by default), so the same
notebook runs on a laptop, on these 2-core CI machines and on a GPU without edits.
"""
from __future__ import annotations

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


def use_bf16(device: torch.device | str, setting: bool | None = None) -> bool:
    """The ONE precision rule: an explicit setting wins; ``None`` means bf16 on CUDA, fp32 elsewhere.

    fp32 on CPU by default keeps runs bitwise repeatable (the resume test relies on it); this CPU runs bf16
    matrix work natively, so ``True`` is the fast choice there.
    """
    return bool(setting) if setting is not None else torch.device(device).type == "cuda"


def autocast(device: torch.device | str, bf16: bool):
    """bf16 autocast when ``bf16`` is true, and *explicitly disabled* autocast otherwise.

    Disabling (rather than a no-op) matters: a frozen teacher asked to run in fp32 must stay fp32 even when
    called inside the trainer's own bf16 autocast region.
    """
    dev = torch.device(device)
    kind = dev.type if dev.type in ("cuda", "cpu", "mps", "xpu") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=bool(bf16))
