"""GLMD stage 2: turn the stage-1 student into a task model using only the task teacher's predictions.

``run_stage2(cfg)`` is the whole stage (notebook 05 calls it). For every task:

1. load the task teacher (notebook 04: ``<run_dir>/teachers/<TASK>/model/``) and a fresh copy of the
   stage-1 student (notebook 03: ``<run_dir>/stage1/student/``, with its ``VocabMap``), and check that the
   map fits both;
2. read the task's *inputs*: the train split (and, with ``add_unlabeled``, the test split). Their labels are
   dropped as they are read (:func:`read_inputs`), so no student loss can see a gold label, and a train
   file without labels works just as well. The inputs become cloze sequences with the teacher's pattern;
3. **pass 2a**, word-prediction distillation on task inputs: the vocabulary KL of stage 1
   (``T^2 KL(softmax(t/T) || softmax(s/T))`` over the kept vocabulary, averaged over the non-padding
   positions) on the *whole* cloze-formatted input, not only the answer position. For COPA/ReCoRD every
   candidate-filled sequence is distilled;
4. **pass 2b**, task-level soft targets, from 2a's selected checkpoint: soft cross-entropy at T = 1 between
   the teacher's and the student's task scores (softmax over the verbalizer logits, or over the candidates'
   summed log-probabilities; :func:`glmd_lib.tasks.scoring.task_scores`);
5. after each pass the dev score picks the checkpoint (``select_by_dev=True``, as the paper: dev labels
   choose *which* of the student's own checkpoints to keep) or the last one is kept (``select_by_dev=False``:
   then no label of any split influences the weights; ``tests/test_stage2.py`` proves it bitwise);
6. save ``student/`` (loadable with :func:`glmd_lib.models.student.load_student`), ``history.csv`` (both passes,
   with the dev evaluations) and ``metrics.json``, and mark ``<run_dir>/stage2/<TASK>/`` complete.

Both passes run on the resumable :class:`glmd_lib.trainer.Trainer` (AdamW, warm-up + cosine, clipping,
NaN guard). Stage 2 is short, so resuming works per task: a finished task with the same settings is
skipped (``resume=True``); an interrupted one starts over. Stage 2 runs in one process.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from glmd_lib.config.stages import Stage2Config
from glmd_lib.device import get_device, set_threads
from glmd_lib.tasks.teachers import evaluate_clozes
from glmd_lib.distill.losses import soft_cross_entropy
from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind
from glmd_lib.artifacts import ArtifactError, atomic_write_json, atomic_write_text, is_complete, mark_complete, read_json, \
    require_complete
from glmd_lib.tasks.scoring import collate_sequences, task_scores
from glmd_lib.distill.stage1 import Distiller, TeacherRunner
from glmd_lib.models.student import Student, load_student, save_student
from glmd_lib.superglue.data import Example, read_file, read_split, subsample, task_path
from glmd_lib.superglue.metrics import majority_label, task_metrics, task_score
from glmd_lib.superglue.patterns import Cloze, build_cloze
from glmd_lib.trainer import BestCheckpoint, IndexBatches, TrainConfig, Trainer
from glmd_lib.vocab.vocab_map import VocabMapError

log = logging.getLogger(__name__)

TASK_ARTIFACTS = ["student", "history.csv", "metrics.json"]
# settings that do not change what a task's training computes (a finished task is kept when only these differ)
_NOT_IN_FINGERPRINT = ("run_dir", "profile", "device", "resume", "tasks")


class Stage2Error(ValueError):
    """Stage-2 inputs do not fit together (vocabularies, model kinds, sequence lengths, data ...)."""


# --------------------------------------------------------------------------------------------
# inputs: task examples without their labels
# --------------------------------------------------------------------------------------------

def strip_labels(examples: Sequence[Example]) -> list[Example]:
    """Copies of ``examples`` with ``label=None``: what the student losses are allowed to see."""
    return [dataclasses.replace(ex, label=None) for ex in examples]


def read_inputs(task: str, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """The examples of ``task``/``split`` with their labels dropped.

    Labels are optional here (a copy of the train split without labels reads fine); where present they
    are still validated by the reader, then thrown away.
    """
    path = task_path(task, split, data_dir)
    if not path.exists():
        read_split(task, split, data_dir)  # raises MissingDataError naming the path and how to get the data
    return strip_labels(read_file(task, path, is_test=True))


@dataclass
class TaskInputs:
    """One task's clozes: ``train`` (labels stripped; test-split inputs appended when asked for) and dev."""

    task: str
    pattern_id: int
    max_len: int
    train: list[Cloze]
    n_train: int
    n_unlabeled: int
    dev_examples: list[Example]
    dev: list[Cloze]


def task_inputs(cfg: Stage2Config, task: str, tokenizer: Any, kind: str, pattern_id: int, max_len: int,
                data_dir: str | Path | None = None) -> TaskInputs:
    train_ex = subsample(read_inputs(task, "train", data_dir), cfg.max_train_examples, seed=cfg.seed)
    extra: list[Example] = []
    if cfg.add_unlabeled:
        extra = subsample(read_inputs(task, "test", data_dir), cfg.max_unlabeled_examples, seed=cfg.seed)
    dev_ex = subsample(read_split(task, "val", data_dir), cfg.max_eval_examples, seed=cfg.seed)
    train = build_cloze(task, train_ex + extra, tokenizer, kind=kind, pattern_id=pattern_id, max_len=max_len)
    train = [c for c in train if c.n_choices > 0]
    if not train:
        raise Stage2Error(f"{task}: no training inputs (train split{' + test split' if cfg.add_unlabeled else ''})")
    dev = build_cloze(task, dev_ex, tokenizer, kind=kind, pattern_id=pattern_id, max_len=max_len)
    return TaskInputs(task, pattern_id, max_len, train, len(train_ex), len(extra), dev_ex, dev)


def majority_dev_score(task: str, dev_examples: Sequence[Example], data_dir: str | Path | None = None) -> float | None:
    """Dev score of always predicting the train split's most frequent label (a reference line only;
    None when the train split has no labels or the task has no fixed label set)."""
    try:
        train = read_split(task, "train", data_dir)
    except Exception:  # noqa: BLE001 - e.g. a train copy without labels: no baseline, nothing else changes
        return None
    if task == "ReCoRD" or not train:
        return None
    label = majority_label(train)
    return task_score(task, task_metrics(task, [label] * len(dev_examples), dev_examples))


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def teacher_dir(run_dir: Path | str, task: str) -> Path:
    return Path(run_dir) / "teachers" / task / "model"


def teacher_settings(run_dir: Path | str, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(notebook 04's resolved config, the task teacher's metrics.json); empty dicts where absent."""
    teachers = Path(run_dir) / "teachers"
    cfg = read_json(teachers / "config.json").get("config", {}) if (teachers / "config.json").exists() else {}
    metrics = read_json(teachers / task / "metrics.json") if (teachers / task / "metrics.json").exists() else {}
    return cfg, metrics


def check_vocabularies(student: Student, teacher: nn.Module, teacher_tok: Any, where: str) -> None:
    """The student's VocabMap must map the teacher's vocabulary onto the student's rows."""
    vm = student.vocab_map
    n_teacher = int(teacher.config.vocab_size)
    n_student = int(student.model.config.vocab_size)
    if vm.num_kept != n_student:
        raise Stage2Error(f"{where}: the stage-1 student's vocabulary map keeps {vm.num_kept} tokens but the student "
                          f"has {n_student} vocabulary rows; rerun notebook 03")
    if vm.vocab_size != n_teacher:
        raise Stage2Error(f"{where}: the stage-1 student's vocabulary map covers {vm.vocab_size} teacher ids but the "
                          f"task teacher has {n_teacher}: the teacher and the student come from different "
                          f"vocabularies (fine-tune the task teacher from the stage-1 teacher, or rerun 02-03)")
    try:
        vm.check_tokenizer(teacher_tok)
    except VocabMapError as e:
        raise Stage2Error(f"{where}: {e}") from e
    if student.kind != model_kind(teacher.config):
        raise Stage2Error(f"{where}: the student is a {student.kind} LM but the task teacher a "
                          f"{model_kind(teacher.config)} LM; they must read the same clozes")


def teacher_autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# pass 2a: vocabulary KL over every position of every cloze sequence
# --------------------------------------------------------------------------------------------

def collate_2a(clozes: Sequence[Cloze]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Indices of examples -> all their sequences, right-padded (teacher ids; masks from the lengths)."""
    def collate(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        seqs = [s for i in idx.tolist() for s in clozes[i].sequences]
        ids, mask = collate_sequences(seqs, pad_id=0)  # the pad id is never read: masks come from the lengths
        return {"input_ids": ids, "attention_mask": mask, "index": idx}
    return collate


def make_2a_loss(runner: TeacherRunner, vocab_map: Any) -> Callable:
    """``loss_fn(batch, model)``: the chunked ``T^2 KL`` of stage 1 over all non-padding positions.

    ``model`` is a :class:`glmd_lib.distill.stage1.Distiller` around the student; the teacher reads teacher ids,
    the student the same tokens mapped into its rows.
    """
    def loss_fn(batch: dict[str, torch.Tensor], model: nn.Module):
        ids, attn = batch["input_ids"], batch["attention_mask"]
        teacher_fn = runner.chunks(ids.to(runner.device), attn.to(runner.device))
        dev = ids.device

        def on_student_device(sl: slice) -> torch.Tensor:
            return teacher_fn(sl).to(dev)

        loss, logs = model(vocab_map.map_ids(ids), attn, on_student_device, attn.bool(), None)
        return loss, {"kl": logs["kl"], "tokens": attn.sum()}
    return loss_fn


# --------------------------------------------------------------------------------------------
# pass 2b: soft cross-entropy between task scores
# --------------------------------------------------------------------------------------------

class TeacherScores:
    """The teacher's task scores per training cloze, computed on first use and cached (the teacher is frozen)."""

    def __init__(self, teacher: nn.Module, clozes: Sequence[Cloze], bf16: bool = False):
        self.teacher, self.clozes, self.bf16 = teacher, clozes, bf16
        self.device = next(teacher.parameters()).device
        self.cache: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, idx: Sequence[int]) -> torch.Tensor:
        """Scores ``[len(idx), max choices]`` (fp32, CPU), ``-inf`` beyond an example's choices."""
        missing = [i for i in dict.fromkeys(idx) if i not in self.cache]
        if missing:
            with teacher_autocast(self.device, self.bf16):
                s = task_scores(self.teacher, [self.clozes[i] for i in missing]).float().cpu()
            for row, i in enumerate(missing):
                self.cache[i] = s[row, :self.clozes[i].n_choices]
        width = max(self.clozes[i].n_choices for i in idx)
        out = torch.full((len(idx), width), -math.inf)
        for row, i in enumerate(idx):
            out[row, :len(self.cache[i])] = self.cache[i]
        return out


def make_2b_loss(student: nn.Module, clozes: Sequence[Cloze], teacher_scores: TeacherScores, vocab_map: Any
                 ) -> Callable:
    """``loss_fn(batch)``: ``soft_cross_entropy(student scores, teacher scores, T=1)`` for the batch's clozes."""
    def loss_fn(batch: dict[str, torch.Tensor]):
        idx = batch["index"].tolist()
        s = task_scores(student, [clozes[i] for i in idx], vocab_map=vocab_map)
        t = teacher_scores(idx).to(s.device)
        loss = soft_cross_entropy(s, t, temperature=1.0)
        agree = (s.argmax(-1) == t.argmax(-1)).float().mean()
        tokens = sum(len(seq) for i in idx for seq in clozes[i].sequences)
        return loss, {"teacher_agreement": agree, "tokens": tokens}
    return loss_fn


# --------------------------------------------------------------------------------------------
# dev evaluation and checkpoint selection
# --------------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------------
# one task
# --------------------------------------------------------------------------------------------

def _fingerprint(cfg: Stage2Config, task: str) -> dict[str, Any]:
    run = Path(cfg.run_dir)
    stamps = {d: (read_json(run / d / "COMPLETE.json").get("created") if is_complete(run / d) else None)
              for d in ("stage1", "teachers")}
    return {"task": task, **{k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_FINGERPRINT}, **stamps}


def _train_pass(name: str, model: nn.Module, loss_fn: Callable, collate: Callable, n: int, cfg: Stage2Config,
                steps: int, work_dir: Path, device: torch.device, selector: BestCheckpoint, on_log: Any,
                progress: bool) -> dict[str, Any]:
    """One pass on the trainer: shuffled epochs over the ``n`` training clozes, one checkpoint at the end
    (stage 2 resumes per task, not within a pass), ``selector`` evaluating on dev as it goes."""
    batches = IndexBatches(n, min(cfg.batch_size, n), collate, seed=cfg.seed)
    tcfg = TrainConfig(steps=steps, lr=cfg.lr, warmup_steps=min(cfg.warmup_steps, steps - 1), max_grad_norm=1.0,
                       checkpoint_every=steps, keep_checkpoints=1, seed=cfg.seed, cpu=device.type != "cuda")
    callbacks = [selector] + (list(on_log) if isinstance(on_log, (list, tuple)) else [on_log] if on_log else [])
    trainer = Trainer(model, loss_fn, batches, work_dir, tcfg, progress=progress, on_log=callbacks,
                      desc=f"pass {name}")
    return trainer.train(resume=False)


def distill_task(cfg: Stage2Config, task: str, progress: bool = True, on_log: Any = None,
                 log_fn: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Passes 2a and 2b for one task; writes ``<run_dir>/stage2/<task>/`` and returns its metrics."""
    say = log_fn or (lambda s: None)
    t_start = time.perf_counter()
    run = Path(cfg.run_dir)
    out = cfg.out_dir / task
    device = get_device(cfg.device)
    bf16 = device.type == "cuda" if cfg.teacher_bf16 is None else bool(cfg.teacher_bf16)
    data_dir = cfg.superglue_dir

    # ---- models -------------------------------------------------------------------------------
    t_path = teacher_dir(run, task)
    if not (t_path / "config.json").exists():
        raise ArtifactError(f"no task teacher for {task} at {t_path}: add {task} to notebook 04's tasks and run it")
    teacher, tok = load_teacher(t_path, device=device)
    student = load_student(run / "stage1" / "student", device=device)
    check_vocabularies(student, teacher, tok, where=f"{task} (teacher {t_path})")
    kind = model_kind(teacher.config)
    s_model, vocab_map = student.model, student.vocab_map

    t_cfg, t_metrics = teacher_settings(run, task)
    pattern_id = cfg.pattern_id if cfg.pattern_id is not None else int(t_metrics.get("pattern_id", 0))
    max_len = cfg.max_seq_len or int(t_cfg.get("max_seq_len", 256))
    s_max = int(getattr(s_model.config, "max_position_embeddings", max_len) or max_len)
    if max_len > s_max:
        raise Stage2Error(f"max_seq_len {max_len} is above the student's {s_max} positions; lower max_seq_len")

    # ---- data (labels dropped for training) -------------------------------------------------------
    data = task_inputs(cfg, task, tok, kind, pattern_id, max_len, data_dir)
    n = len(data.train)
    say(f"{task}: {data.n_train} train + {data.n_unlabeled} unlabeled inputs "
        f"({sum(len(c.sequences) for c in data.train)} sequences), {len(data.dev)} dev examples, pattern "
        f"{pattern_id}, student {count_parameters(s_model) / 1e6:.1f}M / teacher {count_parameters(teacher) / 1e6:.1f}M")
    eval_bs = max(cfg.batch_size, 16)

    def evaluate(model: nn.Module) -> dict[str, Any]:
        return evaluate_clozes(model, task, data.dev, data.dev_examples, eval_bs, vocab_map=vocab_map)

    t0 = time.perf_counter()
    before = evaluate(s_model)
    teacher_dev = _teacher_dev(cfg, task, teacher, data, t_cfg, t_metrics, pattern_id, max_len, eval_bs, bf16)
    t_eval = time.perf_counter() - t0

    # ---- pass 2a ------------------------------------------------------------------------------------
    work = out / ".work"
    runner = TeacherRunner(teacher, vocab_map, bf16)
    distiller = Distiller(s_model, cfg.temperature, None, cfg.loss_chunk, 0.0)
    sel_a = BestCheckpoint("2a", s_model, evaluate, cfg.steps_2a, cfg.eval_every, cfg.select_by_dev)
    t0 = time.perf_counter()
    sum_a = _train_pass("2a", distiller, make_2a_loss(runner, vocab_map), collate_2a(data.train), n, cfg,
                        cfg.steps_2a, work / "2a", device, sel_a, on_log, progress)
    best_a = sel_a.finish()
    t_2a = time.perf_counter() - t0
    say(f"{task}: pass 2a done in {t_2a:.0f}s; dev {best_a['dev_score']:.4f} (step {best_a['step']})")

    # ---- pass 2b ------------------------------------------------------------------------------------
    scores = TeacherScores(teacher, data.train, bf16)
    sel_b = BestCheckpoint("2b", s_model, evaluate, cfg.steps_2b, cfg.eval_every, cfg.select_by_dev)
    t0 = time.perf_counter()
    sum_b = _train_pass("2b", s_model, make_2b_loss(s_model, data.train, scores, vocab_map),
                        lambda idx: {"index": idx}, n, cfg, cfg.steps_2b, work / "2b", device, sel_b, on_log,
                        progress)
    best_b = sel_b.finish()
    t_2b = time.perf_counter() - t0
    say(f"{task}: pass 2b done in {t_2b:.0f}s; dev {best_b['dev_score']:.4f} (step {best_b['step']}); "
        f"teacher {teacher_dev['score']:.4f}")

    # ---- artifacts ------------------------------------------------------------------------------------
    s_model.eval()
    history = _history(work, sel_a.records + sel_b.records)
    metrics = {
        "task": task, "pattern_id": pattern_id, "kind": kind, "max_seq_len": max_len,
        "score": "mean of the task's official metrics (glmd_lib.superglue.metrics.task_score)",
        "train_inputs": data.n_train, "unlabeled_inputs": data.n_unlabeled, "train_sequences":
            sum(len(c.sequences) for c in data.train), "dev_examples": len(data.dev),
        "steps_2a": cfg.steps_2a, "steps_2b": cfg.steps_2b, "select_by_dev": cfg.select_by_dev,
        "dev_score_stage1": before["score"], "dev_metrics_stage1": before["metrics"],
        "dev_score_2a": best_a["dev_score"], "step_2a": best_a["step"],
        "dev_score_2b": best_b["dev_score"], "step_2b": best_b["step"],
        "dev_metrics_2b": {k[4:]: v for k, v in best_b.items() if k.startswith("dev_") and k != "dev_score"},
        "dev_metrics_2a": {k[4:]: v for k, v in best_a.items() if k.startswith("dev_") and k != "dev_score"},
        "teacher_dev_score": teacher_dev["score"], "teacher_dev_metrics": teacher_dev["metrics"],
        "teacher_dev_source": teacher_dev["source"],
        "majority_dev_score": majority_dev_score(task, data.dev_examples, data_dir),
        "student_params": count_parameters(s_model), "teacher_params": count_parameters(teacher),
        "final_loss_2a": sum_a["final_loss"], "final_loss_2b": sum_b["final_loss"],
        "teacher_scored_inputs": len(scores.cache),
        "seconds": {"2a": round(t_2a, 1), "2b": round(t_2b, 1), "eval_before": round(t_eval, 1),
                    "total": round(time.perf_counter() - t_start, 1)},
        "fingerprint": _fingerprint(cfg, task),
    }
    save_student(s_model, out / "student", tok, vocab_map, extra={"stage": "stage2", "task": task,
                                                                   "pattern_id": pattern_id})
    atomic_write_text(out / "history.csv", history.to_csv(index=False))
    atomic_write_json(out / "metrics.json", metrics)
    shutil.rmtree(work, ignore_errors=True)  # the passes' checkpoints: the selected student is saved above
    mark_complete(out, TASK_ARTIFACTS, task=task)
    return metrics


def _teacher_dev(cfg: Stage2Config, task: str, teacher: nn.Module, data: TaskInputs, t_cfg: dict, t_metrics: dict,
                 pattern_id: int, max_len: int, eval_bs: int, bf16: bool) -> dict[str, Any]:
    """The task teacher's dev score: notebook 04's number when it was measured on this very dev subset
    (same cap, seed, pattern and length), else measured here."""
    same = (t_metrics.get("score_after") is not None and t_cfg.get("max_eval_examples") == cfg.max_eval_examples
            and t_cfg.get("seed") == cfg.seed and t_cfg.get("pattern_id", 0) == pattern_id
            and t_cfg.get("max_seq_len") == max_len and t_metrics.get("dev_examples") == len(data.dev))
    if same:
        return {"score": t_metrics["score_after"], "metrics": t_metrics.get("dev_after", {}),
                "source": "teachers/<TASK>/metrics.json"}
    device = next(teacher.parameters()).device
    with teacher_autocast(device, bf16):
        res = evaluate_clozes(teacher, task, data.dev, data.dev_examples, eval_bs)
    return {"score": res["score"], "metrics": res["metrics"], "source": "measured in stage 2"}


def _history(work: Path, evals: list[dict[str, Any]]):
    """Both passes' training rows (``pass`` column) with the dev evaluations merged in by (pass, step)."""
    import pandas as pd

    frames = []
    for name in ("2a", "2b"):
        p = work / name / "history.csv"
        if p.exists():
            frames.append(pd.read_csv(p).assign(**{"pass": name}))
    hist = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["pass", "step"])
    if evals:
        hist = hist.merge(pd.DataFrame(evals), on=["pass", "step"], how="left")
    cols = ["pass", "step"] + [c for c in hist.columns if c not in ("pass", "step")]
    return hist[cols]


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------

def run_stage2(cfg: Stage2Config, progress: bool = True, on_log: Any = None,
               log_fn: Callable[[str], None] | None = print) -> dict[str, dict[str, Any]]:
    """Run stage 2 for every task of ``cfg``; returns ``{task: metrics}`` (also in ``stage2/<TASK>/``)."""
    set_threads()
    say = log_fn or (lambda s: None)
    run = Path(cfg.run_dir)
    require_complete(run / "stage1", "03_stage1_distillation")
    require_complete(run / "teachers", "04_teacher_finetune")
    cfg.save()
    results = {}
    for task in cfg.tasks:
        out = cfg.out_dir / task
        if cfg.resume and is_complete(out) and (out / "metrics.json").exists():
            old = read_json(out / "metrics.json")
            if old.get("fingerprint") == _fingerprint(cfg, task):
                say(f"{task}: already distilled with these settings ({out}); skipped (resume=False redoes it)")
                results[task] = old
                continue
        results[task] = distill_task(cfg, task, progress=progress, on_log=on_log, log_fn=log_fn)
    atomic_write_json(cfg.out_dir / "summary.json", {t: _summary_row(m) for t, m in results.items()})
    mark_complete(cfg.out_dir, ["config.json", "summary.json"] + list(cfg.tasks))
    return results


def _summary_row(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("majority_dev_score", "teacher_dev_score", "dev_score_stage1", "dev_score_2a", "dev_score_2b",
            "teacher_params", "student_params", "train_inputs", "unlabeled_inputs", "dev_examples")
    return {k: m.get(k) for k in keys}


def summary_table(results: dict[str, dict[str, Any]]):
    """A per-task table of the scores (dev, official metrics averaged) and sizes, for the notebook."""
    import pandas as pd

    df = pd.DataFrame.from_dict({t: _summary_row(m) for t, m in results.items()}, orient="index")
    df.index.name = "task"
    return df


def load_stage2_student(run_dir: Path | str, task: str, device: Any = None) -> Student:
    """The distilled student of ``task`` (``<run_dir>/stage2/<task>/student``)."""
    d = require_complete(Path(run_dir) / "stage2" / task, "05_stage2_distillation")
    return load_student(d / "student", device=device)


__all__ = ["run_stage2", "distill_task", "read_inputs", "strip_labels", "task_inputs", "make_2a_loss",
           "make_2b_loss", "TeacherScores", "BestCheckpoint", "Stage2Error", "summary_table", "load_stage2_student",
           "check_vocabularies", "collate_2a"]
