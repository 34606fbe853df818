"""Stage 2's task losses (issue #13) against hand-computed references on tiny score tensors, the config rules of
the passes (skipping, refusals, steps), and the gold-label record reaching the report's label paragraph.

The student's task scores are replaced by fixed tensors (the scoring itself is tested in test_stage2/test_scoring),
so each reference below is plain arithmetic with ``math``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch

from glmd_lib.config.base import ConfigError
from glmd_lib.config.stages import Stage2Config
from glmd_lib.distill import task_losses
from glmd_lib.distill.stage2 import pass_steps
from glmd_lib.distill.task_inputs import gold_labels_in_loss
from glmd_lib.tasks import teachers

NEG = -math.inf
S = [[1.0, 2.0, 0.0], [0.5, -1.0, NEG]]  # student scores; the second example has 2 choices (-inf padded)
T_SCORES = [[2.0, 0.0, 1.0], [1.0, 1.5, NEG]]  # teacher scores
GOLD = [1, 0]


@dataclass
class FakeCloze:
    label: int | None
    sequences: tuple = ((1, 2, 3),)


def _softmax(row, T=1.0):
    e = [math.exp(x / T) if x != NEG else 0.0 for x in row]
    return [x / sum(e) for x in e]


def _soft_ce(s, t, T):
    """mean over examples of -sum_j softmax(t/T)_j log softmax(s/T)_j (padded choices: p = 0, skipped)."""
    out = []
    for si, ti in zip(s, t):
        ps, pt = _softmax(si, T), _softmax(ti, T)
        out.append(-sum(p * math.log(q) for p, q in zip(pt, ps) if p > 0))
    return sum(out) / len(out)


def _gold_ce(s, gold):
    return sum(-math.log(_softmax(si)[y]) for si, y in zip(s, gold)) / len(s)


@pytest.fixture
def fixed_scores(monkeypatch):
    """The student's task scores are S (a leaf that records its gradient), whatever the model."""
    s = torch.tensor(S, requires_grad=True)
    monkeypatch.setattr(task_losses, "task_scores", lambda model, clozes, vocab_map=None: s[:len(clozes)])
    monkeypatch.setattr(teachers, "task_scores", lambda model, clozes, vocab_map=None: s[:len(clozes)])
    return s


def _clozes(gold=GOLD):
    return [FakeCloze(y) for y in gold]


def _teacher(idx):
    return torch.tensor(T_SCORES)[idx]


BATCH = {"index": torch.tensor([0, 1])}


def test_glmd_task_loss_is_soft_ce_at_t1(fixed_scores):
    loss, logs = task_losses.make_2b_loss(None, _clozes(), _teacher, None)(BATCH)
    assert loss.item() == pytest.approx(_soft_ce(S, T_SCORES, 1.0), rel=1e-6)
    assert logs["loss_count"] == 2 and logs["teacher_agreement"].item() == 0.0  # argmax 1 vs 0, 0 vs 1


@pytest.mark.parametrize("T,w", [(1.0, 1.0), (3.0, 0.5)])
def test_kd_task_loss_is_t_squared_soft_ce_at_t_plus_weighted_gold_ce(fixed_scores, T, w):
    loss, logs = task_losses.make_kd_loss(None, _clozes(), _teacher, None, T, w)(BATCH)
    soft, gold = T * T * _soft_ce(S, T_SCORES, T), _gold_ce(S, GOLD)
    assert loss.item() == pytest.approx(soft + w * gold, rel=1e-6)
    assert logs["soft_ce"].item() == pytest.approx(soft, rel=1e-6)
    assert logs["gold_ce"].item() == pytest.approx(gold, rel=1e-6)
    loss.backward()
    assert torch.isfinite(fixed_scores.grad[0]).all() and fixed_scores.grad[1, 2] == 0  # padding gets no gradient


def test_kd_without_gold_weight_needs_no_label_and_records_none(fixed_scores):
    """gold_weight=0 (TinyBERT's prediction-layer loss): soft targets only; labels are not read, nor recorded."""
    loss, logs = task_losses.make_kd_loss(None, _clozes([None, None]), _teacher, None, 2.0, 0.0)(BATCH)
    assert loss.item() == pytest.approx(4 * _soft_ce(S, T_SCORES, 2.0), rel=1e-6) and logs["gold_ce"] == 0
    from glmd_lib.distill.task_inputs import gold_labels_in_loss

    cfg = Stage2Config.resolve("smoke", task_loss="kd", gold_weight=0.0, add_unlabeled=True)  # unlabeled inputs: fine
    assert not gold_labels_in_loss(cfg)
    assert gold_labels_in_loss(Stage2Config.resolve("smoke", task_loss="kd"))
    assert gold_labels_in_loss(Stage2Config.resolve("smoke", task_loss="finetune"))


def test_kd_gold_term_depends_on_the_labels_and_soft_term_on_the_teacher(fixed_scores):
    a, _ = task_losses.make_kd_loss(None, _clozes([1, 0]), _teacher, None, 2.0, 1.0)(BATCH)
    b, _ = task_losses.make_kd_loss(None, _clozes([0, 1]), _teacher, None, 2.0, 1.0)(BATCH)
    assert a.item() != pytest.approx(b.item())
    flat = lambda idx: torch.zeros(len(idx), 3).masked_fill(torch.tensor([[0, 0, 0], [0, 0, 1]]).bool()[idx], NEG)
    c, _ = task_losses.make_kd_loss(None, _clozes([1, 0]), flat, None, 2.0, 1.0)(BATCH)
    assert a.item() != pytest.approx(c.item())


def test_finetune_task_loss_is_the_gold_ce_without_a_teacher(fixed_scores):
    def no_teacher(idx):
        raise AssertionError("finetune must not ask the teacher")

    cfg = Stage2Config.resolve("smoke", task_loss="finetune")
    loss, logs = task_losses.make_task_loss(cfg, None, _clozes(), no_teacher, None)(BATCH)
    assert loss.item() == pytest.approx(_gold_ce(S, GOLD), rel=1e-6)
    assert logs["loss_count"] == 2 and logs["tokens"] == 6


def test_make_task_loss_follows_the_config(fixed_scores):
    for name, T, w in (("glmd", 1.0, 0.0), ("kd", 2.0, 0.3)):
        cfg = Stage2Config.resolve("smoke", task_loss=name, kd_temperature=T, gold_weight=w)
        loss, _ = task_losses.make_task_loss(cfg, None, _clozes(), _teacher, None)(BATCH)
        ref = T * T * _soft_ce(S, T_SCORES, T) + (w * _gold_ce(S, GOLD) if name == "kd" else 0.0)
        assert loss.item() == pytest.approx(ref, rel=1e-6)


# --------------------------------------------------------------------------------------------
# the passes: skipping, refusals, step counts
# --------------------------------------------------------------------------------------------

def test_a_stage2_that_trains_nothing_is_refused_clearly():
    with pytest.raises(ConfigError, match="would train nothing"):
        Stage2Config.resolve("smoke", steps_2a=0, steps_2b=0)
    with pytest.raises(ConfigError, match="would train nothing"):
        Stage2Config.resolve("smoke", task_loss="kd", steps_2b=0)
    with pytest.raises(ConfigError, match="add_unlabeled=False"):
        Stage2Config.resolve("smoke", task_loss="finetune", add_unlabeled=True)
    with pytest.raises(ConfigError, match="task_loss"):
        Stage2Config.resolve("smoke", task_loss="tinybert-v2")
    with pytest.raises(ConfigError, match="would train nothing"):
        Stage2Config.resolve("smoke", task_loss="tinybert", steps_2a=0, steps_2b=0)
    Stage2Config.resolve("smoke", task_loss="tinybert", steps_2b=0)  # its 2a alone is an ablation
    Stage2Config.resolve("smoke", steps_2a=0)  # one skipped pass is an ablation, not an error
    Stage2Config.resolve("smoke", steps_2b=0)


def test_pass_steps_skip_passes_also_with_task_epochs(tmp_path):
    kw = dict(run_dir=str(tmp_path), task_epochs={"CB": 3}, batch_size=4, steps_2a=7, steps_2b=9)
    cfg = Stage2Config.resolve("smoke", **kw)
    assert pass_steps(cfg, "CB", 10) == (9, 9) and pass_steps(cfg, "RTE", 10) == (7, 9)
    no_2a = Stage2Config.resolve("smoke", **{**kw, "steps_2a": 0})
    assert pass_steps(no_2a, "CB", 10) == (0, 9) and pass_steps(no_2a, "RTE", 10) == (0, 9)
    no_2b = Stage2Config.resolve("smoke", **{**kw, "steps_2b": 0})
    assert pass_steps(no_2b, "CB", 10) == (9, 0) and pass_steps(no_2b, "RTE", 10) == (7, 0)
    for loss in ("kd", "finetune"):  # one task pass: 2a never runs
        cfg = Stage2Config.resolve("smoke", **{**kw, "task_loss": loss})
        assert pass_steps(cfg, "CB", 10) == (0, 9) and pass_steps(cfg, "RTE", 10) == (0, 9)


# --------------------------------------------------------------------------------------------
# the record reaches the report
# --------------------------------------------------------------------------------------------

def test_report_says_when_students_learnt_from_gold_labels(tmp_path):
    from glmd_lib.report import _gold_tasks
    from glmd_lib.tasks.selection import labels_touched

    cfg = {"tasks": ["CB", "COPA"], "task_loss": "kd", "select_on": "last"}
    (tmp_path / "stage2").mkdir()
    (tmp_path / "stage2" / "config.json").write_text(json.dumps({"stage": "stage2", "config": cfg}))
    for task, gold in (("CB", True), ("COPA", False)):
        (tmp_path / "stage2" / task).mkdir()
        (tmp_path / "stage2" / task / "metrics.json").write_text(json.dumps({"gold_labels_in_loss": gold}))
    assert _gold_tasks(tmp_path) == ["CB"]
    text = labels_touched(None, cfg, _gold_tasks(tmp_path))
    assert "outputs and from the gold labels of the train inputs (task_loss kd: CB)" in text
    assert "no gold label entering a loss" not in text
    assert "no gold label entering a loss" in labels_touched(None, {**cfg, "task_loss": "glmd"}, [])
    finetune = labels_touched(None, {**cfg, "task_loss": "finetune"}, ["CB"])
    assert "learnt from the gold labels of the train inputs (task_loss finetune: CB)" in finetune


# --------------------------------------------------------------------------------------------
# TinyBERT's task stage: pass 2a = vocabulary KL + intermediate-layer terms against the task teacher
# --------------------------------------------------------------------------------------------

def test_tinybert_pass_2a_is_vocab_kl_plus_hidden_mse_plus_attention_kl(make_tiny_llama, smol_tokenizer):
    """The whole 2a loss of task_loss='tinybert' on a tiny teacher (3 layers x 32) and student (1 layer x 16, as
    many heads), against a reference written from the two models' plain forward passes: T^2 KL of the full logits
    + mean over (embeddings, mapped layer) of MSE(W s, t) + KL of the mapped layer's attention rows."""
    from glmd_lib.distill.distiller import Distiller
    from glmd_lib.distill.feature_objective import FeatureObjective, use_eager_attention
    from glmd_lib.distill.losses import distill_kl_reference
    from glmd_lib.distill.teacher import TeacherRunner
    from glmd_lib.vocab.vocab_map import VocabMap

    teacher = make_tiny_llama(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    student = make_tiny_llama(num_hidden_layers=1, hidden_size=16, num_attention_heads=4, num_key_value_heads=1, seed=1)
    with torch.no_grad():  # random tiny models attend almost uniformly: sharpen them so the attention term counts
        for m in (teacher, student):
            use_eager_attention(m)
            for layer in m.model.layers:
                layer.self_attn.q_proj.weight.mul_(40.0)
    vm = VocabMap.identity(smol_tokenizer, teacher.config.vocab_size)
    obj = FeatureObjective("tinybert", student.config, teacher.config, causal=True)
    assert obj.skipped == {} and obj.layer_map == [2]
    T, w = 1.0, 0.5
    model = Distiller(student, T, None, 3, 0.0, "tinybert", obj, w)
    loss_fn = task_losses.make_2a_loss(TeacherRunner(teacher, vm, False, T), vm, features=True)
    ids = torch.randint(0, 1000, (2, 5), generator=torch.Generator().manual_seed(3))
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    loss, logs = loss_fn({"input_ids": ids, "attention_mask": attn}, model)

    with torch.no_grad():
        t_out = teacher(input_ids=ids, attention_mask=attn, output_hidden_states=True, output_attentions=True)
    s_out = student(input_ids=ids, attention_mask=attn, output_hidden_states=True, output_attentions=True)
    kl = distill_kl_reference(s_out.logits, t_out.logits, attn, T)
    m = attn.bool()
    mse = sum(((obj.project[k](s_out.hidden_states[i]) - t_out.hidden_states[j]) ** 2).mean(-1)[m].mean()
              for k, (i, j) in enumerate([(0, 0), (1, 3)])) / 2
    ps, pt = s_out.attentions[0], t_out.attentions[2]
    rows = (pt * (pt.clamp_min(1e-30).log() - ps.clamp_min(1e-12).log())).where(pt > 0, torch.zeros(())).sum(-1)
    att = rows.permute(0, 2, 1)[m].mean()  # [B, T, H] rows of counted queries, mean over queries and heads
    torch.testing.assert_close(loss, kl + w * (mse + att), rtol=1e-4, atol=1e-5)
    assert {"kl", "hidden_mse", "attention_kl"} <= set(logs)
    torch.testing.assert_close(logs["hidden_mse"], mse.detach(), rtol=1e-4, atol=1e-5)
    loss.backward()  # the projections are trained in this pass
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.project.parameters())


def test_tinybert_task_pass_is_soft_targets_without_gold(fixed_scores):
    cfg = Stage2Config.resolve("smoke", task_loss="tinybert", kd_temperature=2.0, gold_weight=1.0)
    loss, logs = task_losses.make_task_loss(cfg, None, _clozes([None, None]), _teacher, None)(BATCH)
    assert float(loss.detach()) == pytest.approx(4.0 * _soft_ce(S, T_SCORES, 2.0), rel=1e-6)
    assert float(logs["gold_ce"]) == 0.0 and task_losses.PASS_LOSSES["tinybert"]["2a"].startswith("vocab_kl")
    assert not gold_labels_in_loss(cfg)
