"""Label-free distillation fidelity: how closely each student follows its task teacher (``eval/fidelity.csv``).

Dev accuracy measures the student against gold labels on a few hundred examples; whether the student *learnt
its teacher* can be measured without any label, on many more inputs. For each task with both a task teacher
and a student, on unlabeled inputs that no training step saw (the dev and test inputs; test only where stage
2 did not distil on it, ``add_unlabeled``), capped by ``max_fidelity_examples``:

* **agreement**: the share of inputs where the student predicts what its teacher predicts;
* **KL(teacher ‖ student)**: over the task's choices (softmax of each model's cloze scores), in nats.

Each with a bootstrap interval (:func:`glmd_lib.tasks.intervals.mean_interval`; MultiRC by question). Each model
reads its inputs in the pattern it was trained with, as in its dev scores. Dev and test inputs are kept apart
(their record ids overlap) by their split in the resampling unit.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from glmd_lib.artifacts import artifact, read_json
from glmd_lib.superglue.data import Example, has_split, read_split, subsample
from glmd_lib.tasks.intervals import N_BOOT, mean_interval

FIDELITY_MODELS = ("teacher", "student")  # notebook 06's names of a task teacher and its student
COLUMNS = ["task", "metric", "value", "ci_low", "ci_high", "n_examples", "splits", "teacher_pattern",
           "student_pattern"]
SPLIT_NAMES = {"val": "dev", "test": "test"}


def unseen_splits(run_dir: str | Path) -> list[str]:
    """The splits whose inputs no training step saw: dev, and test unless stage 2 distilled on its inputs."""
    path = artifact(run_dir, "stage2", "config.json")
    stage2 = read_json(path).get("config", {}) if path.exists() else {}
    return ["val"] + ([] if stage2.get("add_unlabeled") else ["test"])


def unlabeled_inputs(task: str, splits: Sequence[str], data_dir: str | Path | None = None) -> list[Example]:
    """The inputs of ``splits`` without labels; each example's group names its split (ids repeat across splits)."""
    out: list[Example] = []
    for split in splits:
        if has_split(task, split, data_dir):
            out += [dataclasses.replace(ex, label=None, group=(split, ex.group_key))
                    for ex in read_split(task, split, data_dir)]
    return out


def fidelity_inputs(run_dir: str | Path, tasks: Sequence[str], data_dir: str | Path | None = None,
                    cap: int | None = None, seed: int = 0) -> dict[str, list[Example]]:
    """Per task: a seeded subset of at most ``cap`` unseen unlabeled inputs (whole groups)."""
    splits = unseen_splits(run_dir)
    return {t: subsample(unlabeled_inputs(t, splits, data_dir), cap, seed=seed) for t in tasks}


def kl_per_example(teacher_scores: Sequence[torch.Tensor], student_scores: Sequence[torch.Tensor]) -> list[float]:
    """KL(softmax(teacher) ‖ softmax(student)) over each input's choices (a choice the teacher rules out adds 0)."""
    out = []
    for t, s in zip(teacher_scores, student_scores):
        lt, ls = torch.log_softmax(t.double(), -1), torch.log_softmax(s.double(), -1)
        p = lt.exp()
        out.append(float(torch.where(p > 0, p * (lt - ls), torch.zeros_like(p)).sum()))
    return out


def _splits_label(examples: Sequence[Example]) -> str:
    return "+".join(SPLIT_NAMES.get(s, s) for s in dict.fromkeys(ex.group[0] for ex in examples))


def fidelity_table(details: dict, inputs: dict[str, list[Example]], n_boot: int = N_BOOT,
                   seed: int = 0) -> pd.DataFrame:
    """Agreement and KL per task, from the teacher's and the student's ``details[(name, task)]["unlabeled"]``
    (``(predictions, scores)`` on ``inputs[task]``)."""
    rows: list[dict[str, Any]] = []
    for task, exs in inputs.items():
        teacher, student = (details.get((name, task), {}) for name in FIDELITY_MODELS)
        if "unlabeled" not in teacher or "unlabeled" not in student or not exs:
            continue
        (t_pred, t_scores), (s_pred, s_scores) = teacher["unlabeled"], student["unlabeled"]
        groups = [ex.group_key for ex in exs]
        measures = {"agreement": [float(a == b) for a, b in zip(s_pred, t_pred)],
                    "kl_teacher_student": kl_per_example(t_scores, s_scores)}
        for metric, values in measures.items():
            iv = mean_interval(values, groups, n_boot, seed)
            rows.append({"task": task, "metric": metric, "value": iv.value, "ci_low": iv.low, "ci_high": iv.high,
                         "n_examples": len(exs), "splits": _splits_label(exs),
                         "teacher_pattern": teacher.get("pattern_id"), "student_pattern": student.get("pattern_id")})
    return pd.DataFrame(rows, columns=COLUMNS)
