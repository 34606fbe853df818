"""GLMD stage 2: turn the stage-1 student into a task model using only the task teacher's predictions.

``run_stage2(cfg)`` is the whole stage (notebook 05 calls it). For every task:

1. load the task teacher (notebook 04: ``<run_dir>/teachers/<TASK>/model/``) and a fresh copy of the
   stage-1 student (notebook 03: ``<run_dir>/stage1/student/``, with its ``VocabMap``), and check that the
   map fits both;
2. read the task's *inputs*: the train split (and, with ``add_unlabeled``, the test split). Their labels are
   dropped as they are read (:func:`glmd_lib.distill.task_inputs.read_inputs`), so no student loss can see a gold label, and a train
   file without labels works just as well. The inputs become cloze sequences with the teacher's pattern;
3. **pass 2a**, word-prediction distillation on task inputs: the vocabulary KL of stage 1 (``T^2 KL`` over the
   kept vocabulary, pruned mass as the stage-1 student's map says, averaged over the non-padding positions of
   the step's sequences) on the *whole* cloze-formatted input, not only the answer position; for COPA/ReCoRD
   every candidate-filled sequence. The teacher's body runs once per sequence (:class:`TeacherHidden`);
4. **pass 2b**, task-level soft targets, from 2a's selected checkpoint: soft cross-entropy at T = 1 between
   the teacher's and the student's task scores (softmax over the verbalizer logits, or over the candidates'
   summed log-probabilities; :func:`glmd_lib.tasks.scoring.task_scores`). ``steps_2a=0`` or ``steps_2b=0``
   skips a pass (the ablations of issue #13). The baselines ``task_loss='kd'`` (soft targets at T plus
   gold-label cross-entropy) and ``'finetune'`` (gold labels only) run pass 2b alone, on the training inputs
   *with* their labels; ``'tinybert'`` runs both passes without labels (2a adds TinyBERT's hidden-state and
   attention terms, 2b is soft targets at ``kd_temperature``). ``metrics.json`` records ``task_loss``, each
   pass's loss (or ``skipped``) and ``gold_labels_in_loss``. The losses: :mod:`glmd_lib.distill.task_losses`;
5. after each pass the score on the **selection split** picks the checkpoint (selection is not evaluation,
   :mod:`glmd_lib.tasks.selection`): with ``select_on='train_holdout'`` (default) a seeded holdout of the
   train split, removed from the inputs that train, so dev labels never influence the weights; with
   ``'dev'`` the dev split, the paper's practice (its dev scores are then optimistic); with ``'last'`` the
   last checkpoint is kept and no label of any split influences the weights (``tests/test_stage2.py`` proves
   both bitwise). Dev itself is scored once per final model, in notebook 06;
6. save ``student/`` (loadable with :func:`glmd_lib.models.student.load_student`), ``history.csv`` (both passes,
   with the selection evaluations) and ``metrics.json``, and mark ``<run_dir>/stage2/<TASK>/`` complete;
7. after the last task: ``summary.json`` (one row per task), ``stage2_scores.png``, and ``stage2/`` complete.

Both passes run on the resumable :class:`glmd_lib.trainer.Trainer` (AdamW, warm-up + cosine, clipping,
NaN guard). Stage 2 is short, so resuming works per task: a finished task with the same settings is
skipped (``resume=True``); an interrupted one starts over. Stage 2 runs in one process.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from glmd_lib.artifacts import STAGES, ArtifactError, artifact, atomic_write_csv, atomic_write_json, begin_stage, \
    is_complete, mark_complete, mark_incomplete, read_json, save_figure
from glmd_lib.config.stages import Stage2Config
from glmd_lib.device import get_device, set_threads, use_bf16
from glmd_lib.distill.figures import stage2_scores
from glmd_lib.distill import task_losses
from glmd_lib.distill.distiller import Distiller
from glmd_lib.distill.feature_objective import FeatureObjective, use_eager_attention
from glmd_lib.distill.task_inputs import Stage2Error, TaskInputs, cloze_settings, gold_labels_in_loss, \
    majority_score, task_inputs, teacher_dir
from glmd_lib.distill.teacher import TeacherHidden, TeacherRunner, TeacherScores
from glmd_lib.models.student import Student, load_student, save_student
from glmd_lib.models.teacher import count_parameters, load_teacher, model_kind
from glmd_lib.tasks.prediction_cache import cache_file, digest, folder_identity
from glmd_lib.tasks.teachers import evaluate_clozes
from glmd_lib.trainer import BestCheckpoint, IndexBatches, TrainConfig, Trainer
from glmd_lib.vocab.vocab_map import VocabMapError

TASK_ARTIFACTS = list(STAGES["stage2"].per_task)  # in stage2/<TASK>/ (the artifact registry says so)
FIGURE = "stage2_scores"  # stage2_scores.png: dev scores per task and the training curves
# settings that do not change what a task's training computes (a finished task is kept when only these differ)
_NOT_IN_FINGERPRINT = ("run_dir", "profile", "device", "resume", "tasks")


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


# --------------------------------------------------------------------------------------------
# one task
# --------------------------------------------------------------------------------------------

@dataclass
class _Job:
    """One task's stage-2 run: its models, inputs and settings (what every step of :func:`distill_task` reads)."""

    cfg: Stage2Config
    task: str
    device: torch.device
    bf16: bool  # the task teacher's precision (glmd_lib.device.use_bf16 of cfg.teacher_bf16)
    teacher: nn.Module
    tokenizer: Any  # the task teacher's (the student reads the same ids, mapped by its VocabMap)
    student: Student
    data: TaskInputs

    out = property(lambda self: self.cfg.out_dir / self.task)
    eval_batch_size = property(lambda self: max(self.cfg.batch_size, 16))

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """Selection-split metrics of the student ``model`` (its rows: the student's vocabulary map)."""
        return evaluate_clozes(model, self.task, self.data.selection, self.data.selection_examples,
                               self.eval_batch_size, vocab_map=self.student.vocab_map)


def _prepare(cfg: Stage2Config, task: str) -> _Job:
    """Load the task teacher and a fresh copy of the stage-1 student, check they fit, read the task's inputs."""
    device = get_device(cfg.device)
    t_path = teacher_dir(cfg.run_dir, task)
    if not (t_path / "config.json").exists():
        raise ArtifactError(f"no task teacher for {task} at {t_path}: add {task} to notebook 04's tasks and run it")
    teacher, tok = load_teacher(t_path, device=device)
    student = load_student(artifact(cfg.run_dir, "stage1", "student"), device=device)
    check_vocabularies(student, teacher, tok, where=f"{task} (teacher {t_path})")
    pattern_id, max_len = cloze_settings(cfg, task)
    s_max = int(getattr(student.model.config, "max_position_embeddings", max_len) or max_len)
    if max_len > s_max:
        raise Stage2Error(f"max_seq_len {max_len} is above the student's {s_max} positions; lower max_seq_len")
    data = task_inputs(cfg, task, tok, model_kind(teacher.config), pattern_id, max_len, cfg.superglue_dir)
    return _Job(cfg, task, device, use_bf16(device, cfg.teacher_bf16), teacher, tok, student, data)


def _run_pass(job: _Job, name: str, model: nn.Module, loss_fn: Callable, collate: Callable, steps: int,
              on_log: Any, progress: bool) -> dict[str, Any]:
    """One pass on the trainer: shuffled epochs over the training clozes, one checkpoint at the end (stage 2
    resumes per task, not within a pass), a :class:`BestCheckpoint` evaluating on the selection split as it goes
    and loading the selected weights back at the end (none with ``select_on='last'``: nothing is evaluated and
    the last weights stay). Returns the selected evaluation, the summary, records, seconds. ``steps=0``: the pass
    is skipped (an ablation), recorded so, with no selection score."""
    if steps == 0:
        return {"best": {"pass": name, "step": 0, "selection_score": None}, "records": [], "seconds": 0.0,
                "summary": {"steps": 0, "final_loss": None}, "skipped": True}
    cfg, n = job.cfg, len(job.data.train)
    selector = (BestCheckpoint(name, job.student.model, job.evaluate, steps, cfg.eval_every, keep_best=True)
                if job.data.selection else None)
    batches = IndexBatches(n, min(cfg.batch_size, n), collate, seed=cfg.seed)
    warmup = round(cfg.warmup_ratio * steps) if cfg.warmup_ratio is not None else cfg.warmup_steps
    tcfg = TrainConfig(steps=steps, lr=cfg.lr, warmup_steps=min(warmup, steps - 1), max_grad_norm=1.0,
                       weight_decay=cfg.weight_decay, schedule=cfg.schedule, checkpoint_every=steps, keep_checkpoints=1, seed=cfg.seed, cpu=job.device.type != "cuda")
    callbacks = [selector] * bool(selector) + (list(on_log) if isinstance(on_log, (list, tuple)) else [on_log] if on_log else [])
    trainer = Trainer(model, loss_fn, batches, job.out / ".work" / name, tcfg, progress=progress, on_log=callbacks,
                      desc=f"pass {name}")
    t0 = time.perf_counter()
    summary = trainer.train(resume=False)
    best = selector.finish() if selector else {"pass": name, "step": steps, "selection_score": None}
    return {"best": best, "summary": summary, "records": selector.records if selector else [],
            "seconds": time.perf_counter() - t0}


def pass_steps(cfg: Stage2Config, task: str, n_train: int) -> tuple[int, int]:
    """Optimizer steps of passes 2a and 2b: ``task_epochs[task]`` epochs over the task's training inputs when
    the task is named there (the paper counts epochs per task), else ``steps_2a`` and ``steps_2b``. A pass that
    does not run is 0 either way: ``steps_X=0`` (an ablation), or 2a with a task_loss other than glmd."""
    runs = [cfg.steps_2a > 0 and task_losses.PASS_LOSSES[cfg.task_loss]["2a"] is not None, cfg.steps_2b > 0]
    if task in (cfg.task_epochs or {}):
        steps = cfg.task_epochs[task] * -(-n_train // min(cfg.batch_size, n_train))
        return steps * runs[0], steps * runs[1]
    return cfg.steps_2a * runs[0], cfg.steps_2b * runs[1]


def _teacher_selection(job: _Job) -> dict[str, Any] | None:
    """The task teacher's score on the selection examples (in its precision; its predictions kept beside its 2b
    scores, ``teacher_scores_cache``); None without any."""
    data, keep = job.data, job.cfg.teacher_scores_cache
    where = cache_file(keep, str(teacher_dir(job.cfg.run_dir, job.task)), job.task, data.selection_examples,
                       data.pattern_id, data.max_len, job.bf16)
    return evaluate_clozes(job.teacher, job.task, data.selection, data.selection_examples, job.eval_batch_size,
                           bf16=job.bf16, cache=where) if data.selection else None


def _selection_metrics(best: dict[str, Any]) -> dict[str, Any]:
    return {k[len("selection_"):]: v for k, v in best.items() if k.startswith("selection_") and k != "selection_score"}


def _scores(job: _Job, before: dict | None, teacher: dict | None, a: dict, b: dict) -> dict[str, Any]:
    """What the selection split said: the students' scores before and at each pass's kept step, the teacher's
    and the majority line (None with ``select_on='last'``). With ``select_on='dev'`` they are dev scores, so
    they are recorded under the ``dev_`` names too (``dev_score_2b`` ...)."""
    cfg, data = job.cfg, job.data
    out = {"select_on": cfg.select_on, "selection_source": data.selection_source,
           "selection_examples": len(data.selection),
           "selection_score_stage1": before["score"] if before else None,
           "selection_metrics_stage1": before["metrics"] if before else None,
           "selection_score_2a": a["best"]["selection_score"], "step_2a": a["best"]["step"],
           "selection_score_2b": b["best"]["selection_score"], "step_2b": b["best"]["step"],
           "selection_metrics_2a": _selection_metrics(a["best"]), "selection_metrics_2b": _selection_metrics(b["best"]),
           "selection_score_final": (b if b["summary"]["steps"] else a)["best"]["selection_score"],
           "teacher_selection_score": teacher["score"] if teacher else None,
           "teacher_selection_metrics": teacher["metrics"] if teacher else None,
           "majority_selection_score": majority_score(job.task, data.selection_examples, cfg.superglue_dir)}
    if cfg.select_on == "train_holdout":
        out.update(selection_fraction=cfg.selection_fraction, max_selection_examples=cfg.max_selection_examples)
    if cfg.select_on == "dev":
        out.update({k.replace("selection_", "dev_"): v for k, v in out.items() if "selection_" in k})
    return out


def _task_metrics(job: _Job, scores: dict[str, Any], a: dict, b: dict, teacher_scored: int,
                  seconds: dict) -> dict[str, Any]:
    """``metrics.json`` of one task: inputs, the task loss (what each pass computed or ``skipped``, and whether
    gold labels entered a loss), the selection split and its scores, sizes, times."""
    cfg, data = job.cfg, job.data
    passes = {p: (task_losses.PASS_LOSSES[cfg.task_loss][p] if r["summary"]["steps"] else "skipped")
              for p, r in (("2a", a), ("2b", b))}
    return {
        "task": job.task, "pattern_id": data.pattern_id, "kind": job.student.kind, "max_seq_len": data.max_len,
        "task_loss": cfg.task_loss, "gold_labels_in_loss": gold_labels_in_loss(cfg), "passes": passes,
        "score": "mean of the task's official metrics (glmd_lib.superglue.metrics.task_score)",
        "train_inputs": data.n_train, "unlabeled_inputs": data.n_unlabeled, "train_sequences": data.n_sequences,
        "steps_2a": a["summary"]["steps"], "steps_2b": b["summary"]["steps"], **scores,
        "student_params": count_parameters(job.student.model), "teacher_params": count_parameters(job.teacher),
        "final_loss_2a": a["summary"]["final_loss"], "final_loss_2b": b["summary"]["final_loss"],
        "teacher_scored_inputs": teacher_scored, "seconds": seconds, "fingerprint": _fingerprint(cfg, job.task),
        "feature_terms_skipped": a.get("feature_terms_skipped", {}),  # tinybert: terms the shapes did not allow
    }


def _save_task(job: _Job, metrics: dict[str, Any], evals: list[dict[str, Any]]) -> None:
    """Write ``student/``, ``history.csv`` and ``metrics.json`` of the task and mark its directory complete."""
    run, task, s = job.cfg.run_dir, job.task, job.student
    s.model.eval()
    save_student(s.model, artifact(run, "stage2", "student", task), job.tokenizer, s.vocab_map,
                 extra={"stage": "stage2", "task": task, "pattern_id": job.data.pattern_id})
    atomic_write_csv(artifact(run, "stage2", "history.csv", task), _history(job.out / ".work", evals))
    atomic_write_json(artifact(run, "stage2", "metrics.json", task), metrics)
    shutil.rmtree(job.out / ".work", ignore_errors=True)  # the passes' checkpoints: the selected student is saved
    mark_complete(job.out, TASK_ARTIFACTS, task=task)


def _pass_2a(job: _Job, steps: int, on_log: Any, progress: bool) -> dict[str, Any]:
    """Pass 2a (task_loss='glmd' or 'tinybert'): the vocabulary KL of stage 1 over the cloze inputs, against the task
    teacher; with 'tinybert' plus TinyBERT's intermediate-layer terms (fresh projections, trained in this pass)."""
    cfg, s_model, vm = job.cfg, job.student.model, job.student.vocab_map
    if not steps:  # skipped: no teacher runner, no wrapper (its set-up reads the model)
        return _run_pass(job, "2a", s_model, lambda *_: None, lambda idx: idx, 0, on_log, progress)
    runner = TeacherRunner(job.teacher, vm, job.bf16, cfg.temperature)
    features = hidden = None
    if cfg.task_loss == "tinybert":  # TinyBERT's intermediate-layer terms (eager attention returns the probabilities)
        for m in (s_model, job.teacher):
            use_eager_attention(m)
        features = FeatureObjective("tinybert", s_model.config, job.teacher.config, causal=job.student.kind == "causal")
    elif runner.head_w is not None:  # the teacher's body runs once per sequence, across runs with a store
        hidden = TeacherHidden(runner, _store(job, "hidden"))
    model = Distiller(s_model, cfg.temperature, None, cfg.loss_chunk, 0.0, "tinybert" if features else "glmd",
                      features, cfg.feature_weight)
    result = _run_pass(job, "2a", model, task_losses.make_2a_loss(hidden or runner, vm, features is not None),
                       task_losses.collate_2a(job.data.train), steps, on_log, progress)
    if hidden is not None:
        hidden.save()
    return {**result, "feature_terms_skipped": features.skipped if features is not None else {}}


def _pass_2b(job: _Job, steps: int, on_log: Any, progress: bool) -> tuple[dict[str, Any], int]:
    """The task pass by ``task_loss`` (glmd: soft task scores at T=1; kd; finetune); returns it and the number of
    training inputs the teacher scored."""
    s_model, vm = job.student.model, job.student.vocab_map
    scores = TeacherScores(job.teacher, job.data.train, job.bf16, _store(job, "scores"))
    loss_fn = task_losses.make_task_loss(job.cfg, s_model, job.data.train, scores, vm)
    result = _run_pass(job, "2b", s_model, loss_fn, lambda idx: {"index": idx}, steps, on_log, progress)
    scores.save()
    return result, len(scores.cache)


def _store(job: _Job, kind: str) -> Path | None:
    """The file of the task teacher's ``kind`` ('scores' of 2b, 'hidden' states of 2a) shared by runs
    (``teacher_scores_cache``), named after its weights and precision; None without that setting."""
    folder = job.cfg.teacher_scores_cache
    model = folder_identity(teacher_dir(job.cfg.run_dir, job.task)) if folder else None
    return Path(folder) / f"{kind}-{job.task}-{digest([model, job.bf16])}.pt" if model else None


def distill_task(cfg: Stage2Config, task: str, progress: bool = True, on_log: Any = None,
                 log_fn: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Stage 2 of one task (passes 2a and 2b, as ``task_loss`` says); writes ``<run_dir>/stage2/<task>/`` and
    returns its metrics."""
    say = log_fn or (lambda s: None)
    t_start = time.perf_counter()
    mark_incomplete(cfg.out_dir / task)  # rerunning: its old results no longer count as finished
    job = _prepare(cfg, task)
    s_model = job.student.model
    say(f"{task}: {job.data.n_train} train + {job.data.n_unlabeled} unlabeled inputs ({job.data.n_sequences} "
        f"sequences), {len(job.data.selection)} selection examples ({job.data.selection_source}), pattern "
        f"{job.data.pattern_id}, task_loss {cfg.task_loss}, student {count_parameters(s_model) / 1e6:.1f}M / "
        f"teacher {count_parameters(job.teacher) / 1e6:.1f}M")
    t0 = time.perf_counter()
    before, teacher = (job.evaluate(s_model) if job.data.selection else None), _teacher_selection(job)
    t_eval = time.perf_counter() - t0
    steps_2a, steps_2b = pass_steps(cfg, task, len(job.data.train))
    a = _pass_2a(job, steps_2a, on_log, progress)
    say(f"{task}: pass 2a {_said(a, teacher)}")
    b, teacher_scored = _pass_2b(job, steps_2b, on_log, progress)
    say(f"{task}: pass 2b {_said(b, teacher)}")
    seconds = {"2a": round(a["seconds"], 1), "2b": round(b["seconds"], 1), "eval_before": round(t_eval, 1),
               "total": round(time.perf_counter() - t_start, 1)}
    metrics = _task_metrics(job, _scores(job, before, teacher, a, b), a, b, teacher_scored, seconds)
    _save_task(job, metrics, a["records"] + b["records"])
    return metrics


def _said(res: dict[str, Any], teacher: dict[str, Any] | None) -> str:
    """The kept step of a pass and, when the selection split scored it, its score beside the teacher's."""
    if res.get("skipped"):
        return "skipped (0 steps)"
    best, done = res["best"], f"done in {res['seconds']:.0f}s; "
    if best["selection_score"] is None:
        return done + f"kept the last step ({best['step']}; select_on='last')"
    return done + f"selection score {best['selection_score']:.4f} (step {best['step']}), teacher {teacher['score']:.4f}"


def _fingerprint(cfg: Stage2Config, task: str) -> dict[str, Any]:
    run = Path(cfg.run_dir)
    stamps = {d: (read_json(run / d / "COMPLETE.json").get("created") if is_complete(run / d) else None)
              for d in ("stage1", "teachers")}
    return {"task": task, **{k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_FINGERPRINT}, **stamps}


def _history(work: Path, evals: list[dict[str, Any]]) -> pd.DataFrame:
    """Both passes' training rows (``pass`` column) with the selection evaluations (``selection_score``,
    ``selection_<metric>``) merged in by (pass, step)."""
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
    """Run stage 2 for every task of ``cfg``; returns ``{task: metrics}`` (also in ``stage2/<TASK>/``).

    A task finished earlier with the same settings is skipped (``resume=True``). At the end: ``summary.json``,
    ``stage2_scores.png``, and the stage marked complete. The stage's marker (and a redone task's) is withdrawn
    before any work, so a failing rerun never leaves ``COMPLETE.json`` beside results it did not finish.
    """
    set_threads()
    say = log_fn or (lambda s: None)
    begin_stage(cfg)  # the marker goes first: a failing rerun leaves stage2/ incomplete, not its old results
    STAGES["stage1"].require(cfg.run_dir)
    STAGES["teachers"].require(cfg.run_dir)
    results = {}
    for task in cfg.tasks:
        done = artifact(cfg.run_dir, "stage2", "metrics.json", task)
        if cfg.resume and is_complete(done.parent) and done.exists():
            old = read_json(done)
            if old.get("fingerprint") == _fingerprint(cfg, task):
                say(f"{task}: already distilled with these settings ({done.parent}); skipped (resume=False redoes it)")
                results[task] = old
                continue
        results[task] = distill_task(cfg, task, progress=progress, on_log=on_log, log_fn=log_fn)
    _finish(cfg, results)
    return results


def _finish(cfg: Stage2Config, results: dict[str, dict[str, Any]]) -> None:
    """``summary.json`` and the figure over all tasks, then the stage directory marked complete."""
    atomic_write_json(artifact(cfg.run_dir, "stage2", "summary.json"), {t: _summary_row(m) for t, m in results.items()})
    histories = {t: pd.read_csv(artifact(cfg.run_dir, "stage2", "history.csv", t)) for t in results}
    save_figure(stage2_scores(summary_table(results), histories), cfg.out_dir, FIGURE)
    mark_complete(cfg.out_dir, list(STAGES["stage2"].files) + [f"{FIGURE}.png"] + list(cfg.tasks))


def _summary_row(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("select_on", "majority_selection_score", "teacher_selection_score", "selection_score_stage1",
            "selection_score_2a", "selection_score_2b", "majority_dev_score", "teacher_dev_score", "dev_score_stage1",
            "dev_score_2a", "dev_score_2b", "teacher_params", "student_params", "train_inputs", "unlabeled_inputs",
            "selection_examples")
    return {k: m.get(k) for k in keys}


def summary_table(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """A per-task table of the scores (official metrics averaged; on the selection split, and under the dev names
    too when dev was the selection split) and sizes, for the notebook."""
    df = pd.DataFrame.from_dict({t: _summary_row(m) for t, m in results.items()}, orient="index")
    df.index.name = "task"
    return df
