"""One writer per run directory: an advisory lock held by ``glmd run`` and ``glmd stage1``.

Two pipelines on one run directory would delete each other's checkpoints and mix their results. The lock is
``<run_dir>/.lock``, taken with ``fcntl.flock``: the operating system releases it when the holding process
ends in any way (exit, exception, SIGKILL), so a lock can never be stale -- the file may remain, but nobody
holds it. The file records who holds it (pid, host, command, start time) for the error message.

The lock is re-entrant within one process (``glmd run`` holds it while its notebooks' kernels run, and a
notebook that calls ``run_stage1`` in the kernel is a *child* process: children inherit the permission through
``GLMD_RUN_LOCK``, which names the directory the parent holds).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import sys
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the workbench still runs, unprotected
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
ENV = "GLMD_RUN_LOCK"


class RunLockedError(RuntimeError):
    """Another process is writing into the run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
                f"{info.get('command')}")
    except (OSError, ValueError):
        return "another process"


def _inherited(run_dir: Path) -> bool:
    held = os.environ.get(ENV)
    return bool(held) and Path(held).resolve() == run_dir


@contextlib.contextmanager
def run_lock(run_dir: Path | str, what: str | None = None) -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` for the duration of the block; raise :class:`RunLockedError` if it is held."""
    run_dir = Path(run_dir).expanduser().resolve()
    if fcntl is None or _inherited(run_dir):
        yield run_dir
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"run directory {run_dir} is in use by {_holder(path)}. Wait for it to finish, "
                                 f"stop it, or use another --run-dir.") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": what or " ".join(sys.argv),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        previous = os.environ.get(ENV)
        os.environ[ENV] = str(run_dir)  # kernels started from here may write into the directory we hold
        try:
            yield run_dir
        finally:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
