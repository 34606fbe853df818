"""Task-teacher fine-tuning on tiny fixtures: freezing, selection on the train holdout (never dev), select_on,
artifacts."""
from __future__ import annotations

import json

import pytest
import torch

from glmd_lib.config.stages import TeacherConfig
from glmd_lib.tasks.teachers import (LengthBatches, eval_steps, finetune_teacher, freeze_lower_layers,
                                     length_bucketed_batches, run_teachers)
from glmd_lib.models.teacher import load_teacher
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.patterns import build_cloze
from glmd_lib.tasks.evaluate import evaluate_clozes


def test_freeze_lower_layers(tiny_llama):
    n = freeze_lower_layers(tiny_llama, 1)
    trainable = {name for name, p in tiny_llama.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("model.layers.1.", "model.norm")) for name in trainable)
    assert not tiny_llama.model.embed_tokens.weight.requires_grad
    assert n == sum(p.numel() for p in tiny_llama.parameters() if p.requires_grad)
    assert freeze_lower_layers(tiny_llama, 0) == sum(p.numel() for p in tiny_llama.parameters())
    with pytest.raises(ValueError, match="has 2 layers"):
        freeze_lower_layers(tiny_llama, 3)


@pytest.mark.parametrize("task", ["CB", "COPA"])
def test_finetune_keeps_best_selection_checkpoint_and_never_reads_dev(tmp_path, teacher_dir, task, monkeypatch):
    """The checkpoint is chosen on the train holdout (removed from training); dev is not read at all."""
    from glmd_lib.tasks import selection
    from glmd_lib.tasks.selection import split_for

    data = write_toy_dataset(tmp_path / "sg", n=8, tasks=[task])
    cfg = TeacherConfig.resolve("smoke", run_dir=str(tmp_path / "run"), teacher=str(teacher_dir),
                                superglue_dir=str(data), train_layers=1, epochs=2, evals_per_epoch=2,
                                batch_size=4, lr=1e-2, selection_fraction=0.25)
    read = []
    real_read_split = selection.read_split
    monkeypatch.setattr(selection, "read_split", lambda t, split, *a, **k: read.append(split) or
                        real_read_split(t, split, *a, **k))
    m = finetune_teacher(cfg, task, log_fn=None)
    assert "val" not in read and "train" in read
    out = tmp_path / "run" / "teachers" / task
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["selection_score_before"] == m["selection_score_before"]
    assert set(saved["selection_before"]) == set(saved["selection_after"])
    assert (m["select_on"], m["source"], m["selection_examples"], m["train_examples"]) == \
        ("train_holdout", "train holdout", 2, 6)
    assert len(m["history"]) == 4 and m["steps"] == 4
    assert m["selection_score_after"] == max(h["selection_score"] for h in m["history"])
    # the saved model is the kept checkpoint: re-scoring it on the selection split gives the same score
    model, tok = load_teacher(out / "model")
    held = split_for(cfg, task).selection
    res = evaluate_clozes(model, task, build_cloze(task, held, tok, max_len=cfg.max_seq_len), held)
    assert res["score"] == pytest.approx(m["selection_score_after"])
    # frozen parameters did not move, trained ones did
    orig, _ = load_teacher(teacher_dir)
    assert torch.equal(orig.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)
    assert torch.equal(orig.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert not torch.equal(orig.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)


def test_select_on_dev_and_last(tmp_path, teacher_dir):
    """dev: the paper's practice, recorded as such; last: no selection, the last weights, no evaluation."""
    data = write_toy_dataset(tmp_path / "sg", n=8, tasks=["RTE"])
    common = dict(teacher=str(teacher_dir), superglue_dir=str(data), train_layers=1, batch_size=4)
    dev = finetune_teacher(TeacherConfig.resolve("smoke", run_dir=str(tmp_path / "a"), select_on="dev", **common),
                           "RTE", log_fn=None)
    assert (dev["select_on"], dev["source"], dev["selection_examples"], dev["train_examples"]) == ("dev", "dev", 8, 8)
    last = finetune_teacher(TeacherConfig.resolve("smoke", run_dir=str(tmp_path / "b"), select_on="last", epochs=2,
                                                  **common), "RTE", log_fn=None)
    assert last["selection_score_after"] is None and last["selection_examples"] == 0
    assert last["best_step"] == last["steps"] == 4 and [h["step"] for h in last["history"]] == [2, 4]


def test_training_lowers_the_loss(tmp_path, teacher_dir):
    """A few epochs on a tiny train set fit it: the train-set score rises to (nearly) perfect."""
    data = write_toy_dataset(tmp_path / "sg", n=8, tasks=["RTE"])
    cfg = TeacherConfig.resolve("smoke", run_dir=str(tmp_path / "run"), teacher=str(teacher_dir),
                                superglue_dir=str(data), train_layers=0, epochs=8, batch_size=8, lr=3e-3)
    m = finetune_teacher(cfg, "RTE", log_fn=None)
    losses = [h["train_loss"] for h in m["history"]]
    assert len(losses) == 8
    assert losses[-1] < losses[0]


def test_length_bucketed_batches_cover_everything_once():
    import random

    r = random.Random(1)
    lengths = [r.randint(5, 200) for _ in range(103)]
    a = length_bucketed_batches(lengths, 8, random.Random(0))
    b = length_bucketed_batches(lengths, 8, random.Random(0))
    assert a == b and len(a) == 13 and all(1 <= len(x) <= 8 for x in a)
    assert sorted(i for x in a for i in x) == list(range(103))
    # similar lengths within a batch: much less spread than the whole set
    spread = sum(max(lengths[i] for i in x) - min(lengths[i] for i in x) for x in a) / len(a)
    assert spread < (max(lengths) - min(lengths)) / 3


def test_length_batches_epochs_and_resume_position():
    """Every example once per epoch (the trainer's batch source); a saved position continues exactly."""
    lengths = [5, 9, 3, 7, 1, 8, 2, 6, 4, 10, 11]
    src = LengthBatches(lengths, 4, lambda idx: idx.tolist(), seed=3)
    assert src.batches_per_epoch == 3
    epoch = [src.next_batch() for _ in range(3)]
    assert sorted(i for b in epoch for i in b) == list(range(11))
    state = src.state_dict()
    nxt = [src.next_batch() for _ in range(4)]
    again = LengthBatches(lengths, 4, lambda idx: idx.tolist(), seed=3)
    again.load_state_dict(state)
    assert [again.next_batch() for _ in range(4)] == nxt
    with pytest.raises(ValueError, match="one process"):
        src.set_rank(0, 2)


def test_eval_steps_spread_over_each_epoch():
    assert eval_steps(2, 2, 2) == {1, 2, 3, 4}
    assert eval_steps(10, 1, 3) == {4, 7, 10}
    assert eval_steps(3, 2, 1) == {3, 6}
    assert eval_steps(2, 1, 5) == {1, 2}  # at most one evaluation per step


def test_run_teachers_writes_the_stage(tmp_path, teacher_dir):
    """run_teachers: per-task model + metrics.json, summary.json and COMPLETE.json through the artifact registry."""
    from glmd_lib.artifacts import STAGES, artifact, read_json

    data = write_toy_dataset(tmp_path / "sg", n=4, tasks=["CB", "RTE"])
    cfg = TeacherConfig.resolve("smoke", run_dir=str(tmp_path / "run"), teacher=str(teacher_dir),
                                superglue_dir=str(data), tasks=["CB", "RTE"], batch_size=4)
    results = run_teachers(cfg, log_fn=None, progress=False)
    STAGES["teachers"].require(cfg.run_dir)
    summary = read_json(artifact(cfg.run_dir, "teachers", "summary.json"))
    assert set(summary) == set(results) == {"CB", "RTE"}
    assert summary["CB"]["selection_score_after"] == results["CB"]["selection_score_after"]
    assert summary["CB"]["select_on"] == "train_holdout"
    for t in ("CB", "RTE"):
        assert (artifact(cfg.run_dir, "teachers", "model", t) / "config.json").exists()
        assert not (artifact(cfg.run_dir, "teachers", "model", t).parent / ".work").exists()
