"""What several stage configs share: the default teachers and task lists, the paper's constants, the shared-key
helpers, the task-list check and the student's shape (:mod:`glmd_lib.config.stages` builds the configs from them).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import ClassVar, Literal

from glmd_lib.config.base import ConfigError, param
from glmd_lib.superglue.data import DIAGNOSTICS, MAIN_TASKS

SMOKE_TEACHER = "tiny-random-llama"  # a tiny random Llama with the real SmolLM2 tokenizer (see models.py)
DEMO_TEACHER = "smollm2-135m"
CORE_TASKS = ["CB", "COPA", "RTE"]
ALL_TASKS = list(MAIN_TASKS)
# The paper's student is about 60% of its teacher's parameters: SmolLM2-135M's own width, heads and MLP with 19 of
# its 30 layers, and the half vocabulary, is 81.4M of 134.5M parameters (60.5%). Shared by the vocabulary stage
# (its parameter counts) and stage 1 (the student it trains).
PAPER_STUDENT = {"student_layers": 19, "student_hidden": 576, "student_heads": 9, "student_kv_heads": 3,
                 "student_intermediate": 1536}
# The demo's student: SmolLM2-135M's own width, heads and MLP with 4 of its layers (copied by stage 1's
# init="teacher") and the kept vocabulary, 28.3M parameters (21% of the teacher). Measured on 2026-12-03 (2 cores
# with bf16 units, 300 stage-1 steps over 960 cached blocks, T = 1): held-out top-1 agreement with the teacher
# 0.350 [0.327, 0.369] and perplexity 387 [318, 485] (n = 64 held-out blocks), where the earlier 4 x 256 student
# (7.4M, embeddings projected, layers random; 480 blocks; 2026-12-02, no bf16) reached 0.251 [0.234, 0.266] and
# 690 [565, 869]. Shared by the vocabulary stage and stage 1.
DEMO_STUDENT = {"student_hidden": 576, "student_heads": 9, "student_kv_heads": 3, "student_intermediate": 1536}
# glmd compare's students stay at 4 x 256 (the defaults): some 40 of them are trained within its 2-hour budget.
COMPARE_STUDENT = {"student_hidden": 256, "student_heads": 4, "student_kv_heads": None, "student_intermediate": None}
# The paper's stage 2 reads 512-token inputs for MultiRC and ReCoRD; one length serves every task here.
PAPER_SEQ_LEN = 512
# The paper's stage-2 epochs per task (each of passes 2a and 2b runs them).
PAPER_TASK_EPOCHS = {"CB": 50, "COPA": 50, "RTE": 50, "WiC": 30, "BoolQ": 20, "MultiRC": 15, "ReCoRD": 5}


# Keys with one meaning in every notebook that declares them are `shared` (glmd run sends a bare value to
# all of them). Keys that mean different things per stage (lr, batch_size, steps, max_seq_len ...) are not,
# and neither is `tasks`: frequency counts every task for comparison, teachers and stage2 train on theirs,
# eval adds the AX diagnostics; one bare list would silently change all four, so it is written per stage.

def shared_param(default, help: str, **extra):
    """A key with one meaning in every notebook that declares it (``param(..., shared=True)``)."""
    return param(default, help, shared=True, **extra)


def check_tasks(tasks: list[str], allowed: tuple[str, ...], key: str = "tasks", empty_ok: bool = False) -> None:
    """Refuse an unknown, misspelt, repeated or (for this stage) unusable task name, listing the allowed ones.

    Names are case-sensitive, as the SuperGLUE folders are (``cb`` gets "did you mean 'CB'?")."""
    choices = f"allowed: {', '.join(allowed)} (case-sensitive)"
    if not tasks and not empty_ok:
        raise ConfigError(f"parameter {key!r} must name at least one task; {choices}")
    for name in tasks:
        if name in allowed:
            if tasks.count(name) > 1:
                raise ConfigError(f"parameter {key!r} lists {name!r} twice")
            continue
        if name in DIAGNOSTICS:
            raise ConfigError(f"parameter {key!r}: {name!r} is a diagnostic set without training data (notebook 06 "
                              f"evaluates it with the RTE models); {choices}")
        same = [t for t in allowed if t.lower() == str(name).lower()] or difflib.get_close_matches(name, allowed, 1)
        hint = f" (did you mean {same[0]!r}?)" if same else ""
        raise ConfigError(f"parameter {key!r}: {name!r} is not a SuperGLUE task{hint}; {choices}")


def teacher_param(help: str):
    """The pre-trained teacher: the same model in every notebook (only the help text says what it is used for)."""
    return shared_param(DEMO_TEACHER, help)


def superglue_dir_param():
    """The SuperGLUE folder: the same data for every stage that reads it."""
    return shared_param(None, "SuperGLUE folder (default: $GLMD_DATA, ../shared/data/superglue)")


class TaskList:
    """A config with a ``tasks`` list: its names are checked (:func:`check_tasks`) against ``allowed_tasks``
    (default: the eight main tasks, which have training data)."""

    allowed_tasks: ClassVar[tuple[str, ...]] = MAIN_TASKS
    empty_tasks_ok: ClassVar[bool] = False

    def validate(self) -> None:
        super().validate()  # type: ignore[misc]  (StageConfig's, next in the configs' method order)
        check_tasks(self.tasks, self.allowed_tasks, empty_ok=self.empty_tasks_ok)  # type: ignore[attr-defined]


@dataclass
class StudentShape:
    """The student's shape; shared by the vocabulary stage (for parameter counts) and stage 1, so each key
    is ``shared``: ``-p student_layers=6`` reaches both, and the counts describe the student that is trained."""

    student_arch: Literal["same", "llama", "gpt2", "bert"] = shared_param(
        "same", "student architecture: 'same' as the teacher, or another HF architecture sharing its tokenizer")
    student_layers: int = shared_param(4, "student transformer layers", ge=1)
    student_hidden: int = shared_param(256, "student hidden size", ge=1)
    student_heads: int = shared_param(4, "student attention heads", ge=1)
    student_kv_heads: int | None = shared_param(None, "student key/value heads (None: same as heads)", ge=1)
    student_intermediate: int | None = shared_param(None, "student MLP width (None: 4 x hidden, or 8/3 x hidden "
                                                          "for Llama)", ge=1)
    student_max_positions: int = shared_param(512, "student maximum sequence length", ge=1)


@dataclass
class SelectionSplit:
    """Which labels choose checkpoints; shared by the task teachers and stage 2 (each key ``shared``), so both
    hold out the same train examples and a bare ``-p select_on=dev`` reaches both."""

    select_on: Literal["train_holdout", "dev", "last"] = shared_param(
        "train_holdout", "labels that choose checkpoints: a holdout carved from the train split (and removed from "
                         "training), dev (the paper's practice: its dev scores are then optimistic), or none (last)")
    selection_fraction: float = shared_param(0.1, "share of each train split held out for selection "
                                                  "(select_on='train_holdout')", gt=0, lt=1)
    max_selection_examples: int | None = shared_param(500, "cap on the selection holdout per task (None: no cap)",
                                                      ge=1)
