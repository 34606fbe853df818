"""Device selection: CUDA (with bf16 autocast) when present, else MPS, else CPU.

Every stage calls :func:`get_device` with its ``device`` parameter ("auto" by default), so the same
notebook runs on a laptop, on these 2-core CI machines and on a GPU without edits.
"""
from __future__ import annotations

import os
import warnings

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


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX, as oneDNN reports it).

    Without them (an AVX2-only CPU, e.g. many AMD EPYC machines) PyTorch emulates bf16 and a forward under bf16
    autocast is several times *slower* than fp32.
    ``GLMD_CPU_BF16=force`` claims support anyway (the tests use it to exercise the bf16 paths everywhere).
    """
    if os.environ.get("GLMD_CPU_BF16", "").lower() == "force":
        return True
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


_warned: set[str] = set()


def use_bf16(device: torch.device | str, setting: bool | None = None) -> bool:
    """The ONE precision rule: ``None`` means bf16 on CUDA, fp32 elsewhere; ``False`` fp32; ``True`` bf16 where
    it runs natively (CUDA, or a CPU with bf16 matrix units) and fp32 with a warning on a CPU without them.

    fp32 on CPU by default keeps runs bitwise repeatable (the resume test relies on it). On a CPU with
    AVX512-BF16/AMX, ``True`` is the fast choice (teacher forward about 2x faster); on one without, bf16 is
    emulated and far slower than fp32, so asking for it (as the demo profile does) falls back to fp32.
    """
    kind = torch.device(device).type
    if setting is None:
        return kind == "cuda"
    if setting and kind == "cpu" and not cpu_bf16_native():
        if "cpu" not in _warned:
            _warned.add("cpu")
            warnings.warn("bf16 was asked for, but this CPU has no bf16 matrix units (no AVX512-BF16 or AMX): "
                          "running in fp32, which is faster here (set GLMD_CPU_BF16=force to emulate bf16 anyway)",
                          stacklevel=2)
        return False
    return bool(setting)


def autocast(device: torch.device | str, bf16: bool):
    """bf16 autocast when ``bf16`` is true, and *explicitly disabled* autocast otherwise.

    Disabling (rather than a no-op) matters: a frozen teacher asked to run in fp32 must stay fp32 even when
    called inside the trainer's own bf16 autocast region.
    """
    dev = torch.device(device)
    kind = dev.type if dev.type in ("cuda", "cpu", "mps", "xpu") else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=bool(bf16))


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products on ``x`` run in: autocast's where it is on (bf16), else ``x``'s own."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def compile_problem() -> str | None:
    """Why ``torch.compile`` cannot build CPU kernels on this machine (None: it can): it needs a C++ compiler."""
    from torch._inductor import exc
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler as e:
        return f"torch.compile finds no C++ compiler ({e}); install g++ or use the eager kernel"
    return None
