"""The run-directory lock: a second writer is refused with the holder named; a killed holder leaves no
stale lock; kernels started by the holder inherit it."""
import os
import signal
import subprocess
import sys
import time

import pytest

from glmd_lib.runlock import ENV, RunLockedError, run_lock

HOLD = ("import sys, time; from glmd_lib.runlock import run_lock\n"
        "with run_lock(sys.argv[1], what='holder-test'):\n    print('held', flush=True); time.sleep(60)\n")


def _holder(run_dir):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_writer_is_refused_naming_the_holder_and_sigkill_leaves_no_stale_lock(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"pid {p.pid}.*holder-test"):
            with run_lock(tmp_path):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (tmp_path / ".lock").exists()  # the file stays, but nobody holds it
    with run_lock(tmp_path):
        pass


def test_lock_is_inherited_by_children_and_released_after(tmp_path):
    with run_lock(tmp_path):
        assert os.environ[ENV] == str(tmp_path.resolve())
        out = subprocess.run([sys.executable, "-c", "import sys; from glmd_lib.runlock import run_lock\n"
                              "with run_lock(sys.argv[1]): print('child ok')", str(tmp_path)],
                             capture_output=True, text=True, timeout=60)
        assert "child ok" in out.stdout, out.stderr
    assert ENV not in os.environ
    p = _holder(tmp_path)  # released: a fresh process can take it
    p.kill()
    p.wait()


def test_check_free_refuses_a_held_directory_without_taking_it(tmp_path):
    from glmd_lib.runlock import check_free

    assert check_free(tmp_path / "new") == (tmp_path / "new").resolve()  # created, not held afterwards
    with run_lock(tmp_path / "new"):
        pass
    p = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"pid {p.pid}"):
            check_free(tmp_path)
    finally:
        p.kill()
        p.wait()
    check_free(tmp_path)


def test_children_and_other_ranks_are_exempt(tmp_path, monkeypatch):
    from glmd_lib.runlock import check_free

    p = _holder(tmp_path)
    try:
        monkeypatch.setenv("RANK", "1")  # rank 0 of the same launch holds it for every rank
        check_free(tmp_path)
        with run_lock(tmp_path):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunLockedError):
            check_free(tmp_path)
    finally:
        p.kill()
        p.wait()


def test_unusable_run_directory_names_the_path_and_the_remedy(tmp_path):
    from glmd_lib.runlock import RunDirError

    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(RunDirError, match=rf"{afile} is a file, not a directory: remove it or pass another"):
        with run_lock(afile):
            pass
    with pytest.raises(RunDirError, match=rf"cannot create run directory {afile / 'run'} .*writable place"):
        with run_lock(afile / "run"):
            pass
