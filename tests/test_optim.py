"""The optimizer and the schedule (glmd_lib.optim) and the paper's settings they make expressible."""
import json
import math

import pytest
import torch
from transformers import get_scheduler

from glmd_lib.config.base import ConfigError, parse_params
from glmd_lib.config.stages import PAPER_TASK_EPOCHS, Stage1Config, Stage2Config
from glmd_lib.distill.stage2 import pass_steps
from glmd_lib.optim import build_optimizer, build_scheduler, lr_factor
from glmd_lib.trainer import TrainConfig


def _lrs(sched, opt, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_defaults_are_transformers_schedules(schedule):
    """Floor 0 and decay over every step: the same learning rates as transformers' own schedulers."""
    c = TrainConfig(steps=20, lr=1e-3, warmup_steps=3, schedule=schedule)
    w = torch.nn.Parameter(torch.ones(2, 2))
    ours_opt = build_optimizer(torch.nn.Linear(2, 2), c)
    ref_opt = torch.optim.AdamW([w], lr=1e-3)
    ours = _lrs(build_scheduler(ours_opt, c), ours_opt, 20)
    ref = _lrs(get_scheduler(schedule, ref_opt, 3, 20), ref_opt, 20)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_floor_and_horizon_by_hand():
    """The paper's stage 1: cosine to 0.05 x lr over the first 80% of the steps, then constant."""
    steps, warm = 100, 5
    f = [lr_factor(s, steps, warm, "cosine", 0.05, 0.8) for s in range(steps)]
    assert f[0] == 0 and f[4] == pytest.approx(0.8)
    assert f[5] == pytest.approx(1.0)
    mid = 5 + (80 - 5) / 2  # halfway through the decay the cosine is at 0.5
    assert lr_factor(mid, steps, warm, "cosine", 0.05, 0.8) == pytest.approx(0.05 + 0.95 * 0.5)
    assert f[80] == pytest.approx(0.05) and f[99] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(f[5:], f[6:]))  # never rises after the warm-up
    assert lr_factor(50, 100, 0, "linear", 0.1, 1.0) == pytest.approx(0.1 + 0.9 * 0.5)


def test_adam_settings_reach_the_optimizer():
    c = TrainConfig(steps=5, lr=2e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    opt = build_optimizer(torch.nn.Linear(3, 3), c)
    g = opt.param_groups
    assert g[0]["betas"] == (0.9, 0.98) and g[0]["eps"] == 1e-6 and g[0]["weight_decay"] == 0.1
    assert g[1]["weight_decay"] == 0.0  # the bias is not decayed
    with pytest.raises(ValueError, match="decay_fraction"):
        TrainConfig(steps=5, decay_fraction=0)


def test_cpu_adamw_is_fused_and_makes_the_default_update():
    """One fused kernel on CPU (a lever measured by benchmarks/bench_peers.py); its update is AdamW's."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    ref = torch.nn.Linear(6, 4)
    ref.load_state_dict(model.state_dict())
    c = TrainConfig(steps=3, lr=1e-2, weight_decay=0.1)
    opt = build_optimizer(model, c)
    assert all(g["fused"] for g in opt.param_groups)
    plain = torch.optim.AdamW([{"params": [ref.weight], "weight_decay": 0.1},
                               {"params": [ref.bias], "weight_decay": 0.0}], lr=1e-2, foreach=False)
    x = torch.randn(5, 6)
    for _ in range(3):
        for m, o in ((model, opt), (ref, plain)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_paper_profiles_hold_the_authors_settings(tmp_path):
    s1 = Stage1Config.resolve(profile="paper", run_dir=str(tmp_path))
    assert (s1.adam_beta2, s1.adam_eps, s1.lr_floor, s1.decay_fraction) == (0.98, 1e-6, 0.05, 0.8)
    assert s1.warmup_steps == 0.05 * s1.steps and s1.weight_decay == 0.1 and s1.lr == 4e-4
    s2 = Stage2Config.resolve(profile="paper", run_dir=str(tmp_path))
    assert s2.task_epochs == PAPER_TASK_EPOCHS and s2.schedule == "linear" and s2.weight_decay == 0.1
    assert s2.warmup_ratio == 0.1 and s2.lr == 1e-5


def test_task_epochs_from_a_command_line_and_checked(tmp_path):
    params = parse_params(["task_epochs=CB:50,COPA:3"])
    cfg = Stage2Config.resolve(profile="smoke", run_dir=str(tmp_path), **params)
    assert cfg.task_epochs == {"CB": 50, "COPA": 3}
    json.dumps(cfg.to_dict())  # saved with the run
    with pytest.raises(ConfigError, match="unknown task"):
        Stage2Config.resolve(profile="smoke", task_epochs="CB:5,XYZ:2")
    with pytest.raises(ConfigError, match="task_epochs"):
        Stage2Config.resolve(profile="smoke", task_epochs="CB:0")
    with pytest.raises(ConfigError, match="task_epochs"):
        Stage2Config.resolve(profile="smoke", task_epochs="CB=5")


def test_pass_steps_count_epochs_per_task(tmp_path):
    cfg = Stage2Config.resolve(profile="smoke", run_dir=str(tmp_path), task_epochs={"CB": 3}, batch_size=4,
                               steps_2a=7, steps_2b=9)
    assert pass_steps(cfg, "CB", 10) == (3 * math.ceil(10 / 4),) * 2
    assert pass_steps(cfg, "CB", 2) == (3, 3)  # a batch never holds more than the inputs
    assert pass_steps(cfg, "RTE", 10) == (7, 9)  # not named: the step counts
