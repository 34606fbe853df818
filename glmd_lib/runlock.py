"""One writer per run directory: an advisory lock held by ``glmd run`` and ``glmd stage1``.

Two pipelines on one run directory would delete each other's checkpoints and mix their results. The lock is
``<run_dir>/.lock``, taken with ``fcntl.flock``: the operating system releases it when the holding process
ends in any way (exit, exception, SIGKILL), so a lock can never be stale -- the file may remain, but nobody
holds it. The file records who holds it (pid, host, command, start time) for the error message.

The lock is re-entrant within one process (``glmd run`` holds it while its notebooks' kernels run, and a
notebook that calls ``run_stage1`` in the kernel is a *child* process: children inherit the permission through
``GLMD_RUN_LOCK``, which names the directory the parent holds). In a distributed launch (``torchrun``,
``accelerate launch``) rank 0 holds it for all ranks: the others are its siblings, not its children.

:func:`check_free` is the check without the hold: every stage calls it when it begins
(:func:`glmd_lib.artifacts.begin_stage`), so a notebook run by hand in Jupyter refuses a directory that a
``glmd run`` is writing into.
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


class RunDirError(RuntimeError):
    """The run directory cannot be used: it is a file, or it cannot be created or written."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
                f"{info.get('command')}")
    except (OSError, ValueError):
        return "another process"


def _exempt(run_dir: Path) -> bool:
    """This process may write without the lock: its parent holds it (or a directory above it: a seed's
    ``<run_dir>/seed-<k>`` is covered by ``<run_dir>``'s lock), or it is a non-zero rank of a launch."""
    held = os.environ.get(ENV)
    return (bool(held) and Path(held).resolve() in (run_dir, *run_dir.parents)) or os.environ.get("RANK", "0") != "0"


def prepare_run_dir(run_dir: Path | str) -> Path:
    """Create ``run_dir``; a :class:`RunDirError` naming the path and the remedy when it cannot be used."""
    run_dir = Path(run_dir).expanduser().resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file, not a directory: remove it or pass another "
                          f"--run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create run directory {run_dir} ({e.strerror or e}): pass a --run-dir in a "
                          f"writable place") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir} is not writable: fix its permissions or pass another --run-dir")
    return run_dir


def _acquire(run_dir: Path) -> int:
    """An open descriptor of ``<run_dir>/.lock`` holding the lock, or :class:`RunLockedError` naming the holder."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write into run directory {run_dir} ({e.strerror or e}): fix its permissions "
                          f"or pass another --run-dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(f"run directory {run_dir} is in use by {_holder(path)}. Wait for it to finish, "
                             f"stop it, or use another --run-dir.") from None
    return fd


def _command() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])


@contextlib.contextmanager
def run_lock(run_dir: Path | str, what: str | None = None) -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` for the duration of the block; raise :class:`RunLockedError` if it is held
    (and :class:`RunDirError` if the directory cannot be used)."""
    run_dir = prepare_run_dir(run_dir)
    if fcntl is None or _exempt(run_dir):
        yield run_dir
        return
    fd = _acquire(run_dir)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": what or _command(),
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


def check_free(run_dir: Path | str) -> Path:
    """Refuse (:class:`RunLockedError`) a run directory another process holds; take nothing. The directory
    is created, or a :class:`RunDirError` says why it cannot be."""
    run_dir = prepare_run_dir(run_dir)
    if fcntl is not None and not _exempt(run_dir):
        fd = _acquire(run_dir)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return run_dir
