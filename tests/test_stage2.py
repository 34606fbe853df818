"""Stage 2 (notebook 05): no gold label reaches the student, artifacts, the two losses, clear errors.

Everything runs on tiny fixtures: a 2-layer random Llama per task as the "task teacher", a 1-layer student
over a 512-token VocabMap as the "stage-1 student", and tiny CB/COPA files in the official jsonl format.
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from glmd_lib.distill import stage2, task_inputs, task_losses
from glmd_lib.config.stages import Stage2Config
from glmd_lib.distill.losses import distill_kl_reference, soft_cross_entropy
from glmd_lib.artifacts import artifact, is_complete, mark_complete
from glmd_lib.tasks.scoring import task_scores
from glmd_lib.distill.distiller import Distiller
from glmd_lib.distill.teacher import TeacherHidden, TeacherRunner, TeacherScores
from glmd_lib.models.student import Student, build_student, load_student, save_student
from glmd_lib.superglue.data import read_file, task_path
from glmd_lib.superglue.toy import write_toy_dataset
from glmd_lib.superglue.patterns import build_cloze, verbalizer_token_ids
from glmd_lib.vocab.vocab_map import VocabMap

TASKS = ["CB", "COPA"]


# --------------------------------------------------------------------------------------------
# fixtures: a run directory with stage-1 student and task teachers, and data variants
# --------------------------------------------------------------------------------------------

def _tiny_teacher(tok, seed, vocab_size=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _vocab_map(tok, teacher):
    counts = np.random.default_rng(0).integers(0, 1000, size=len(tok))
    return VocabMap.build(counts, tok, keep=512, protected_ids=verbalizer_token_ids(tok), substitute="unk")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smol_tokenizer):
    tok = smol_tokenizer
    run = tmp_path_factory.mktemp("run")
    teachers = {t: _tiny_teacher(tok, seed=10 + i) for i, t in enumerate(TASKS)}
    for t, model in teachers.items():
        d = run / "teachers" / t / "model"
        model.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)
        (run / "teachers" / t / "metrics.json").write_text(json.dumps({"pattern_id": 0}))
    (run / "teachers" / "config.json").write_text(json.dumps({"config": {"max_seq_len": 64}}))
    mark_complete(run / "teachers")
    vm = _vocab_map(tok, teachers["CB"])
    student = build_student(teachers["CB"].config, dict(layers=1, hidden=32, heads=2, max_positions=128), vm, seed=0)
    save_student(student, run / "stage1" / "student", tok, vm)
    mark_complete(run / "stage1", ["student"])
    return run


def _write_data(root: Path, labels: str) -> Path:
    """Tiny CB/COPA files; ``labels``: real, shuffled (train and dev), shuffled_dev (dev only) or removed (train)."""
    write_toy_dataset(root, n=10, tasks=tuple(TASKS))
    rng = random.Random(1)
    for t in TASKS:
        for split in ("train", "val"):
            path = task_path(t, split, root)
            recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if labels == "shuffled" or (labels == "shuffled_dev" and split == "val"):
                golds = [r["label"] for r in recs]
                perm = golds[:]
                while perm == golds:
                    rng.shuffle(perm)
                for r, y in zip(recs, perm):
                    r["label"] = y
            elif labels == "removed" and split == "train":
                for r in recs:
                    del r["label"]
            path.write_text("\n".join(json.dumps(r) for r in recs))
    return root


def _cfg(run_dir, data_dir, **kw):
    params = dict(run_dir=str(run_dir), superglue_dir=str(data_dir), tasks=TASKS, steps_2a=2, steps_2b=3,
                  batch_size=4, eval_every=1, select_on="last", add_unlabeled=True, max_train_examples=100,
                  max_eval_examples=100, device="cpu", resume=False, lr=1e-2, warmup_steps=0)
    params.update(kw)
    return Stage2Config.resolve("smoke", **params)


def _weights(run_dir, tasks=TASKS) -> dict[str, dict[str, torch.Tensor]]:
    return {t: dict(load_student(Path(run_dir) / "stage2" / t / "student").model.state_dict()) for t in tasks}


def _same(a, b) -> bool:
    return all(a[t].keys() == b[t].keys() and all(torch.equal(a[t][k], b[t][k]) for k in a[t]) for t in a)


def _run(run_dir, data_dir, **kw):
    kw = {"eval_every": 0, "max_eval_examples": 4, **kw}
    cfg = _cfg(run_dir, data_dir, **kw)
    stage2.run_stage2(cfg, progress=False, log_fn=None)
    return _weights(run_dir, cfg.tasks)


# --------------------------------------------------------------------------------------------
# no gold labels in any student loss
# --------------------------------------------------------------------------------------------

def test_labels_shuffled_or_removed_give_bitwise_the_same_student(run_dir, tmp_path):
    real = _run(run_dir, _write_data(tmp_path / "real", "real"))
    start = load_student(run_dir / "stage1" / "student").model.state_dict()
    assert not all(torch.equal(real["CB"][k], start[k]) for k in start), "training changed nothing"
    shuffled = _run(run_dir, _write_data(tmp_path / "shuffled", "shuffled"))
    removed = _run(run_dir, _write_data(tmp_path / "removed", "removed"))
    assert _same(real, shuffled), "shuffling the train/dev labels changed the student's weights"
    assert _same(real, removed), "removing the train labels changed the student's weights"


def test_train_holdout_selection_never_reads_dev_labels(run_dir, tmp_path):
    """With select_on='train_holdout' (the default) dev labels cannot influence the weights: shuffling them gives
    bitwise the same student; the holdout is removed from the inputs that train and recorded in metrics.json."""
    kw = {"select_on": "train_holdout", "eval_every": 1, "add_unlabeled": False, "selection_fraction": 0.2}
    real = _run(run_dir, _write_data(tmp_path / "real", "real"), **kw)
    m = json.loads((run_dir / "stage2" / "CB" / "metrics.json").read_text())
    assert m["select_on"] == "train_holdout" and m["pattern_id"] == 0
    assert m["selection_examples"] == 2 and m["train_inputs"] == 8  # 10 train examples: 2 held out, 8 train
    assert m["selection_score_2b"] is not None and m["teacher_selection_score"] is not None
    assert "dev_score_2b" not in m and "dev_examples" not in m  # stage 2 scored no dev example
    shuffled_dev = _run(run_dir, _write_data(tmp_path / "shuffled_dev", "shuffled_dev"), **kw)
    assert _same(real, shuffled_dev), "shuffling the dev labels changed the student's weights"
    # the same seed and share hold out the same examples as notebook 04's task teachers
    from glmd_lib.tasks.selection import selection_split

    data = tmp_path / "real"
    _, sel = task_inputs.split_inputs(_cfg(run_dir, data, **kw), "CB", data)
    assert [ex.idx for ex in sel] == [ex.idx for ex in selection_split("CB", "train_holdout", data, 0.2, 500).selection]
    with pytest.raises(task_inputs.Stage2Error, match="select_on='last'"):
        task_inputs.split_inputs(_cfg(run_dir, data, **kw), "CB", _write_data(tmp_path / "removed", "removed"))


def test_a_label_aware_loss_would_be_caught(run_dir, tmp_path, monkeypatch):
    """The comparison above can fail: let the labels through and add a gold cross-entropy to pass 2b."""
    monkeypatch.setattr(task_inputs, "read_inputs",
                        lambda task, split, data_dir=None: read_file(task, task_path(task, split, data_dir), True))
    original = task_losses.make_2b_loss

    def leaky_2b(student, clozes, teacher_scores, vocab_map):
        inner = original(student, clozes, teacher_scores, vocab_map)

        def loss_fn(batch):
            loss, logs = inner(batch)
            gold = [i for i in batch["index"].tolist() if clozes[i].label is not None]
            s = task_scores(student, [clozes[i] for i in gold], vocab_map=vocab_map)
            return loss + F.cross_entropy(s, torch.tensor([clozes[i].label for i in gold])), logs
        return loss_fn

    monkeypatch.setattr(task_losses, "make_2b_loss", leaky_2b)
    real = _run(run_dir, _write_data(tmp_path / "real", "real"), tasks=["CB"])
    shuffled = _run(run_dir, _write_data(tmp_path / "shuffled", "shuffled"), tasks=["CB"])
    assert not _same(real, shuffled)


def test_read_inputs_drops_labels_and_accepts_files_without_them(tmp_path):
    real = _write_data(tmp_path / "real", "real")
    removed = _write_data(tmp_path / "removed", "removed")
    a, b = task_inputs.read_inputs("CB", "train", real), task_inputs.read_inputs("CB", "train", removed)
    assert [ex.label for ex in a] == [None] * 10
    assert [(ex.idx, ex.fields) for ex in a] == [(ex.idx, ex.fields) for ex in b]


# --------------------------------------------------------------------------------------------
# artifacts, selection, resume
# --------------------------------------------------------------------------------------------

def test_artifacts_metrics_history_and_resume(run_dir, tmp_path):
    data = _write_data(tmp_path / "data", "real")
    cfg = _cfg(run_dir, data, select_on="dev", add_unlabeled=False, resume=True, max_eval_examples=6)
    results = stage2.run_stage2(cfg, progress=False, log_fn=None)
    out = run_dir / "stage2"
    assert is_complete(out) and (out / "summary.json").exists() and (out / "config.json").exists()
    assert (out / "stage2_scores.png").stat().st_size > 0  # the figure is the stage's, not the notebook's
    for t in TASKS:
        d = out / t
        assert is_complete(d) and not (d / ".work").exists()
        student = load_student(d / "student")
        assert student.vocab_map.num_kept == 512
        m = json.loads((d / "metrics.json").read_text())
        for k in ("dev_score_2a", "dev_score_2b", "teacher_dev_score", "student_params", "teacher_params",
                  "dev_score_stage1", "majority_dev_score"):
            assert m[k] is not None, k
        assert m["student_params"] < m["teacher_params"]
        assert m["train_inputs"] == 10 and m["unlabeled_inputs"] == 0 and m["dev_examples"] == 6
        assert m["select_on"] == "dev" and m["selection_examples"] == 6
        assert m["task_loss"] == "glmd" and m["gold_labels_in_loss"] is False
        assert m["passes"] == {"2a": "vocab_kl", "2b": "soft_ce"}
        h = pd.read_csv(d / "history.csv")
        assert list(h.groupby("pass").size().items()) == [("2a", 2), ("2b", 3)]
        assert {"loss", "kl", "teacher_agreement", "selection_score"} <= set(h.columns)
        # select_on='dev': the kept checkpoint of each pass is its best dev evaluation (first one on ties)
        for p in ("2a", "2b"):
            evals = h[h["pass"] == p].dropna(subset=["selection_score"])
            assert m[f"dev_score_{p}"] == m[f"selection_score_{p}"] == evals["selection_score"].max()
            assert m[f"step_{p}"] == int(evals.loc[evals["selection_score"].idxmax(), "step"])
        # the saved student scores what metrics.json says
        from glmd_lib.tasks.evaluate import evaluate_clozes
        from glmd_lib.superglue.data import read_split, subsample

        dev = subsample(read_split(t, "val", data), 6, seed=0)
        cl = build_cloze(t, dev, student.tokenizer, max_len=64)
        assert evaluate_clozes(student.model, t, cl, dev, vocab_map=student.vocab_map)["score"] == m["dev_score_2b"]
    # resume: the same settings skip every task (nothing is retrained, the files stay as they are)
    before = {t: (out / t / "metrics.json").stat().st_mtime_ns for t in TASKS}
    messages = []
    again = stage2.run_stage2(cfg, progress=False, log_fn=messages.append)
    assert again == results and len(messages) == 2 and all("skipped" in s for s in messages)
    assert before == {t: (out / t / "metrics.json").stat().st_mtime_ns for t in TASKS}
    # other settings: redone
    messages.clear()
    stage2.run_stage2(_cfg(run_dir, data, select_on="dev", add_unlabeled=False, resume=True, max_eval_examples=6,
                           steps_2b=2),
                      progress=False, log_fn=messages.append)
    assert not any("skipped" in s for s in messages)


def test_a_second_run_reads_the_kept_teacher_outputs_and_trains_the_same_student(run_dir, tmp_path, monkeypatch):
    """With teacher_scores_cache (what glmd compare sets), a second run of the same inputs runs neither the task
    teacher's body (2a hidden states), nor its task scores (2b), nor its selection predictions, and gives bitwise
    the student of the first."""
    from glmd_lib.distill import teacher as teacher_mod
    from glmd_lib.tasks import evaluate as evaluate_mod

    bodies, scored, predicted = [], [], []
    hidden, scores, predict = TeacherRunner.hidden, teacher_mod.task_scores, evaluate_mod.predict_clozes
    monkeypatch.setattr(TeacherRunner, "hidden", lambda self, *a: bodies.append(1) or hidden(self, *a))
    monkeypatch.setattr(teacher_mod, "task_scores", lambda *a, **k: scored.append(1) or scores(*a, **k))
    monkeypatch.setattr(evaluate_mod, "predict_clozes",  # by depth: the teachers have 2 layers, the student 1
                        lambda m, *a, **k: predicted.append(m.config.num_hidden_layers) or predict(m, *a, **k))
    data = _write_data(tmp_path / "data", "real")
    kw = {"select_on": "train_holdout", "eval_every": 1, "add_unlabeled": False, "selection_fraction": 0.2,
          "teacher_scores_cache": str(tmp_path / "keep")}
    first = _run(run_dir, data, **kw)
    assert bodies and scored and predicted.count(2) == len(TASKS)
    kept = sorted(f.name.split("-")[0] for f in (tmp_path / "keep").iterdir())
    assert kept == sorted(TASKS + ["hidden", "scores"] * len(TASKS))  # the selection predictions: <TASK>-<key>.pt
    students = predicted.count(1)
    bodies.clear(), scored.clear(), predicted.clear()
    second = _run(run_dir, data, **kw)
    assert _same(first, second)
    assert not bodies and not scored  # the teacher's body ran for nothing the first run saw
    assert predicted == [1] * students  # only the students' selection evaluations, not the teacher's


def test_missing_stage1_names_the_notebook(tmp_path):
    cfg = _cfg(tmp_path, _write_data(tmp_path / "d", "real"))
    with pytest.raises(Exception, match="03_stage1"):
        stage2.run_stage2(cfg, progress=False, log_fn=None)


# --------------------------------------------------------------------------------------------
# the losses
# --------------------------------------------------------------------------------------------

@pytest.fixture
def models(smol_tokenizer):
    tok = smol_tokenizer
    teacher = _tiny_teacher(tok, seed=3)
    vm = _vocab_map(tok, teacher)
    student = build_student(teacher.config, dict(layers=1, hidden=32, heads=2, max_positions=128), vm, seed=1)
    return tok, teacher, student, vm


def test_2a_loss_is_the_vocab_kl_over_every_position_of_every_sequence(models, tmp_path):
    tok, teacher, student, vm = models
    data = _write_data(tmp_path, "real")
    ex = task_inputs.read_inputs("COPA", "train", data)[:3]
    clozes = build_cloze("COPA", ex, tok, max_len=64)
    batch = task_losses.collate_2a(clozes)(torch.tensor([0, 2]))
    assert batch["input_ids"].shape[0] == 4  # both candidate-filled sequences of both examples
    assert batch["attention_mask"].sum(1).tolist() == [len(s) for i in (0, 2) for s in clozes[i].sequences]
    loss_fn = task_losses.make_2a_loss(TeacherRunner(teacher, vm, bf16=False), vm)
    loss, logs = loss_fn(batch, Distiller(student, 15.0, None, 7, 0.0))
    ids, attn = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=attn).logits
    s_logits = student(input_ids=vm.map_ids(ids), attention_mask=attn).logits
    ref = distill_kl_reference(s_logits, t_logits, attn, 15.0, vocab_map=vm)
    # T^2 KL at T = 15 of two random tiny models is ~0.013, the difference of terms ~225 x log(512): fp32 carries
    # only about 3 correct digits of it, and which 3 depends on the CPU's vector width (both this loss and the
    # reference are ~1e-3 from a float64 computation on an AVX-512 CPU). A wrong mask or position is off by far more.
    torch.testing.assert_close(loss, ref, rtol=3e-3, atol=1e-6)
    assert logs["loss_count"] == attn.sum()  # the trainer weighs micro-batches by their valid tokens
    # not only the answer positions: the mean over the candidates' last tokens alone is another number
    last = torch.zeros_like(attn)
    last[torch.arange(len(attn)), attn.sum(1) - 1] = 1
    assert not torch.allclose(ref, distill_kl_reference(s_logits, t_logits, last, 15.0, vocab_map=vm))
    # and padding does not count: a longer pad (eos id, attention 0) leaves the loss unchanged
    ids2 = torch.cat([ids, torch.full((len(ids), 5), 2)], 1)
    attn2 = torch.cat([attn, torch.zeros((len(ids), 5), dtype=attn.dtype)], 1)
    loss2, _ = loss_fn({"input_ids": ids2, "attention_mask": attn2, "index": batch["index"]},
                       Distiller(student, 15.0, None, 7, 0.0))
    torch.testing.assert_close(loss2, loss, rtol=1e-4, atol=1e-5)


def test_teacher_scores_kept_in_a_store_are_read_back_not_computed(models, tmp_path, monkeypatch):
    """A second TeacherScores on the same file (another run of a comparison, its inputs in another order) computes
    only the clozes the first did not score, and gives the same scores; without news, save writes nothing."""
    from glmd_lib.distill import teacher as teacher_mod

    tok, teacher, _, _ = models
    clozes = build_cloze("CB", task_inputs.read_inputs("CB", "train", _write_data(tmp_path, "real"))[:5], tok,
                         max_len=64)
    calls = []
    real = teacher_mod.task_scores
    monkeypatch.setattr(teacher_mod, "task_scores", lambda m, cs, **k: calls.append(len(cs)) or real(m, cs, **k))
    store = tmp_path / "scores.pt"
    first = TeacherScores(teacher, clozes, store=store)
    a = first([0, 2])
    first.save()
    second = TeacherScores(teacher, [clozes[2], clozes[4], clozes[0]], store=store)
    b = second([2, 0, 1])
    assert calls == [2, 1]  # only clozes[4] was new
    torch.testing.assert_close(b[:2], a)  # rows: clozes[0], clozes[2] (then clozes[4])
    second.save()
    third = TeacherScores(teacher, clozes, store=store)
    third([0, 2, 4])
    assert calls == [2, 1] and third.added == 0  # all three read back


@pytest.mark.parametrize("pruned_mass", ["renormalize", "substitute"])
def test_2a_loss_from_kept_hidden_states_is_the_live_loss(models, tmp_path, monkeypatch, pruned_mass):
    """Pass 2a from TeacherHidden (the teacher's final hidden states kept per sequence) gives the live teacher's
    loss, whichever batch a sequence was first seen in; a second run on the same store runs the teacher's body
    only for sequences the first did not see; the map's pruned mass and T are applied per run, not stored."""
    tok, teacher, student, vm = models
    vm = dataclasses.replace(vm, pruned_mass=pruned_mass)
    clozes = build_cloze("COPA", task_inputs.read_inputs("COPA", "train", _write_data(tmp_path, "real"))[:4], tok,
                         max_len=64)
    collate = task_losses.collate_2a(clozes)
    runner = TeacherRunner(teacher, vm, bf16=False, temperature=15.0)
    bodies = []
    real = runner.hidden
    monkeypatch.setattr(runner, "hidden", lambda ids, attn: bodies.append(len(ids)) or real(ids, attn))
    model = Distiller(student, 15.0, None, 7, 0.0)
    store = tmp_path / "hidden.pt"
    first = TeacherHidden(runner, store)
    live, _ = task_losses.make_2a_loss(runner, vm)(collate(torch.tensor([0, 2])), model)
    kept, _ = task_losses.make_2a_loss(first, vm)(collate(torch.tensor([0, 2])), model)
    torch.testing.assert_close(kept, live, rtol=1e-5, atol=1e-6)
    first.save()
    assert bodies == [4, 4]  # the live loss, then the store's first batch (2 examples x 2 candidate sequences)
    second = TeacherHidden(runner, store)
    batch = collate(torch.tensor([3, 0]))  # example 0 now in another batch, padded to another length
    kept, _ = task_losses.make_2a_loss(second, vm)(batch, model)
    live, _ = task_losses.make_2a_loss(runner, vm)(batch, model)
    torch.testing.assert_close(kept, live, rtol=1e-5, atol=1e-6)
    assert bodies[2] == 2 and second.added == 2  # only example 3's two sequences ran the body


def test_2b_loss_is_soft_ce_between_task_scores(models, tmp_path):
    tok, teacher, student, vm = models
    data = _write_data(tmp_path, "real")
    for task in TASKS:
        clozes = build_cloze(task, task_inputs.read_inputs(task, "train", data)[:4], tok, max_len=64)
        scores = TeacherScores(teacher, clozes)
        loss, logs = task_losses.make_2b_loss(student, clozes, scores, vm)({"index": torch.tensor([3, 1])})
        with torch.no_grad():
            t = task_scores(teacher, [clozes[3], clozes[1]])
        s = task_scores(student, [clozes[3], clozes[1]], vocab_map=vm)
        torch.testing.assert_close(loss, soft_cross_entropy(s, t, 1.0))
        assert set(scores.cache) == {1, 3}
        loss.backward()
        assert student.get_input_embeddings().weight.grad is not None
        student.zero_grad()


# --------------------------------------------------------------------------------------------
# vocabulary mismatch
# --------------------------------------------------------------------------------------------

def test_vocab_map_of_another_teacher_is_refused_clearly(models):
    tok, teacher, student, vm = models
    other = _tiny_teacher(tok, seed=4, vocab_size=len(tok) + 64)
    with pytest.raises(stage2.Stage2Error, match=r"covers 49152 teacher ids but the task teacher has 49216"):
        stage2.check_vocabularies(Student(student, tok, vm), other, tok, where="CB")
    stage2.check_vocabularies(Student(student, tok, vm), teacher, tok, where="CB")  # the right pair passes


def test_student_whose_map_does_not_fit_it_is_refused(models, tmp_path, run_dir):
    tok, teacher, student, vm = models
    run = tmp_path / "run"
    shutil.copytree(run_dir / "teachers", run / "teachers")
    save_student(student, run / "stage1" / "student", tok, vm)
    # a map for a different kept size replaces the right one
    counts = np.random.default_rng(0).integers(0, 1000, size=len(tok))
    VocabMap.build(counts, tok, keep=1024, protected_ids=verbalizer_token_ids(tok), substitute="unk").save(
        run / "stage1" / "student")
    mark_complete(run / "stage1")
    with pytest.raises(ValueError, match="keeps 1024 tokens but the student has 512"):
        stage2.run_stage2(_cfg(run, _write_data(tmp_path / "d", "real")), progress=False, log_fn=None)


# --------------------------------------------------------------------------------------------
# pruned_mass="substitute" in pass 2a (issue #10, fix 1)
# --------------------------------------------------------------------------------------------

def test_2a_loss_follows_the_substitute_target_of_the_students_map(models, tmp_path):
    """With the map's pruned_mass="substitute" the 2a target is the teacher's full distribution at T with each
    pruned token's probability added to its substitute's row (computed here by index_add), not the renormalised
    one; without the loss temperature the runner refuses to guess it."""
    tok, teacher, student, vm = models
    vm_sub = VocabMap(vm.kept_ids, vm.teacher_to_student, method=vm.method, fingerprint=vm.fingerprint,
                      pruned_mass="substitute")
    clozes = build_cloze("COPA", task_inputs.read_inputs("COPA", "train", _write_data(tmp_path, "real"))[:3], tok,
                         max_len=64)
    batch = task_losses.collate_2a(clozes)(torch.tensor([0, 2]))
    ids, attn = batch["input_ids"], batch["attention_mask"]
    T = 2.0
    loss, _ = task_losses.make_2a_loss(TeacherRunner(teacher, vm_sub, bf16=False, temperature=T), vm_sub)(
        batch, Distiller(student, T, None, 7, 0.0))
    with torch.no_grad():
        p_full = torch.softmax(teacher(input_ids=ids, attention_mask=attn).logits / T, -1)
        log_ps = torch.log_softmax(student(input_ids=vm.map_ids(ids), attention_mask=attn).logits / T, -1)
    q = torch.zeros(*p_full.shape[:-1], vm.num_kept).index_add_(-1, vm.teacher_to_student, p_full)
    per_pos = (q * (q.log() - log_ps)).sum(-1)
    ref = T * T * (per_pos * attn).sum() / attn.sum()
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
    renorm, _ = task_losses.make_2a_loss(TeacherRunner(teacher, vm, bf16=False), vm)(
        batch, Distiller(student, T, None, 7, 0.0))
    assert abs(renorm.item() / loss.item() - 1) > 1e-3
    with pytest.raises(ValueError, match="temperature"):
        TeacherRunner(teacher, vm_sub, bf16=False)


# --------------------------------------------------------------------------------------------
# a failing rerun (issue #11, point 1)
# --------------------------------------------------------------------------------------------

def test_a_failing_rerun_leaves_no_complete_marker(run_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    for d in ("teachers", "stage1"):
        shutil.copytree(run_dir / d, run / d)
    data = _write_data(tmp_path / "d", "real")
    stage2.run_stage2(_cfg(run, data, tasks=["CB"]), progress=False, log_fn=None)
    assert is_complete(run / "stage2") and is_complete(run / "stage2" / "CB")
    real = task_losses.make_2a_loss

    def nan_2a(*args, **kwargs):
        fn = real(*args, **kwargs)
        return lambda batch, model: (lambda out: (out[0] * float("nan"), out[1]))(fn(batch, model))

    monkeypatch.setattr(task_losses, "make_2a_loss", nan_2a)
    with pytest.raises(FloatingPointError, match="non-finite"):
        stage2.run_stage2(_cfg(run, data, tasks=["CB"], steps_2a=3), progress=False, log_fn=None)
    assert not (run / "stage2" / "COMPLETE.json").exists() and not (run / "stage2" / "CB" / "COMPLETE.json").exists()


# --------------------------------------------------------------------------------------------
# issue #13: task_loss kd / finetune (gold labels of the training inputs), skipped passes
# --------------------------------------------------------------------------------------------

def _metrics(run_dir, task="CB"):
    return json.loads((run_dir / "stage2" / task / "metrics.json").read_text())


@pytest.mark.parametrize("loss", ["kd", "finetune"])
def test_gold_label_task_losses_run_only_the_task_pass_and_learn_from_the_labels(run_dir, tmp_path, loss):
    kw = dict(tasks=["CB"], task_loss=loss, add_unlabeled=False, steps_2b=2, kd_temperature=2.0)
    real = _run(run_dir, _write_data(tmp_path / "real", "real"), **kw)
    m = _metrics(run_dir)
    assert m["task_loss"] == loss and m["gold_labels_in_loss"] is True
    assert m["passes"] == {"2a": "skipped", "2b": task_losses.PASS_LOSSES[loss]["2b"]}
    assert m["steps_2a"] == 0 and m["steps_2b"] == 2 and m["final_loss_2a"] is None and m["final_loss_2b"] > 0
    assert (m["teacher_scored_inputs"] == 0) == (loss == "finetune")  # finetune never asks the teacher
    h = pd.read_csv(run_dir / "stage2" / "CB" / "history.csv")
    assert set(h["pass"]) == {"2b"} and "gold_ce" in h.columns
    shuffled = _run(run_dir, _write_data(tmp_path / "shuffled", "shuffled"), **kw)
    assert not _same(real, shuffled), "shuffled train labels gave the same student: no gold label reached the loss"


def test_gold_labels_are_those_of_the_training_inputs_only(run_dir, tmp_path, smol_tokenizer):
    """kd/finetune read back the labels of exactly the inputs that train: never the holdout's (nor dev's)."""
    from glmd_lib.superglue.data import read_split
    from glmd_lib.superglue.data import LABELS

    data = _write_data(tmp_path / "d", "real")
    kw = dict(add_unlabeled=False, select_on="train_holdout", selection_fraction=0.2, max_train_examples=6)
    gold = task_inputs.task_inputs(_cfg(run_dir, data, task_loss="kd", **kw), "CB", smol_tokenizer, "causal", 0, 64,
                                   data)
    glmd = task_inputs.task_inputs(_cfg(run_dir, data, **kw), "CB", smol_tokenizer, "causal", 0, 64, data)
    labels = {ex.idx: ex.label for ex in read_split("CB", "train", data)}
    assert len(gold.train) == 6 and [c.idx for c in gold.train] == [c.idx for c in glmd.train]
    assert [c.label for c in gold.train] == [LABELS["CB"].index(labels[c.idx]) for c in gold.train]
    assert all(c.label is None for c in glmd.train)
    assert not {c.idx for c in gold.train} & {ex.idx for ex in gold.selection_examples}
    shown = task_inputs.input_preview(_cfg(run_dir, data, task_loss="kd", **kw))["label seen by stage 2"]
    assert shown["CB"] == read_split("CB", "train", data)[0].label
    assert task_inputs.input_preview(_cfg(run_dir, data, **kw))["label seen by stage 2"].isna().all()
    with pytest.raises(task_inputs.Stage2Error, match="task_loss='kd'.*use task_loss='glmd'"):
        removed = _write_data(tmp_path / "removed", "removed")
        task_inputs.task_inputs(_cfg(run_dir, removed, task_loss="kd", add_unlabeled=False), "CB", smol_tokenizer,
                                "causal", 0, 64, removed)


def test_tinybert_task_stage_runs_both_passes_without_labels(run_dir, tmp_path):
    """TinyBERT's task stage end to end: 2a with its intermediate-layer terms logged, 2b soft targets, no label;
    the saved student is the plain model (the trained projections are not part of it)."""
    _run(run_dir, _write_data(tmp_path / "d", "real"), tasks=["CB"], task_loss="tinybert", steps_2a=2, steps_2b=2,
         add_unlabeled=False)
    m = _metrics(run_dir)
    assert m["passes"] == task_losses.PASS_LOSSES["tinybert"] and m["gold_labels_in_loss"] is False
    assert m["feature_terms_skipped"] == {}  # student and teacher both have 2 heads: the attention term applies
    assert m["steps_2a"] == 2 and m["steps_2b"] == 2 and m["final_loss_2a"] > 0
    h = pd.read_csv(run_dir / "stage2" / "CB" / "history.csv")
    assert {"hidden_mse", "kl"} <= set(h.columns) and h.loc[h["pass"] == "2a", "hidden_mse"].notna().any()
    assert not any("project" in k for k in load_student(artifact(run_dir, "stage2", "student", "CB")).model.state_dict())


@pytest.mark.parametrize("skip", ["2a", "2b"])
def test_a_skipped_pass_is_recorded_as_skipped(run_dir, tmp_path, skip):
    other = {"2a": "2b", "2b": "2a"}[skip]
    _run(run_dir, _write_data(tmp_path / "d", "real"), tasks=["CB"], add_unlabeled=False, select_on="train_holdout",
         selection_fraction=0.2, **{f"steps_{skip}": 0})
    m = _metrics(run_dir)
    assert m["passes"][skip] == "skipped" and m["passes"][other] != "skipped" and m["gold_labels_in_loss"] is False
    assert m[f"steps_{skip}"] == 0 and m[f"selection_score_{skip}"] is None and m[f"final_loss_{skip}"] is None
    assert m[f"selection_score_{other}"] is not None and m["selection_score_final"] == m[f"selection_score_{other}"]
    assert set(pd.read_csv(run_dir / "stage2" / "CB" / "history.csv")["pass"]) == {other}
