"""The model card (``README.md``) of an exported student: what a user of the folder needs to know.

Teacher, method and settings, kept vocabulary, parameters, dev scores with intervals, and what the student
cannot do. Read from the student folder's ``student.json`` and ``vocab_map.json`` and, when the student sits
in a run directory (``<run>/stage1/student``, ``<run>/stage2/<TASK>/student``), the stages' ``config.json``,
stage 1's ``metrics.json`` and the evaluation's ``results.csv`` (all through ``glmd_lib.artifacts``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping

from glmd_lib.artifacts import STAGES, artifact
from glmd_lib.models.student import STUDENT_META
from glmd_lib.superglue.data import DIAGNOSTICS
from glmd_lib.vocab.vocab_map import VocabMap

# config entries that say how a stage ran, not what it made: left out of the card
_MECHANICS = {"run_dir", "profile", "device", "resume", "checkpoint_every", "keep_checkpoints", "loss_chunk",
              "batch_lines", "speed_batches", "show_errors"}


def find_run_dir(student_dir: Path | str) -> Path | None:
    """The run directory a student was saved in (``<run>/stage1/student``, ``<run>/stage2/<TASK>/student``)."""
    for parent in list(Path(student_dir).resolve().parents)[:3]:
        if (parent / "vocab").is_dir() or (parent / "stage1").is_dir():
            return parent
    return None


def _read(path: Path) -> dict[str, Any]:
    """A JSON artifact, or ``{}`` when absent or unreadable: a card with a gap beats no export at all."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def read_dev_scores(run_dir: Path, student_dir: Path, task: str | None) -> dict[str, dict[str, Any]]:
    """The evaluation's (notebook 06) scores of this student: ``{task: {"value", "low", "high", "n"}}``.

    Only a stage-2 student of ``task`` is evaluated there (as ``student``; RTE's also on the diagnostics).
    ``low``/``high`` are read when the results carry intervals (columns ``ci_low``/``ci_high``), else None.
    """
    results = artifact(run_dir, "eval", "results.csv")
    if task is None or not results.exists():
        return {}
    if artifact(run_dir, "stage2", "student", task).resolve() != Path(student_dir).resolve():
        return {}  # another student than the one evaluated as this run's "student"
    answered = {task} | (set(DIAGNOSTICS) if task == "RTE" else set())
    out = {}
    with open(results, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("model") == "student" and row.get("metric") == "score" and row.get("task") in answered:
                num = {k: float(row[c]) if row.get(c) not in (None, "") else None
                       for k, c in (("value", "value"), ("low", "ci_low"), ("high", "ci_high"))}
                out[row["task"]] = {**num, "n": int(float(row["n_examples"])) if row.get("n_examples") else None}
    return out


def _shown(key: str, value: Any) -> bool:
    """A setting worth a reader's time: a scalar that is not run mechanics or a local path."""
    if not isinstance(value, (str, int, float, bool)) or key in _MECHANICS or key.endswith(("_dir", "_path")):
        return False
    return key == "teacher" or not (isinstance(value, str) and "/" in value)


def _settings(run_dir: Path | None, stages: tuple[str, ...]) -> list[str]:
    """Markdown: each stage's settings from its ``config.json``, folded."""
    lines = []
    for stage in stages if run_dir is not None else ():
        cfg = _read(artifact(run_dir, stage, "config.json")).get("config", {})
        items = [f"`{k}`={v!r}" for k, v in cfg.items() if _shown(k, v)]
        if items:
            lines += [f"<details><summary>{stage} ({STAGES[stage].notebook})</summary>", "", ", ".join(items), "",
                      "</details>", ""]
    return lines


def _score_lines(scores: Mapping[str, Mapping[str, Any]], task: str | None) -> list[str]:
    if not scores:
        why = ("a stage-1 student is a general language model; SuperGLUE scores belong to the stage-2 students"
               if task is None else "no evaluation of this student was found (run notebook 06, `glmd eval`)")
        return [f"**Not evaluated** on SuperGLUE dev: {why}.", ""]
    lines = ["| task | dev score | 95% interval | examples |", "|---|---|---|---|"]
    for t, s in scores.items():
        low, high = s.get("low"), s.get("high")
        ci = f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else "not recorded"
        lines.append(f"| {t} | {s['value']:.3f} | {ci} | {s.get('n') if s.get('n') is not None else '?'} |")
    return lines + ["", "Scores are the mean of each task's official metrics (0-1), on the dev split."]


def _vocab_lines(vm: VocabMap, tokenizer: Any) -> list[str]:
    K, V = vm.num_kept, vm.vocab_size
    if K == V:
        return [f"- The full vocabulary of the teacher's tokenizer ({V:,} tokens, the teacher's ids): nothing pruned."]
    special = set(vm.protected_ids)
    top = [repr(tokenizer.decode([int(t)])) for t in vm.kept_ids[:40] if int(t) not in special][:20]
    pruned = vm.pruned_ids[:: max(1, (V - K) // 10)][:10]  # a spread of examples
    subs = ", ".join(f"{tokenizer.decode([int(p)])!r} -> {tokenizer.decode([int(s)])!r}"
                     for p, s in zip(pruned, vm.kept_ids[vm.teacher_to_student[pruned]]))
    how = "the unknown token" if vm.method == "unk" else "the most similar kept token by the teacher's embeddings"
    return [f"- {K:,} of the teacher's {V:,} tokens are kept ({K / V:.0%}), {len(vm.protected_ids)} of them special "
            f"or task tokens that are always kept; each other token is read as a substitute: `{vm.method}` ({how}).",
            f"- ids `0 .. {K - 1}` are the kept tokens, most frequent first: {', '.join(top)} ...",
            f"- ids `{K} .. {V - 1}` are the pruned tokens; the model reads each as its substitute, e.g. {subs}."]


def _limits(vm: VocabMap, kind: str, meta: dict[str, Any]) -> list[str]:
    K, lines = vm.num_kept, []
    if K < vm.vocab_size:
        lines += ["- It reads every pruned token as its substitute: what distinguishes the two is lost "
                  "(a rare name or word can be read as a different, more frequent one).",
                  f"- It never writes a pruned token (`generation_config.suppress_tokens` holds ids {K} and up): "
                  "it writes rare words from kept pieces, or not at all, and was never trained to spell them so.",
                  f"- Its distribution is `softmax(logits[..., :{K}])`; columns {K} and up repeat their "
                  "substitutes' scores (`config.glmd_export['kept']` holds this number)."]
    if kind == "causal":
        lines.append("- It is a small distilled model: expect fluent-looking text with little knowledge or reasoning; "
                     "it is not instruction-tuned beyond what distillation on plain text passed on.")
    else:
        lines.append("- It is a masked language model: it fills `[MASK]` positions and does not generate text.")
    if meta.get("task"):
        lines.append(f"- It was fine-tuned (stage 2) for {meta['task']} with pattern {meta.get('pattern_id', 0)}; "
                     "other prompts get the stage-1 behaviour at best.")
    return lines


def _usage(kind: str) -> list[str]:
    if kind != "causal":
        return ["```python", "from transformers import pipeline", "", 'fill = pipeline("fill-mask", model="path/to/this/folder")',
                'print(fill("The capital of France is [MASK]."))', "```"]
    return ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline", "",
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")  # the student\'s own ids',
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'print(pipeline("text-generation", model=model, tokenizer=tokenizer)("The capital of France is", '
            'max_new_tokens=20)[0]["generated_text"])', "```"]


def _numbers(vm: VocabMap, params: Mapping[str, int], stage1: dict[str, Any]) -> list[str]:
    """Parameters, and the stage-1 held-out measurements when the run has them."""
    lines = [f"- parameters: {params['student']:,}" + ("" if vm.is_identity else
             f" in the student (its {vm.num_kept:,} vocabulary rows), {params['exported']:,} in this folder (rows "
             f"{vm.num_kept:,} and up copy substitute rows, so that plain `transformers` reads every id the "
             f"tokenizer writes)")]
    if stage1.get("teacher_params"):
        lines.append(f"- teacher parameters: {stage1['teacher_params']:,}")
    if "valid_kl" in stage1:
        lines.append(f"- stage 1, held-out text ({stage1.get('valid_tokens', 0):,} tokens): KL(teacher || student) "
                     f"{stage1['valid_kl']:.3f} nats/token, top-1 agreement {stage1['valid_top1_agreement']:.1%}, "
                     f"perplexity {stage1['valid_student_ppl']:.1f} (teacher {stage1['valid_teacher_ppl']:.1f})")
    return lines


def model_card(student_dir: Path | str, vocab_map: VocabMap, tokenizer: Any, params: Mapping[str, int],
               dev_scores: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The exported folder's ``README.md`` (Markdown with Hugging Face metadata).

    Reads ``student.json`` in ``student_dir`` and, when the student sits in a run directory, the stages'
    ``config.json``, stage 1's ``metrics.json`` and the evaluation's ``results.csv``.
    """
    student_dir = Path(student_dir)
    meta = _read(student_dir / STUDENT_META)
    run = find_run_dir(student_dir)
    stage1 = _read(artifact(run, "stage1", "metrics.json")) if run is not None else {}
    teacher = meta.get("teacher") or (_read(artifact(run, "stage1", "config.json")).get("config", {}).get("teacher")
                                      if run is not None else None)
    task, kind = meta.get("task"), meta.get("kind", "causal")
    if dev_scores is None:
        dev_scores = read_dev_scores(run, student_dir, task) if run is not None else {}
    stages = ("vocab", "stage1") + (("stage2",) if task else ())
    return "\n".join([
        "---", "library_name: transformers", f"pipeline_tag: {'text-generation' if kind == 'causal' else 'fill-mask'}",
        "tags: [glmd, distillation, vocabulary-compression]", "---", "",
        f"# GLMD student of {teacher or 'an unrecorded teacher'}" + (f" for {task}" if task else ""), "",
        "Distilled with the GLMD Workbench: stage 1 matches the teacher's next-token distributions (at a "
        "temperature, over a compressed vocabulary) on plain text; stage 2 distils task teachers on SuperGLUE. "
        f"This is the {'stage-2' if task else 'stage-1'} student. Plain `transformers`, no custom code:", "",
        *_usage(kind), "", "## Vocabulary", "", *_vocab_lines(vocab_map, tokenizer), "",
        "## Size and held-out measurements", "", *_numbers(vocab_map, params, stage1), "",
        "## Dev scores", "", *_score_lines(dev_scores, task), "",
        "## Method and settings", "", *(_settings(run, stages) or ["Settings not recorded (no run directory).", ""]),
        "## What it cannot do", "", *_limits(vocab_map, kind, meta), ""])
