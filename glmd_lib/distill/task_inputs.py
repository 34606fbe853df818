"""Stage 2's inputs: a task's examples *without their labels*, as cloze sequences in the task teacher's pattern.

No gold label may reach a GLMD student loss in stage 2. The training inputs are therefore read through
:func:`read_inputs`, which drops every label as it reads (a train file without labels reads just as well),
and ``tests/test_stage2.py`` shows that real, shuffled and removed labels give bitwise the same student. The
baselines of issue #13 (``task_loss='kd'``/``'finetune'``) do learn from gold labels: for them, and only them,
:func:`task_inputs` reads back the labels of exactly the training inputs (:func:`gold_labels_in_loss`).
Labels are read in two places only, neither of them a loss: the **selection** examples, which *choose* each
pass's checkpoint (:func:`split_inputs`, by ``select_on`` as in :mod:`glmd_lib.tasks.selection`: a holdout
carved from the train split and removed from the inputs that train, or dev, or none), and
:func:`majority_score` (a reference line in the metrics). Dev is not read at all unless ``select_on='dev'``.

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
from glmd_lib.tasks.selection import SOURCES, carve_selection


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
    """One task's clozes: ``train`` (labels stripped; test-split inputs appended when asked for) and the
    labelled ``selection`` clozes that choose the checkpoints (empty with ``select_on='last'``)."""

    task: str
    pattern_id: int
    max_len: int
    train: list[Cloze]
    n_train: int
    n_unlabeled: int
    select_on: str
    selection_examples: list[Example]
    selection: list[Cloze]

    @property
    def n_sequences(self) -> int:
        """Training sequences (COPA/ReCoRD: one per candidate-filled cloze)."""
        return sum(len(c.sequences) for c in self.train)

    @property
    def selection_source(self) -> str:
        return SOURCES[self.select_on]


def with_labels(task: str, train: list[Example], chosen: list[Example], data_dir: str | Path | None, why: str,
                fix: str) -> list[Example]:
    """The labelled originals of ``chosen``, examples of the label-free ``train``: the same file read with its
    labels, matched by position (carving and capping read order and groups only, so labels cannot move them).
    ``why`` the labels are needed and ``fix`` go into the error when the file has none."""
    try:
        labelled = read_split(task, "train", data_dir)
    except Exception as e:  # noqa: BLE001 - e.g. a train copy without labels
        raise Stage2Error(f"{task}: {why} needs the train split's labels ({e}); {fix}") from e
    pos = {id(ex): i for i, ex in enumerate(train)}
    out = [labelled[pos[id(ex)]] for ex in chosen]
    if len(labelled) != len(train) or any(ex.label is None for ex in out):
        raise Stage2Error(f"{task}: {why} needs labels but the train split has examples without; {fix}")
    return out


def _split(cfg: Stage2Config, task: str, data_dir: str | Path | None
           ) -> tuple[list[Example], list[Example], list[Example]]:
    """``(whole train split, train inputs, labelled selection examples)``, all but the last without labels."""
    train = read_inputs(task, "train", data_dir)
    if cfg.select_on == "train_holdout":
        rest, held = carve_selection(train, cfg.selection_fraction, cfg.max_selection_examples, cfg.seed)
        return train, rest, with_labels(task, train, held, data_dir, "select_on='train_holdout' (to choose "
                                        "checkpoints)", "use select_on='last' (or 'dev')")
    if cfg.select_on == "dev":
        return train, train, subsample(read_split(task, "val", data_dir), cfg.max_eval_examples, seed=cfg.seed)
    return train, train, []


def split_inputs(cfg: Stage2Config, task: str, data_dir: str | Path | None = None
                 ) -> tuple[list[Example], list[Example]]:
    """``(train inputs without labels, labelled selection examples)`` by ``cfg.select_on``. The holdout is carved
    from the whole train split before ``max_train_examples`` caps what trains (as notebook 04 does), so the
    same settings hold out the same examples as the task teachers'."""
    return _split(cfg, task, data_dir)[1:]


def gold_labels_in_loss(cfg: Stage2Config) -> bool:
    """Whether ``cfg.task_loss`` puts the training inputs' gold labels into a loss (finetune; kd with
    ``gold_weight > 0``; never glmd)."""
    return cfg.task_loss == "finetune" or (cfg.task_loss == "kd" and cfg.gold_weight > 0)


def task_inputs(cfg: Stage2Config, task: str, tokenizer: Any, kind: str, pattern_id: int, max_len: int,
                data_dir: str | Path | None = None) -> TaskInputs:
    """Train (+ unlabeled test) inputs and the selection examples, capped and built into clozes. The train inputs
    carry no label, except with a gold-label ``task_loss`` (kd, finetune): then the labels of exactly these
    inputs (never the selection holdout's, never dev's) are read back, and inputs without a gold choice dropped."""
    whole, rest, sel_ex = _split(cfg, task, data_dir)
    train_ex = subsample(rest, cfg.max_train_examples, seed=cfg.seed)
    if gold_labels_in_loss(cfg):
        train_ex = with_labels(task, whole, train_ex, data_dir, f"task_loss='{cfg.task_loss}'",
                               "use task_loss='glmd'")
    extra: list[Example] = []
    if cfg.add_unlabeled:
        extra = subsample(read_inputs(task, "test", data_dir), cfg.max_unlabeled_examples, seed=cfg.seed)
    train = build_cloze(task, train_ex + extra, tokenizer, kind=kind, pattern_id=pattern_id, max_len=max_len)
    train = [c for c in train if c.n_choices > 0 and (c.label is not None or not gold_labels_in_loss(cfg))]
    if not train:
        raise Stage2Error(f"{task}: no training inputs (train split{' + test split' if cfg.add_unlabeled else ''})")
    selection = build_cloze(task, sel_ex, tokenizer, kind=kind, pattern_id=pattern_id, max_len=max_len)
    return TaskInputs(task, pattern_id, max_len, train, len(train_ex), len(extra), cfg.select_on, sel_ex, selection)


def majority_score(task: str, examples: Sequence[Example], data_dir: str | Path | None = None) -> float | None:
    """Score on ``examples`` of always predicting the train split's most frequent label (a reference line only;
    None without examples, when the train split has no labels or the task has no fixed label set)."""
    try:
        train = read_split(task, "train", data_dir)
    except Exception:  # noqa: BLE001 - e.g. a train copy without labels: no baseline, nothing else changes
        return None
    if task == "ReCoRD" or not train or not examples:
        return None
    label = majority_label(train)
    return task_score(task, task_metrics(task, [label] * len(examples), examples))


def input_preview(cfg: Stage2Config, width: int = 150) -> pd.DataFrame:
    """One training input per task as teacher and student read it (``___`` marks the answer slot), with the
    label stage 2 sees (None, except with a gold-label ``task_loss``) and its sequence and token counts: a table
    for notebook 05."""
    rows = []
    for task in cfg.tasks:
        pattern_id, max_len = cloze_settings(cfg, task)
        ex = (read_split if gold_labels_in_loss(cfg) else read_inputs)(task, "train", cfg.superglue_dir)[0]
        cloze = build_cloze(task, [ex], load_tokenizer(teacher_dir(cfg.run_dir, task)), pattern_id=pattern_id,
                            max_len=max_len)[0]
        text = prompt_text(ex, pattern_id).replace("\n", " ⏎ ")  # a table cell would print a literal \n
        rows.append({"task": task, "input": ("…" + text[-width:]) if len(text) > width else text,
                     "label seen by stage 2": ex.label, "sequences": len(cloze.sequences),
                     "tokens": sum(len(q) for q in cloze.sequences)})
    return pd.DataFrame(rows).set_index("task")
