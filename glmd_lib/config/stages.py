"""The experiment configs, one per notebook (field names = the notebook's ``parameters`` cell).

Each class lists its knobs with defaults and help text; ``profiles`` holds what the ``smoke``,
``demo``, ``gpu`` and ``paper`` profiles change (``paper``: the authors' settings where a field can express
them; README "Settings that differ from the paper" lists the rest). Explicit parameters always win over the
profile. Numbers declare their allowed range (``ge=1`` ...; see :mod:`glmd_lib.config.base`); task lists are checked against the
SuperGLUE task names here, so a wrong value fails before any notebook runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from glmd_lib.config.base import ConfigError, StageConfig, check_value, param
from glmd_lib.config.shared import (ALL_TASKS, COMPARE_STUDENT, CORE_TASKS, DEMO_STUDENT, DEMO_TEACHER,
                                    PAPER_SEQ_LEN, PAPER_STUDENT, PAPER_TASK_EPOCHS, SMOKE_TEACHER, SelectionSplit,
                                    StudentShape, TaskList, shared_param, superglue_dir_param, teacher_param)
from glmd_lib.superglue.data import TASKS

@dataclass
class OverviewConfig(StageConfig):
    stage = "overview"
    notebook = "00_overview"
    profiles = {
        "smoke": {"teacher": SMOKE_TEACHER, "speed_batches": 1},
        "demo": {"teacher": DEMO_TEACHER},
        "gpu": {"teacher": DEMO_TEACHER},
        "paper": {"teacher": DEMO_TEACHER},
    }
    teacher: str = teacher_param("teacher: built-in name, local folder or hub id")
    prompts: list[str] = param(["The capital of France is", "The opposite of hot is",
                                "Once upon a time, there was a"], "prompts whose next-word distribution is shown")
    top_k: int = param(10, "how many next words to show per prompt", ge=1)
    speed_batches: int = param(3, "batches (8 x 128 tokens) timed for the teacher's tokens/s", ge=1)


@dataclass
class FrequencyConfig(TaskList, StageConfig):
    stage = "frequency"
    allowed_tasks = TASKS
    empty_tasks_ok = True
    notebook = "01_word_frequency"
    profiles = {
        "smoke": {"teacher": SMOKE_TEACHER, "max_lines": 3000, "max_task_examples": 50},
        "demo": {"teacher": DEMO_TEACHER},
        "gpu": {"teacher": DEMO_TEACHER},
        "paper": {"teacher": DEMO_TEACHER},
    }
    teacher: str = teacher_param("whose tokenizer counts (built-in name, folder or hub id)")
    corpus: str | None = shared_param(None, "text file, folder of .txt files, or a saved `datasets` dataset "
                                            "(default: the shared Gutenberg train shards)")
    max_lines: int | None = param(None, "stop after this many lines of the corpus (None: all)", ge=1)
    superglue_dir: str | None = superglue_dir_param()
    tasks: list[str] = param(ALL_TASKS + ["AX-b", "AX-g"], "tasks whose texts are counted for comparison")
    max_task_examples: int | None = param(None, "examples per task split counted (None: all)", ge=1)
    batch_lines: int = param(1000, "lines per tokenizer batch", ge=1)


# the smoke profile's tiny teacher and student shape: vocab (02) and stage 1 (03) must agree on it
SMOKE_STUDENT = {"teacher": SMOKE_TEACHER, "student_layers": 2, "student_hidden": 64, "student_heads": 2}


@dataclass
class VocabConfig(StudentShape, StageConfig):
    stage = "vocab"
    notebook = "02_vocab_pruning"
    profiles = {
        "smoke": {**SMOKE_STUDENT, "mass_check_lines": 16},
        "demo": {"teacher": DEMO_TEACHER, **DEMO_STUDENT},
        "compare": COMPARE_STUDENT,
        "gpu": {"teacher": DEMO_TEACHER},
        "paper": {"teacher": DEMO_TEACHER, **PAPER_STUDENT, "keep_rate": 0.5, "substitute": "dot"},
    }
    teacher: str = teacher_param("teacher whose tokenizer and input embeddings define the map")
    keep_rate: float = param(0.5, "share of the vocabulary kept (paper: 0.5)", gt=0, le=1)
    keep_tokens: int | None = param(None, "absolute number of kept tokens (overrides keep_rate)", ge=1)
    multiple_of: int = param(64, "round the kept size up to a multiple of this", ge=1)
    substitute: Literal["unk", "dot", "cosine", "euclidean"] = param(
        "cosine", "substitute for a pruned token: UNK, or the most similar kept token by teacher input embeddings")
    protect: Literal["used", "all_added"] = param(
        "used", "special tokens always kept: those the tokenizer and the patterns use (bos, eos, pad, unk, mask, sep, "
                "cls), or every special token it declares (unused, image, chat ...: the old rule)")
    pruned_mass: Literal["renormalize", "substitute"] = param(
        "renormalize", "pruned probability mass in the targets of stages 1 and 2a (saved with the map): drop and "
                       "renormalise over the kept tokens (paper), or add each pruned token's to its substitute's "
                       "(the teacher then needs its full output layer; not with the top-k teacher cache)")
    mass_check_lines: int = param(64, "held-out lines used to measure the teacher's probability mass on kept "
                                      "tokens", ge=1)
    heldout: str | None = param(None, "held-out text for that check: a text file or folder (default: the shared "
                                      "corpus's valid.txt, else the SuperGLUE validation texts)")


@dataclass
class Stage1Config(StudentShape, StageConfig):
    stage = "stage1"
    notebook = "03_stage1_distillation"
    profiles = {
        "smoke": {**SMOKE_STUDENT, "steps": 6, "batch_size": 4, "seq_len": 32, "max_lines": 2000, "eval_batches": 2,
                  "checkpoint_every": 3, "warmup_steps": 1},
        # lr 2e-3 rather than 5e-4: on 150 steps it gave held-out KL 4.44 vs 5.31 and student perplexity
        # 3,099 vs 7,390 (same data, 2026-11-25); a short CPU stage 1 needs the larger steps.
        # One teacher pass over 960 blocks (the hidden-state cache), then 2.5 student epochs over them, at T = 1,
        # the student at the teacher's width with 4 of its layers copied (DEMO_STUDENT, init="teacher"), in bf16
        # where the CPU has bf16 units: held-out top-1 agreement 0.350 and perplexity 387 in 8 minutes (2026-12-03;
        # over 480 blocks, 5 epochs: 0.330 and 408, the student overfits them). T = 15 is the paper's (and the
        # paper profile's), as is the random start; README "Settings that differ from the paper" gives the measured
        # effect of both.
        "demo": {"teacher": DEMO_TEACHER, **DEMO_STUDENT, "steps": 300, "lr": 2e-3, "batch_size": 8, "seq_len": 128,
                 "eval_batches": 8, "teacher_bf16": True, "bf16": True, "teacher_cache": True, "max_blocks": 960,
                 "temperature": 1.0, "init": "teacher"},
        "gpu": {"teacher": DEMO_TEACHER, "steps": 100_000, "batch_size": 64, "seq_len": 512, "lr": 1e-4,
                "warmup_steps": 2000, "eval_batches": 200, "checkpoint_every": 2000},
        # demo's stage 1 at a third of the steps, the student in bf16 where the CPU has bf16 units (fp32 elsewhere), but
        # the 4 x 256 student over 480 blocks (the comparison's budget); every run of a comparison reads one teacher
        # cache (glmd compare shares it)
        "compare": {**COMPARE_STUDENT, "steps": 100, "max_blocks": 480},
        # global batch 64 x 512 = batch_size x grad_accum x processes: 16 x 4 on one GPU (pass grad_accum=1 on
        # four); warm-up 5% of the steps; cosine to 0.05 x lr over the first 80%; Adam (0.9, 0.98), eps 1e-6
        "paper": {"teacher": DEMO_TEACHER, **PAPER_STUDENT, "init": "random", "temperature": 15.0,
                  "steps": 100_000, "batch_size": 16, "grad_accum": 4, "seq_len": 512, "lr": 4e-4,
                  "weight_decay": 0.1, "warmup_steps": 5000, "lr_floor": 0.05, "decay_fraction": 0.8,
                  "adam_beta2": 0.98, "adam_eps": 1e-6, "eval_batches": 200, "checkpoint_every": 2000},
    }
    teacher: str = teacher_param("pre-trained teacher (built-in name, folder or hub id)")
    corpus: str | None = shared_param(None, "unlabeled training text (default: shared Gutenberg train shards)")
    valid_corpus: str | None = param(None, "held-out text (default: the shared corpus's valid.txt)")
    max_lines: int | None = param(None, "read at most this many corpus lines (None: as many as the steps need)", ge=1)
    max_blocks: int | None = param(None, "distinct training blocks (None: steps x batch, each seen once); fewer are "
                                         "seen for several epochs, and with teacher_cache the teacher runs once per "
                                         "block", ge=1)
    separator: str = param("auto", "what separates corpus lines in the blocks: auto (the teacher's pre-training document "
                                   "separator: <|endoftext|> if the tokenizer has it, else a newline when eos is a "
                                   "chat-template token, else eos), newline, eos, or one token of the tokenizer")
    use_vocab_map: bool = param(True, "use the compressed vocabulary from notebook 02 (False: full vocabulary)")
    init: Literal["random", "teacher"] = param(
        "random", "random (paper), or from the teacher: its layers where shapes allow, and for a narrower student its "
                  "kept embedding rows projected onto their top principal directions")
    train_embeddings: bool = param(True, "train the token embeddings (and a tied output layer); False keeps them as "
                                         "initialised, e.g. the teacher's projected rows (init='teacher')")
    temperature: float = param(15.0, "distillation temperature T (paper: 15); the loss is scaled by T^2", gt=0)
    teacher_topk: int | None = param(None, "truncate the teacher's distribution to its top-k tokens (None: full)", ge=1)
    loss: Literal["glmd", "kd", "ce", "tinybert", "minilm"] = param(
        "glmd", "glmd (T^2 KL, kept vocabulary) | kd (+ ce_weight x own CE) | ce (own next-token CE, no teacher) | "
                "tinybert (+ projected hidden MSE, attention KL) | minilm (+ last-layer attention, value-relation KL)")
    ce_weight: float = param(0.0, "loss='kd' only (> 0 there): weight of the student's own cross-entropy", ge=0)
    feature_weight: float = param(1.0, "tinybert/minilm: weight of the intermediate-layer terms", ge=0)
    embedding_dim: int | None = param(None, "ALBERT-style factorised embedding width E (None: plain)", ge=1)
    mlm_probability: float = param(0.15, "masked-LM teachers: share of positions masked", gt=0, lt=1)
    mlm_loss_on: Literal["masked", "all"] = param("masked", "masked-LM teachers: positions the loss covers")
    steps: int = param(150, "optimizer steps (0: no stage 1, the initialised student is saved)", ge=0)
    batch_size: int = param(8, "sequences per micro-batch", ge=1)
    grad_accum: int = param(1, "micro-batches per optimizer step", ge=1)
    seq_len: int = param(128, "tokens per training sequence", ge=2)
    lr: float = param(5e-4, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = param(0.01, "AdamW weight decay", ge=0)
    warmup_steps: int = param(10, "linear warm-up steps before cosine decay", ge=0)
    lr_floor: float = param(0.0, "the cosine decay ends at lr_floor x lr (paper: 0.05) ...", ge=0, le=1)
    decay_fraction: float = param(1.0, "... after this share of the steps, then stays there (paper: 0.8)", gt=0, le=1)
    adam_beta2: float = param(0.999, "AdamW beta2 (paper: 0.98; beta1 is 0.9)", gt=0, lt=1)
    adam_eps: float = param(1e-8, "AdamW epsilon (paper: 1e-6)", gt=0)
    max_grad_norm: float = param(1.0, "gradient clipping norm (0: no clipping)", ge=0)
    loss_chunk: int = param(256, "positions per chunk when computing the loss (bounds peak memory)", ge=1)
    checkpoint_every: int = param(50, "write a checkpoint every N steps", ge=1)
    keep_checkpoints: int = param(2, "keep the last K checkpoints", ge=1)
    resume: bool = param(True, "continue from the last checkpoint in <run_dir>/stage1 if there is one")
    teacher_cache: bool = param(False, "train from a precomputed teacher cache instead of running the teacher's "
                                       "transformer body each step (what is cached: cache_mode; tinybert/minilm also keep the teacher "
                                       "layers they read, or run live where they compare attention probabilities)")
    cache_mode: Literal["hidden", "topk"] = param(
        "hidden", "teacher cache contents: 'hidden' = the teacher's final hidden states (fp16), its output layer's "
                  "kept rows applied at train time: exact at every T; 'topk' = top-k logits + tail mean/std: "
                  "close at T=1, NOT faithful at T=15 (gradient cosine 0.27, docs/benchmarks.md, Stage 1)")
    cache_topk: int = param(64, "cache_mode='topk' only: top-k logits per position stored in the teacher cache", ge=1)
    cache_dir: str | None = param(None, "where teacher caches live (None: <run_dir>/stage1/teacher_cache, this run's "
                                        "own); a folder shared by several runs holds one cache per key, so runs over "
                                        "the same blocks with the same teacher pay for one teacher pass (glmd compare)")
    eval_batches: int = param(8, "held-out batches for KL / agreement / perplexity", ge=1)
    bf16: bool | None = param(None, "the student's forward/backward under bf16 autocast, fp32 master weights and "
                                    "fp32 loss (None: on CUDA only; False keeps CPU runs bitwise exact)")
    teacher_bf16: bool | None = param(None, "run the frozen teacher's forward under bf16 autocast (None: on CUDA "
                                            "only; True also on CPU, ~3x faster there; fp32 keeps runs bitwise exact)")

    def validate(self) -> None:
        super().validate()
        if (self.loss == "kd") != (self.ce_weight > 0):
            raise ConfigError(f"parameter 'ce_weight' = {self.ce_weight} with loss={self.loss!r}: the student's own "
                              f"cross-entropy is added only by loss='kd', which needs ce_weight > 0")
        if self.loss == "ce" and self.teacher_cache:
            raise ConfigError("loss='ce' runs no teacher, so there is no teacher cache to use; set teacher_cache=False")


@dataclass
class TeacherConfig(TaskList, SelectionSplit, StageConfig):
    stage = "teachers"
    notebook = "04_teacher_finetune"
    profiles = {
        "smoke": {"teacher": SMOKE_TEACHER, "max_train_examples": 16, "max_eval_examples": 16, "epochs": 1,
                  "batch_size": 4, "max_seq_len": 96, "train_layers": 1, "max_selection_examples": 16},
        "demo": {"teacher": DEMO_TEACHER, "max_train_examples": 400, "max_eval_examples": 120, "epochs": 1,
                 "lr": 2e-4, "train_layers": 8, "evals_per_epoch": 3, "max_seq_len": 160, "bf16": True,
                 "max_selection_examples": 120},
        "gpu": {"teacher": DEMO_TEACHER, "tasks": ALL_TASKS, "epochs": 10, "train_layers": 0, "lr": 1e-5},
        "paper": {"teacher": DEMO_TEACHER, "tasks": ALL_TASKS, "epochs": 10, "train_layers": 0, "lr": 1e-5,
                  "max_seq_len": PAPER_SEQ_LEN},
    }
    teacher: str = teacher_param("pre-trained model fine-tuned into one task teacher per task")
    tasks: list[str] = param(CORE_TASKS, "SuperGLUE tasks to fine-tune a teacher on")
    superglue_dir: str | None = superglue_dir_param()
    pattern_id: int = shared_param(0, "which cloze pattern of each task", ge=0)
    epochs: int = param(1, "passes over the (capped) train split", ge=1)
    batch_size: int = param(8, "examples per step", ge=1)
    lr: float = param(3e-5, "learning rate (AdamW)", gt=0)
    train_layers: int = param(4, "fine-tune only the top N transformer layers and the final norm (0: all)", ge=0)
    max_train_examples: int | None = param(None, "cap on train examples per task (None: all)", ge=1)
    max_eval_examples: int | None = param(None, "cap on dev examples per task (None: all)", ge=1)
    max_seq_len: int = param(256, "inputs longer than this are truncated from the passage side", ge=1)
    evals_per_epoch: int = param(1, "evaluations on the selection split per epoch; the best one is kept", ge=1)
    bf16: bool | None = param(None, "bf16 autocast (None: on CUDA only; True also on CPU, about 3x faster "
                                    "there; fp32 keeps runs bitwise repeatable)")


@dataclass
class Stage2Config(TaskList, SelectionSplit, StageConfig):
    stage = "stage2"
    notebook = "05_stage2_distillation"
    profiles = {
        # max_selection_examples as the task teachers' (a shared key): both hold out the same train examples
        "smoke": {"steps_2a": 2, "steps_2b": 2, "batch_size": 4, "max_train_examples": 8,
                  "max_eval_examples": 16, "eval_every": 0, "warmup_steps": 0, "max_selection_examples": 16},
        "demo": {"steps_2a": 30, "steps_2b": 30, "batch_size": 8, "lr": 5e-4, "max_train_examples": 200,
                 "max_eval_examples": 120, "eval_every": 10, "teacher_bf16": True, "max_selection_examples": 120},
        # demo's stage 2 at a third of the steps, on fewer inputs, selecting between the passes' ends only: a
        # comparison trains some 40 students (kd and finetune get steps_2a + steps_2b task steps: equal budget)
        "compare": {"steps_2a": 10, "steps_2b": 10, "eval_every": 0, "max_train_examples": 100,
                    "max_selection_examples": 40},
        "gpu": {"tasks": ALL_TASKS, "steps_2a": 5000, "steps_2b": 5000, "batch_size": 32, "lr": 1e-4,
                "warmup_steps": 200, "eval_every": 500},
        # lr 1e-5, linear decay after 10% warm-up, weight decay 0.1, the paper's epochs per task (each pass)
        "paper": {"tasks": ALL_TASKS, "task_epochs": PAPER_TASK_EPOCHS, "batch_size": 32, "lr": 1e-5,
                  "warmup_ratio": 0.1, "schedule": "linear", "weight_decay": 0.1, "eval_every": 500,
                  "max_seq_len": PAPER_SEQ_LEN, "temperature": 15.0},
    }
    tasks: list[str] = param(CORE_TASKS, "tasks to distil (each needs a task teacher from notebook 04)")
    superglue_dir: str | None = superglue_dir_param()
    pattern_id: int | None = shared_param(None, "cloze pattern (None: the one the task teacher was fine-tuned "
                                                "with)", ge=0)
    task_loss: Literal["glmd", "kd", "finetune", "tinybert"] = param("glmd", "glmd: 2a + 2b, no gold label in a "
        "loss; kd: pass 2b only, T^2 x soft task CE at kd_temperature + gold_weight x gold CE; finetune: 2b only, "
        "gold CE only; tinybert: 2a = vocabulary KL + feature_weight x (hidden MSE + attention KL) against the task "
        "teacher, 2b = T^2 x soft task CE at kd_temperature, no gold label")
    temperature: float = param(15.0, "temperature of the vocabulary KL in pass 2a (pass 2b uses T=1)", gt=0)
    kd_temperature: float = param(1.0, "task_loss='kd' or 'tinybert' (pass 2b): temperature T of the soft task "
                                       "targets", gt=0)
    gold_weight: float = param(1.0, "task_loss='kd': weight of the gold-label cross-entropy", ge=0)
    feature_weight: float = param(1.0, "task_loss='tinybert': weight of the intermediate-layer terms in pass 2a", ge=0)
    steps_2a: int = param(40, "optimizer steps of pass 2a (vocabulary KL on cloze inputs; 0 skips it)", ge=0)
    steps_2b: int = param(40, "optimizer steps of pass 2b, the task pass (task_loss; 0 skips it)", ge=0)
    task_epochs: dict[str, int] | None = param(
        None, "epochs per task, e.g. CB:50,COPA:50 (paper: CB, COPA, RTE 50; WiC 30; BoolQ 20; MultiRC 15; ReCoRD 5): "
              "a task named here trains epochs x ceil(inputs / batch_size) steps in each pass instead of "
              "steps_2a / steps_2b", ge=1)
    batch_size: int = param(8, "examples per step (COPA/ReCoRD: all candidate sequences of each)", ge=1)
    lr: float = param(2e-4, "peak learning rate (AdamW) of both passes", gt=0)
    weight_decay: float = param(0.01, "AdamW weight decay of both passes (paper: 0.1)", ge=0)
    schedule: Literal["cosine", "linear"] = param("cosine", "decay after the warm-up (paper: linear)")
    warmup_steps: int = param(2, "linear warm-up steps of each pass before the decay", ge=0)
    warmup_ratio: float | None = param(None, "warm-up as a share of each pass's steps (overrides warmup_steps; "
                                             "paper: 0.1)", ge=0, lt=1)
    loss_chunk: int = param(1024, "positions per chunk of the pass-2a loss (bounds peak memory)", ge=1)
    eval_every: int = param(10, "evaluation on the selection split every N steps of each pass (0: only after "
                                "each pass)", ge=0)
    add_unlabeled: bool = param(False, "also distil on the test split's (unlabeled) inputs")
    max_train_examples: int | None = param(None, "cap on train inputs per task (None: all)", ge=1)
    max_unlabeled_examples: int | None = param(None, "cap on added test-split inputs per task (None: all)", ge=1)
    max_eval_examples: int | None = param(None, "cap on dev examples per task when select_on='dev' (None: all)",
                                          ge=1)
    max_seq_len: int | None = param(None, "inputs longer than this are truncated from the passage side "
                                          "(None: as for the task teacher)", ge=1)
    teacher_bf16: bool | None = param(None, "run the frozen teacher under bf16 autocast (None: on CUDA only; "
                                            "True also on CPU, faster there; fp32 keeps runs bitwise exact)")
    resume: bool = param(True, "skip tasks already finished in <run_dir>/stage2 with the same settings")
    teacher_scores_cache: str | None = param(None, "folder where the task teachers' scores (2b) and hidden states (2a) "
                                                   "of training inputs are kept and reused by later runs (glmd "
                                                   "compare sets one; None: not kept)")

    def validate(self) -> None:
        super().validate()
        unknown = sorted(set(self.task_epochs or {}) - set(ALL_TASKS))
        if unknown:
            raise ConfigError(f"parameter 'task_epochs': unknown task(s) {unknown}; tasks are {list(ALL_TASKS)}")
        gold = self.task_loss == "finetune" or (self.task_loss == "kd" and self.gold_weight > 0)  # labels in a loss
        if (self.steps_2b == 0 and self.task_loss in ("kd", "finetune")) or self.steps_2a == self.steps_2b == 0:
            raise ConfigError(f"steps_2a={self.steps_2a}, steps_2b=0 with task_loss='{self.task_loss}': stage 2 would "
                              f"train nothing; give a pass steps (0 skips a pass; kd/finetune train only in pass 2b)")
        if gold and self.add_unlabeled:
            raise ConfigError(f"task_loss='{self.task_loss}' learns the gold label of every training input and the "
                              f"test split has none: set add_unlabeled=False")


@dataclass
class EvalConfig(TaskList, StageConfig):
    stage = "eval"
    allowed_tasks = TASKS
    notebook = "06_superglue_eval"
    profiles = {
        "smoke": {"teacher": SMOKE_TEACHER, "max_eval_examples": 16, "tasks": CORE_TASKS + ["AX-b", "AX-g"],
                  "max_seq_len": 96, "max_fidelity_examples": 24, "bootstrap_samples": 200},
        # the tasks with a student (and AX-g, RTE's diagnostic): on a CPU without bf16 the zero-shot teacher on
        # BoolQ, MultiRC, WiC, WSC and AX-b (10,000 dev examples) would take longer than the rest of the demo
        "demo": {"teacher": DEMO_TEACHER, "max_seq_len": 160, "bf16": True, "max_fidelity_examples": 300,
                 "tasks": CORE_TASKS + ["AX-g"]},
        "gpu": {"teacher": DEMO_TEACHER},
        "paper": {"teacher": DEMO_TEACHER, "max_seq_len": PAPER_SEQ_LEN},
        # every dev example of CB, COPA and RTE (the compare's tasks); fidelity on fewer unlabeled inputs
        "compare": {"max_fidelity_examples": 100},
    }
    teacher: str = teacher_param("the pre-trained teacher, evaluated zero-shot")
    tasks: list[str] = param(CORE_TASKS + ["BoolQ", "WiC", "WSC", "MultiRC", "AX-b", "AX-g"],
                             "tasks evaluated (dev splits; AX-b/AX-g with the RTE models)")
    models: list[Literal["zero_shot", "teachers", "students"]] = param(["zero_shot", "teachers", "students"],
                              "which models: zero_shot, teachers (notebook 04), students (notebook 05)")
    superglue_dir: str | None = superglue_dir_param()
    max_eval_examples: int | None = param(None, "cap on dev examples per task for model scores (None: all)", ge=1)
    batch_size: int = param(16, "examples per forward pass (batched by length)", ge=1)
    write_test_predictions: bool = param(False, "also write test-split predictions in the leaderboard format")
    pattern_id: int = shared_param(0, "which cloze pattern of each task (notebook 06: the zero-shot teacher's; task "
                                      "teachers and students are scored with the pattern they were trained with)",
                                   ge=0)
    max_seq_len: int = param(256, "inputs longer than this are truncated from the passage side", ge=1)
    bf16: bool | None = param(None, "bf16 autocast (None: on CUDA only; True also on CPU, about 3x faster "
                                    "there; fp32 keeps runs bitwise repeatable)")
    max_fidelity_examples: int | None = param(1000, "cap on the unlabeled dev + test inputs per task on which student "
                                                    "and task teacher are compared (None: all); one sample for every seed", ge=1)
    bootstrap_samples: int = param(1000, "bootstrap resamples behind every interval", ge=10)
    show_errors: int = param(3, "examples each model gets wrong, shown per task", ge=0)
    prediction_cache: str | None = param(None, "folder where the frozen teachers' predictions are kept and reused "
                                               "(glmd compare: one for all its runs; None: not kept)")


@dataclass
class ReportConfig(StageConfig):
    stage = "report"
    notebook = "07_method_comparison"
    profiles = {"smoke": {}, "demo": {}, "gpu": {}, "paper": {}}
    title: str = param("GLMD Workbench run", "heading of report.md")
    seed_runs: list[str] = param([], "further run directories of the same experiment with other seeds, for mean ± sd "
                                     "(the run's own seed-<k>/ sub-directories are found without this)")


# the eight methods (glmd_lib.distill.methods registers them and the ablations)
_MAIN_METHODS = ["no-kd", "kd", "tinybert", "minilm", "glmd-vc", "glmd", "glmd+al", "dim-reduction"]
# glmd-sub-cosine is not among them: cosine is the default substitute, so that row is glmd itself
_ABLATIONS = ["glmd-no-stage1", "glmd-no-2a", "glmd-no-2b", "glmd-t1", "glmd-sub-unk", "glmd-sub-dot",
              "glmd-pruned-substitute"]


@dataclass
class CompareConfig(TaskList, StageConfig):
    """``glmd compare`` and notebook 08 (issue #13); every other key of a compare run reaches each run's notebooks."""
    stage = "compare"
    notebook = "08_method_comparison"
    profiles = {
        "smoke": {"methods": ["glmd", "kd"], "tasks": ["CB"], "bootstrap_samples": 200},
        "demo": {"methods": _MAIN_METHODS, "tasks": ["CB", "COPA", "RTE"], "seeds": [0, 1, 2],
                 "keep_rates": [1.0, 0.5, 0.25, 0.125]},
        "gpu": {"methods": _MAIN_METHODS, "tasks": ALL_TASKS, "seeds": [0, 1, 2], "keep_rates": [1.0, 0.5, 0.25, 0.125]},
        "paper": {"methods": _MAIN_METHODS, "tasks": ALL_TASKS, "seeds": [0, 1, 2]},
        # the budget: the eight methods x 3 seeds on CB, COPA, RTE; ablations and sweep with one seed
        "compare": {"ablations": _ABLATIONS},
    }
    methods: list[str] = param(["glmd", "kd"], "registered methods to compare (glmd_lib.distill.methods.METHODS)")
    ablations: list[str] | None = param(None, "more registered methods (GLMD's ablations), run with the first seed "
                                              "only (None or []: none)")
    # each element is checked against the range (validate); gt=-1, not ge=0: a bare -1 is no list to range-check
    seeds: list[int] = param([0], "seeds: each method is trained and evaluated once per seed (03-06)", gt=-1)
    keep_rates: list[float] | None = param(None, "sweep of glmd's kept-vocabulary rate, one run per point with the "
                                                 "first seed (None or []: no sweep)", gt=0, le=1)
    tasks: list[str] = param(["CB", "COPA", "RTE"], "tasks of every run (task teachers, stage 2, evaluation)")
    bootstrap_samples: int = param(1000, "bootstrap resamples of the paired differences against glmd", ge=10)

    def validate(self) -> None:
        super().validate()
        for f in dataclasses.fields(self):
            for v in (getattr(self, f.name) or []) if f.name in ("seeds", "keep_rates") else []:
                check_value(f, v)
        if not self.methods or not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"CompareConfig: methods {self.methods} and seeds {self.seeds} must be non-empty, "
                              f"seeds distinct")
