"""The trainer: schedule, accumulation, checkpoints (atomic, last K), exact resume after SIGKILL, NaN guard,
corrupted checkpoints, and 2-process DDP (gloo) with identical weights on every rank."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from glmd_lib.checkpoints import CheckpointError, list_checkpoints, load_checkpoint
from glmd_lib.trainer import BestCheckpoint, IndexBatches, NonFiniteLossError, TrainConfig, Trainer

REPO = Path(__file__).resolve().parent.parent

# A tiny regression task with dropout, so that resuming must also restore the RNG to be exact.
TASK = textwrap.dedent("""
    import torch
    from glmd_lib.trainer import IndexBatches, TrainConfig, Trainer

    def make(seed=0, n=64, batch=8):
        g = torch.Generator().manual_seed(123)
        X = torch.randn(n, 6, generator=g)
        Y = X @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Dropout(0.2),
                                    torch.nn.Linear(16, 1))
        batches = IndexBatches(n, batch, lambda idx: {"x": X[idx], "y": Y[idx]}, seed=seed)

        def loss_fn(batch, model):
            loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
            return loss, {"tokens": batch["x"].shape[0]}
        return model, loss_fn, batches
""")


def _task():
    ns: dict = {}
    exec(TASK, ns)
    return ns["make"]


def _train(out, steps=8, resume=True, **kw):
    model, loss_fn, batches = _task()()
    cfg = TrainConfig(steps=steps, lr=0.05, warmup_steps=2, checkpoint_every=kw.pop("checkpoint_every", 2),
                      keep_checkpoints=kw.pop("keep_checkpoints", 2), grad_accum=kw.pop("grad_accum", 1), cpu=True,
                      schedule=kw.pop("schedule", "cosine"))
    trainer = Trainer(model, kw.pop("loss_fn", loss_fn), batches, out, cfg, progress=False, **kw)
    summary = trainer.train(resume=resume)
    return model, summary


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_falls_history_and_last_k_checkpoints(tmp_path):
    model, summary = _train(tmp_path, steps=20, checkpoint_every=3, keep_checkpoints=2)
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["step"]) == list(range(1, 21))
    assert {"loss", "lr", "tokens_per_s", "tokens_seen"} <= set(hist.columns)
    assert hist["loss"].iloc[-5:].mean() < 0.5 * hist["loss"].iloc[:3].mean()
    # warm-up then cosine decay: peak after 2 warm-up steps, then decreasing to ~0
    lr = hist["lr"].tolist()
    assert lr[0] < lr[1] <= lr[2] and lr[2] == pytest.approx(0.05) and lr[-1] < 0.01
    assert all(b <= a for a, b in zip(lr[2:], lr[3:]))
    # every 3 steps and at the end, keep the last 2
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [18, 20]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
    assert summary["tokens_seen"] == 20 * 8


def test_linear_schedule_and_no_checkpoints(tmp_path):
    """The task teachers' settings: linear decay to 0 after the warm-up, and no checkpoint files at all."""
    _, summary = _train(tmp_path, steps=6, schedule="linear", checkpoint_every=0)
    lr = pd.read_csv(tmp_path / "history.csv")["lr"].tolist()
    assert lr[2] == pytest.approx(0.05) and lr[3:] == pytest.approx([0.05 * k / 4 for k in (3, 2, 1)])
    assert not (tmp_path / "checkpoints").exists() and summary["steps"] == 6
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(steps=1, schedule="step")


def test_best_checkpoint_at_given_steps_keeps_best_trained_state(tmp_path):
    """BestCheckpoint evaluates at the listed steps and the last one, and restores the best weights; a frozen
    parameter is not copied (and not changed)."""
    model, loss_fn, batches = _task()()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    scores = iter([0.2, 0.9, 0.5, 0.1])
    seen = {}

    def evaluate(m):
        step = len(seen) + 1
        seen[step] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        return {"score": next(scores), "metrics": {"acc": 0.0}}

    best = BestCheckpoint("t", model, evaluate, steps=8, every={2, 3, 5}, keep_best=True)
    Trainer(model, loss_fn, batches, tmp_path, TrainConfig(steps=8, lr=0.05, checkpoint_every=0, cpu=True),
            progress=False, on_log=best).train()
    assert [r["step"] for r in best.records] == [2, 3, 5, 8] and best.finish()["step"] == 3
    assert best.best["selection_score"] == 0.9 and best.best["selection_acc"] == 0.0  # named for what chose it
    assert "0.weight" not in best.best_state
    assert all(torch.equal(v, seen[2][k]) for k, v in model.state_dict().items())
    assert torch.equal(model[0].weight, frozen)


def test_resume_in_process_is_exact(tmp_path):
    full, _ = _train(tmp_path / "a", steps=8)

    class Stop(Exception):
        pass

    def stop_at_6(step):
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        _train(tmp_path / "b", steps=8, step_hook=stop_at_6)
    assert list_checkpoints(tmp_path / "b" / "checkpoints")[-1][0] == 4
    resumed, summary = _train(tmp_path / "b", steps=8)
    assert summary["resumed_from"] == 4
    assert _same_weights(full, resumed)
    hist = pd.read_csv(tmp_path / "b" / "history.csv")
    assert list(hist["step"]) == list(range(1, 9))


def test_resume_that_forgot_the_data_position_would_differ(tmp_path):
    """Guards the exact-resume tests: they can fail when a piece of state is not restored."""
    full, _ = _train(tmp_path / "a", steps=8)
    step, path = list_checkpoints(tmp_path / "a" / "checkpoints")[0]
    assert step == 6
    ckpt = load_checkpoint(path)
    ckpt["batches"]["pos"] = 0
    target = tmp_path / "c" / "checkpoints" / path.name
    target.parent.mkdir(parents=True)
    torch.save(ckpt, target)
    changed, summary = _train(tmp_path / "c", steps=8)
    assert summary["resumed_from"] == 6
    assert not _same_weights(full, changed)


def test_sigkill_mid_training_then_resume_is_bitwise_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(TASK + textwrap.dedent("""
        import os, signal, sys
        out, kill_at = sys.argv[1], int(sys.argv[2])
        model, loss_fn, batches = make()
        def hook(step):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        cfg = TrainConfig(steps=10, lr=0.05, warmup_steps=2, checkpoint_every=3, keep_checkpoints=2, cpu=True)
        Trainer(model, loss_fn, batches, out, cfg, progress=False, step_hook=hook).train()
        torch.save(model.state_dict(), os.path.join(out, "final.pt"))
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(out, kill_at):
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at)], env=env,
                              capture_output=True, text=True, timeout=120)

    ref = run(tmp_path / "ref", -1)
    assert ref.returncode == 0, ref.stderr
    killed = run(tmp_path / "job", 8)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "job" / "final.pt").exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "job" / "checkpoints")] == [3, 6]
    resumed = run(tmp_path / "job", -1)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "ref" / "final.pt")
    b = torch.load(tmp_path / "job" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    make = _task()
    m1, loss_fn, _ = make()
    m2, _, _ = make()
    X = torch.randn(16, 6)
    Y = torch.randn(16, 1)
    m1.eval(), m2.eval()

    def det_loss(batch, model):  # no dropout: compare the two updates exactly-ish
        model.eval()
        return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"]), {}

    big = IndexBatches(16, 16, lambda i: {"x": X[i], "y": Y[i]}, shuffle=False)
    small = IndexBatches(16, 8, lambda i: {"x": X[i], "y": Y[i]}, shuffle=False)
    cfg = dict(steps=1, lr=0.01, warmup_steps=0, max_grad_norm=None, cpu=True)
    Trainer(m1, det_loss, big, tmp_path / "a", TrainConfig(**cfg), progress=False).train()
    Trainer(m2, det_loss, small, tmp_path / "b", TrainConfig(**cfg, grad_accum=2), progress=False).train()
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    _, loss_fn, _ = _task()()

    def bad_at_5(batch, model):
        loss, logs = loss_fn(batch, model)
        if bad_at_5.calls == 4:
            loss = loss * float("nan")
        bad_at_5.calls += 1
        return loss, logs
    bad_at_5.calls = 0

    with pytest.raises(NonFiniteLossError, match="step 5"):
        _train(tmp_path, steps=8, loss_fn=bad_at_5)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [s for s, _ in ckpts] == [2, 4]
    state = load_checkpoint(ckpts[-1][1])["model"]
    assert all(torch.isfinite(v).all() for v in state.values())
    assert pd.read_csv(tmp_path / "history.csv")["step"].max() == 4


def test_corrupted_checkpoint_gives_clear_error_and_changes_nothing(tmp_path):
    _train(tmp_path, steps=4)
    step, path = list_checkpoints(tmp_path / "checkpoints")[-1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    hist_before = (tmp_path / "history.csv").read_bytes()
    with pytest.raises(CheckpointError, match="corrupted"):
        _train(tmp_path, steps=8)
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == before
    assert (tmp_path / "history.csv").read_bytes() == hist_before


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    _train(tmp_path, steps=4, fingerprint={"hidden": 16})
    with pytest.raises(CheckpointError, match="hidden"):
        _train(tmp_path, steps=4, fingerprint={"hidden": 32})


def test_a_setting_added_later_at_its_none_default_still_resumes(tmp_path):
    """A checkpoint written before a setting existed resumes when that setting is None (its old behaviour)."""
    _train(tmp_path, steps=4, fingerprint={"hidden": 16})
    _train(tmp_path, steps=6, fingerprint={"hidden": 16, "max_blocks": None})
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")][-1] == 6
    with pytest.raises(CheckpointError, match="max_blocks: checkpoint None vs now 4"):
        _train(tmp_path, steps=8, fingerprint={"hidden": 16, "max_blocks": 4})


def test_index_batches_cover_epoch_and_shard_by_rank():
    seen = []
    b0 = IndexBatches(10, 2, lambda i: i.tolist(), seed=3, rank=0, world_size=2)
    b1 = IndexBatches(10, 2, lambda i: i.tolist(), seed=3, rank=1, world_size=2)
    for _ in range(2):
        x0, x1 = b0.next_batch(), b1.next_batch()
        assert not set(x0) & set(x1)
        seen += x0 + x1
    assert len(set(seen)) == 8
    state = b0.state_dict()
    nxt = b0.next_batch()
    b0.load_state_dict(state)
    assert b0.next_batch() == nxt
    with pytest.raises(ValueError, match="fewer than one global batch"):
        IndexBatches(3, 2, lambda i: i, world_size=2)


@pytest.mark.distributed
def test_two_process_gloo_loss_falls_and_ranks_agree(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(TASK + textwrap.dedent("""
        import os, sys, torch
        out = sys.argv[1]
        model, loss_fn, batches = make(n=128, batch=8)
        cfg = TrainConfig(steps=15, lr=0.05, warmup_steps=2, checkpoint_every=5, cpu=True)
        trainer = Trainer(model, loss_fn, batches, out, cfg, progress=False)
        trainer.train()
        acc = trainer.accelerator
        assert acc.num_processes == 2, acc.num_processes
        flat = torch.cat([p.detach().flatten() for p in trainer.unwrapped.parameters()])
        torch.save(flat, os.path.join(out, f"weights-rank{acc.process_index}.pt"))
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    w0 = torch.load(tmp_path / "out" / "weights-rank0.pt")
    w1 = torch.load(tmp_path / "out" / "weights-rank1.pt")
    assert torch.equal(w0, w1)
    hist = pd.read_csv(tmp_path / "out" / "history.csv")
    assert hist["loss"].iloc[-4:].mean() < 0.5 * hist["loss"].iloc[:2].mean()
    assert hist["tokens_seen"].iloc[-1] == 15 * 2 * 8  # both ranks' examples counted


# --------------------------------------------------------------------------------------------
# the loss of an optimizer step is the mean over all its valid tokens (issue #10, fix 7)
# --------------------------------------------------------------------------------------------

# per-token regression with padding: rows 0-7 have 1 valid token of 5, rows 8-15 all 5
MASKED = textwrap.dedent("""
    import torch

    def masked_data():
        g = torch.Generator().manual_seed(7)
        X, Y = torch.randn(16, 5, 6, generator=g), torch.randn(16, 5, 1, generator=g)
        M = torch.ones(16, 5)
        M[:8, 1:] = 0
        return X, Y, M

    def masked_loss(batch, model):
        m = batch["m"]
        err = ((model(batch["x"]) - batch["y"]) ** 2).squeeze(-1)
        count = m.sum()
        return (err * m).sum() / count, {"loss_count": count}

    def grads_before_step(store):
        # records every parameter's gradient as the optimizer sees it (after accumulation, all-reduce)
        def hook(opt, args, kwargs):
            store.append([p.grad.detach().clone() for grp in opt.param_groups for p in grp["params"]])
        from torch.optim.optimizer import register_optimizer_step_pre_hook
        return register_optimizer_step_pre_hook(hook)
""")


def _masked():
    ns: dict = {}
    exec(MASKED, ns)
    return ns


def test_micro_batches_weigh_by_their_valid_tokens(tmp_path):
    """Two micro-batches with 8 and 40 valid tokens give the gradient (and the logged loss) of the same 16
    rows as one batch. (The old mean of the micro-batches' means weighted each of the first 8 tokens 5x.)"""
    ns = _masked()
    X, Y, M = ns["masked_data"]()
    collate = lambda i: {"x": X[i], "y": Y[i], "m": M[i]}  # noqa: E731
    grads, rows = {}, {}
    for name, batch, accum in (("one", 16, 1), ("two", 8, 2)):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 1)
        store: list = []
        handle = ns["grads_before_step"](store)
        try:
            Trainer(model, ns["masked_loss"], IndexBatches(16, batch, collate, shuffle=False), tmp_path / name,
                    TrainConfig(steps=1, lr=0.01, max_grad_norm=None, grad_accum=accum, cpu=True),
                    progress=False).train()
        finally:
            handle.remove()
        grads[name], rows[name] = store[0], pd.read_csv(tmp_path / name / "history.csv").iloc[0]
    for a, b in zip(grads["one"], grads["two"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert rows["one"]["loss"] == pytest.approx(rows["two"]["loss"], rel=1e-6)
    assert "loss_count" not in rows["two"]  # a weight, not a logged metric


@pytest.mark.distributed
def test_two_processes_weigh_by_the_global_count_of_valid_tokens(tmp_path):
    """Rank 0 gets the 8 one-token rows, rank 1 the 8 full ones: the all-reduced count makes the step's
    gradient that of one process over all 16 rows."""
    ns = _masked()
    X, Y, M = ns["masked_data"]()
    script = tmp_path / "ddp.py"
    script.write_text(MASKED + textwrap.dedent("""
        import os, sys
        from glmd_lib.trainer import IndexBatches, TrainConfig, Trainer
        out = sys.argv[1]
        X, Y, M = masked_data()
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 1)
        store = []
        grads_before_step(store)
        batches = IndexBatches(16, 8, lambda i: {"x": X[i], "y": Y[i], "m": M[i]}, shuffle=False)
        trainer = Trainer(model, masked_loss, batches, out,
                          TrainConfig(steps=1, lr=0.01, max_grad_norm=None, cpu=True), progress=False)
        trainer.train()
        torch.save(store[0], os.path.join(out, f"grads-rank{trainer.accelerator.process_index}.pt"))
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 1)
    ref = torch.autograd.grad(ns["masked_loss"]({"x": X, "y": Y, "m": M}, model)[0], list(model.parameters()))
    by_shape = {tuple(g.shape): g for g in ref}
    for rank in (0, 1):
        for g in torch.load(tmp_path / "out" / f"grads-rank{rank}.pt"):
            torch.testing.assert_close(g, by_shape[tuple(g.shape)], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# starting over (resume=False) keeps the old run until the new one has a checkpoint (issue #11, point 1)
# --------------------------------------------------------------------------------------------

def test_starting_over_keeps_the_old_run_until_the_first_new_checkpoint(tmp_path):
    _train(tmp_path, steps=8, checkpoint_every=2)
    old = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    old_history = (tmp_path / "history.csv").read_bytes()

    class Stop(Exception):
        pass

    def stop_at(n):
        def hook(step):
            if step == n:
                raise Stop
        return hook

    with pytest.raises(Stop):  # fails before its first checkpoint (step 2): the old run is put back
        _train(tmp_path, steps=8, resume=False, step_hook=stop_at(2))
    assert {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()} == old
    assert (tmp_path / "history.csv").read_bytes() == old_history
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside
    with pytest.raises(Stop):  # fails after it: only the new run's checkpoints remain
        _train(tmp_path, steps=8, resume=False, step_hook=stop_at(5))
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    assert pd.read_csv(tmp_path / "history.csv")["step"].max() == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
