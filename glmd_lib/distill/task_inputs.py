"""Stage 2's inputs: a task's examples *without their labels*, as cloze sequences in the task teacher's pattern.

No gold label may reach a student loss in stage 2. The training inputs are therefore read through
:func:`read_inputs`, which drops every label as it reads (a train file without labels reads just as well),
and ``tests/test_stage2.py`` shows that real, shuffled and removed labels give bitwise the same student.
Labels are read in two places only, neither of them a loss: the dev split (dev labels *choose* a checkpoint
when ``select_by_dev=True``) and :func:`majority_dev_score` (a reference line in the metrics).

The clozes use the pattern and length notebook 04 trained the task teacher with (:func:`cloze_settings`),
so teacher and student read exactly what the teacher was fine-tuned on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from glmd_lib.artifacts import artifact, read_json
from glmd_lib.config.stages import Stage2Config
from glmd_lib.models.teacher import load_tokenizer
from glmd_lib.superglue.data import Example, read_file, read_split, subsample, task_path
from glmd_lib.superglue.metrics import majority_label, task_metrics, task_score
from glmd_lib.superglue.patterns import Cloze, build_cloze, prompt_text


class Stage2Error(ValueError):
    """Stage-2 inputs do not fit together (vocabularies, model kinds, sequence lengths, data ...)."""


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


# --------------------------------------------------------------------------------------------
# what notebook 04 recorded about the task teacher
# --------------------------------------------------------------------------------------------

def teacher_dir(run_dir: Path | str, task: str) -> Path:
    """The task teacher's model folder (notebook 04)."""
    return artifact(run_dir, "teachers", "model", task)


def teacher_settings(run_dir: Path | str, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(notebook 04's resolved config, the task teacher's metrics.json); empty dicts where absent."""
    cfg_path, metrics_path = artifact(run_dir, "teachers", "config.json"), artifact(run_dir, "teachers",
                                                                                     "metrics.json", task)
    cfg = read_json(cfg_path).get("config", {}) if cfg_path.exists() else {}
    return cfg, (read_json(metrics_path) if metrics_path.exists() else {})


def cloze_settings(cfg: Stage2Config, task: str) -> tuple[int, int]:
    """``(pattern_id, max_len)``: the config's where given, else those the task teacher was trained with."""
    t_cfg, t_metrics = teacher_settings(cfg.run_dir, task)
    pattern_id = cfg.pattern_id if cfg.pattern_id is not None else int(t_metrics.get("pattern_id", 0))
    return pattern_id, int(cfg.max_seq_len or t_cfg.get("max_seq_len", 256))


# --------------------------------------------------------------------------------------------
# one task's clozes
# --------------------------------------------------------------------------------------------

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

    @property
    def n_sequences(self) -> int:
        """Training sequences (COPA/ReCoRD: one per candidate-filled cloze)."""
        return sum(len(c.sequences) for c in self.train)


def task_inputs(cfg: Stage2Config, task: str, tokenizer: Any, kind: str, pattern_id: int, max_len: int,
                data_dir: str | Path | None = None) -> TaskInputs:
    """Train (+ unlabeled test) inputs without labels and the dev split, capped and built into clozes."""
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


def input_preview(cfg: Stage2Config, width: int = 150) -> pd.DataFrame:
    """One training input per task as teacher and student read it (``___`` marks the answer slot), with the
    label stage 2 sees (None, always) and its sequence and token counts: a table for notebook 05."""
    rows = []
    for task in cfg.tasks:
        pattern_id, max_len = cloze_settings(cfg, task)
        ex = read_inputs(task, "train", cfg.superglue_dir)[0]
        cloze = build_cloze(task, [ex], load_tokenizer(teacher_dir(cfg.run_dir, task)), pattern_id=pattern_id,
                            max_len=max_len)[0]
        text = prompt_text(ex, pattern_id)
        rows.append({"task": task, "input": ("…" + text[-width:]) if len(text) > width else text,
                     "label seen by stage 2": ex.label, "sequences": len(cloze.sequences),
                     "tokens": sum(len(q) for q in cloze.sequences)})
    return pd.DataFrame(rows).set_index("task")
