"""Readers for the SuperGLUE tasks in the official layout.

Layout (as in the official zips, GLM/GLMD, jiant and PET)::

    <data_dir>/<TASK>/{train,val,test}.jsonl      BoolQ CB COPA MultiRC ReCoRD RTE WiC WSC
    <data_dir>/AX-b/AX-b.jsonl, AX-g/AX-g.jsonl   the diagnostics (labelled, "test" only)

Every reader returns a flat list of :class:`Example`, one per *scored decision*:

* MultiRC: one example per answer option (a binary "is this answer correct?" decision, as PET and
  GLM cast it); ``idx`` is ``(paragraph, question, answer)`` so metrics can regroup by question.
* ReCoRD: one example per query; the candidates are the passage's distinct entity strings and the
  label is the list of gold answer strings.
* AX-g: ``group`` is the pair number; a pair is two *consecutive* lines (``pair_id`` differs within
  a pair, so it cannot be used to pair them).

Labels keep their official values (``"entailment"``, ``True``, ``0`` ...); :data:`LABELS` gives each
classification task's label order, which is also the order of the verbalizer in ``patterns.py``.
Test files carry no labels (``label is None``). Anything malformed raises :class:`DataError` naming
the file, the line and the field.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from glmd_lib.data.paths import resolve_superglue_dir

TASKS = ("BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC", "AX-b", "AX-g")
MAIN_TASKS = TASKS[:8]
DIAGNOSTICS = ("AX-b", "AX-g")
SPLITS = ("train", "val", "test")

# label order = verbalizer order; tasks without a fixed label set (COPA: choice index, ReCoRD: strings) are absent
LABELS: dict[str, list[Any]] = {
    "BoolQ": [False, True],
    "CB": ["entailment", "contradiction", "neutral"],
    "RTE": ["entailment", "not_entailment"],
    "AX-b": ["entailment", "not_entailment"],
    "AX-g": ["entailment", "not_entailment"],
    "WiC": [False, True],
    "WSC": [False, True],
    "MultiRC": [0, 1],
    "COPA": [0, 1],
}

# fields every record must carry (labels are checked separately)
REQUIRED = {
    "BoolQ": ("question", "passage", "idx"),
    "CB": ("premise", "hypothesis", "idx"),
    "RTE": ("premise", "hypothesis", "idx"),
    "AX-b": ("sentence1", "sentence2", "idx"),
    "AX-g": ("premise", "hypothesis", "idx"),
    "COPA": ("premise", "choice1", "choice2", "question", "idx"),
    "WiC": ("word", "sentence1", "sentence2", "idx"),
    "WSC": ("text", "target", "idx"),
    "MultiRC": ("passage", "idx"),
    "ReCoRD": ("passage", "qas", "idx"),
}

GET_DATA_HINT = ("Get the data with glmd_lib.superglue.download.download_superglue(<dir>) on a machine with "
                 "internet (or unzip the official archives from https://super.gluebenchmark.com/tasks there), "
                 "then pass superglue_dir=<dir> or set GLMD_DATA=<dir>.")


class DataError(ValueError):
    """A SuperGLUE file is malformed; the message names file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field = Path(path), line, field
        where = f"{path}" + (f", line {line}" if line is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}")


class MissingDataError(FileNotFoundError):
    """A task or split is not on disk; the message says which path was tried and how to get the data."""


@dataclass
class Example:
    """One scored decision. ``fields`` holds the raw record's fields (for MultiRC/ReCoRD: the flattened ones)."""

    task: str
    idx: Any
    label: Any
    fields: dict[str, Any]
    group: Any = None  # MultiRC: (paragraph, question); AX-g: pair number; else None (= idx)
    candidates: list[str] = field(default_factory=list)  # ReCoRD entity strings

    def __getattr__(self, name: str) -> Any:  # ex.premise, ex.question ... read from fields
        fields = self.__dict__.get("fields")
        if fields is not None and name in fields:
            return fields[name]
        raise AttributeError(f"{type(self).__name__} of {self.__dict__.get('task')} has no field {name!r}")

    @property
    def group_key(self) -> Any:
        return self.idx if self.group is None else self.group


def task_path(task: str, split: str, data_dir: str | Path | None = None) -> Path:
    """The file of ``task``/``split``; diagnostics live in ``AX-b/AX-b.jsonl`` and only have a test split."""
    if task not in TASKS:
        raise ValueError(f"unknown SuperGLUE task {task!r}; known: {list(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLITS)}")
    root = resolve_superglue_dir(data_dir)
    if task in DIAGNOSTICS:
        if split != "test":
            raise ValueError(f"{task} is a diagnostic set: it has only the 'test' split (asked for {split!r})")
        return root / task / f"{task}.jsonl"
    return root / task / f"{split}.jsonl"


def task_splits(task: str) -> tuple[str, ...]:
    """The splits ``task`` has on disk (the official archive's files): the diagnostics only ``test``."""
    if task not in TASKS:
        raise ValueError(f"unknown SuperGLUE task {task!r}; known: {list(TASKS)}")
    return ("test",) if task in DIAGNOSTICS else SPLITS


def has_split(task: str, split: str, data_dir: str | Path | None = None) -> bool:
    try:
        return task_path(task, split, data_dir).exists()
    except ValueError:
        return False


def _req(rec: dict, key: str, path: Path, line: int, types: type | tuple = object, where: str = "") -> Any:
    name = f"{where}{key}"
    if not isinstance(rec, dict) or key not in rec:
        raise DataError(path, line, name, "missing field")
    v = rec[key]
    if not isinstance(v, types) or isinstance(v, bool) and types in (int, (int,)):
        raise DataError(path, line, name, f"expected {getattr(types, '__name__', types)}, got {v!r}")
    return v


def _label(task: str, rec: dict, path: Path, line: int, is_test: bool) -> Any:
    if "label" not in rec:
        if is_test:
            return None
        raise DataError(path, line, "label", "missing field")
    v = rec["label"]
    allowed = LABELS[task]
    # bool is an int subclass: compare types too, so True is not accepted for COPA's 1 and "true" not for True
    if not any(v == a and type(v) is type(a) for a in allowed):
        raise DataError(path, line, "label", f"unknown label {v!r} for {task} (expected one of {allowed})")
    return v


# the text fields each single-decision task must carry as strings
TEXT_FIELDS = {"BoolQ": ("question", "passage"), "CB": ("premise", "hypothesis"), "RTE": ("premise", "hypothesis"),
               "AX-b": ("sentence1", "sentence2"), "AX-g": ("premise", "hypothesis"),
               "COPA": ("premise", "choice1", "choice2"), "WiC": ("word", "sentence1", "sentence2")}


def _parse_record(task: str, rec: Any, path: Path, line: int, is_test: bool) -> list[Example]:
    """The examples of one jsonl record (MultiRC: one per answer option; ReCoRD: one per query)."""
    if not isinstance(rec, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(rec).__name__}")
    for key in REQUIRED[task]:
        _req(rec, key, path, line)
    idx = rec["idx"]
    if task == "AX-b" and isinstance(idx, str) and idx.strip().isdigit():
        idx = int(idx)  # AX-b's idx is a string in the official file; the submission wants the number
    if task == "MultiRC":
        return _parse_multirc(rec, idx, path, line, is_test)
    if task == "ReCoRD":
        return _parse_record_task(rec, path, line, is_test)
    for key in TEXT_FIELDS.get(task, ()):
        _req(rec, key, path, line, str)
    if task == "COPA" and rec["question"] not in ("cause", "effect"):
        raise DataError(path, line, "question", f"expected 'cause' or 'effect', got {rec['question']!r}")
    if task == "WSC":
        _req(rec, "text", path, line, str)
        tgt = _req(rec, "target", path, line, dict)
        for key in ("span1_text", "span2_text"):
            _req(tgt, key, path, line, str, "target.")
        _req(tgt, "span2_index", path, line, int, "target.")
    fields = {k: v for k, v in rec.items() if k not in ("idx", "label")}
    return [Example(task, idx, _label(task, rec, path, line, is_test), fields)]


def _parse_multirc(rec: dict, idx: Any, path: Path, line: int, is_test: bool) -> list[Example]:
    """One binary example per answer option, ``idx = (paragraph, question, answer)``, grouped by question."""
    passage = _req(rec, "passage", path, line, dict)
    text = _req(passage, "text", path, line, str, "passage.")
    out = []
    for qi, q in enumerate(_req(passage, "questions", path, line, list, "passage.")):
        w = f"passage.questions[{qi}]."
        question = _req(q, "question", path, line, str, w)
        q_idx = _req(q, "idx", path, line, int, w)
        for ai, a in enumerate(_req(q, "answers", path, line, list, w)):
            wa = f"{w}answers[{ai}]."
            answer = _req(a, "text", path, line, str, wa)
            a_idx = _req(a, "idx", path, line, int, wa)
            if "label" in a:
                label = a["label"]
                if label not in (0, 1) or isinstance(label, bool):
                    raise DataError(path, line, f"{wa}label", f"unknown label {label!r} for MultiRC (0 or 1)")
            elif is_test:
                label = None
            else:
                raise DataError(path, line, f"{wa}label", "missing field")
            out.append(Example("MultiRC", (idx, q_idx, a_idx), label,
                               {"paragraph": text, "question": question, "answer": answer,
                                "first_of_passage": not out},
                               group=(idx, q_idx)))
    return out


def _record_entities(passage: dict, text: str, path: Path, line: int) -> list[str]:
    """ReCoRD's candidates: the passage's distinct entity strings, in order of first mention."""
    cands: list[str] = []
    for ei, ent in enumerate(_req(passage, "entities", path, line, list, "passage.")):
        s = _req(ent, "start", path, line, int, f"passage.entities[{ei}].")
        e = _req(ent, "end", path, line, int, f"passage.entities[{ei}].")
        if not 0 <= s <= e < len(text):
            raise DataError(path, line, f"passage.entities[{ei}]", f"span {s}..{e} outside the passage")
        name = text[s:e + 1]  # official spans are end-inclusive
        if name not in cands:
            cands.append(name)
    return cands


def _parse_record_task(rec: dict, path: Path, line: int, is_test: bool) -> list[Example]:
    """ReCoRD: one example per query; the label is the list of gold answer strings."""
    passage = _req(rec, "passage", path, line, dict)
    text = _req(passage, "text", path, line, str, "passage.")
    cands = _record_entities(passage, text, path, line)
    out = []
    for qi, qa in enumerate(_req(rec, "qas", path, line, list)):
        w = f"qas[{qi}]."
        query = _req(qa, "query", path, line, str, w)
        if "@placeholder" not in query:
            raise DataError(path, line, f"{w}query", "no @placeholder in the query")
        q_idx = _req(qa, "idx", path, line, int, w)
        if "answers" in qa:
            answers = [_req(a, "text", path, line, str, f"{w}answers[{ai}].")
                       for ai, a in enumerate(_req(qa, "answers", path, line, list, w))]
            if not answers and not is_test:
                raise DataError(path, line, f"{w}answers", "no gold answer")
        elif is_test:
            answers = None
        else:
            raise DataError(path, line, f"{w}answers", "missing field")
        out.append(Example("ReCoRD", q_idx, answers, {"passage": text, "query": query, "first_of_passage": not out},
                           candidates=list(cands)))
    return out


def _fix_hint(task: str) -> str:
    return (f"re-download the task (glmd_lib.superglue.download.download_task({task!r}, <data dir>, "
            f"overwrite=True)) or restore the file from the official archive")


def _records(task: str, path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` of each non-blank line; bad bytes and bad JSON raise a DataError.

    Read as bytes and decoded line by line, so that a stray non-UTF-8 byte is reported with its line
    (a text-mode read fails with a bare UnicodeDecodeError that names neither the file nor the line).
    """
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, line_no, None,
                                f"not valid UTF-8 ({e.reason} at byte {e.start} of the line); the official files "
                                f"are UTF-8: convert the file to UTF-8 or {_fix_hint(task)}") from None
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, line_no, None, f"invalid JSON ({e.msg} at column {e.colno})") from e


def read_file(task: str, path: Path | str, is_test: bool = False) -> list[Example]:
    """Parse one jsonl file of ``task`` (lines may lack a final newline; blank lines are skipped).

    Refused, naming the file: an empty file (no official split is empty; an empty one is a cut-short
    copy that would otherwise surface much later as an empty plot), and the same record ``idx`` twice
    (a record read twice is scored twice). Duplicates are checked per *record* (MultiRC: paragraph,
    ReCoRD: passage), before flattening.
    """
    path = Path(path)
    out: list[Example] = []
    first_line: dict[str, int] = {}  # record idx (as JSON) -> line it was first seen on
    for line_no, rec in _records(task, path):
        exs = _parse_record(task, rec, path, line_no, is_test)  # validates that rec is an object with an idx
        key = json.dumps(rec["idx"], sort_keys=True)
        if key in first_line:
            raise DataError(path, line_no, "idx", f"duplicate record idx {rec['idx']!r}, already on line "
                            f"{first_line[key]}; remove one of the two lines or {_fix_hint(task)}")
        first_line[key] = line_no
        if task == "AX-g":
            for ex in exs:
                ex.group = len(out) // 2  # pairs are consecutive lines
        out.extend(exs)
    if not out:
        what = "no records (the file is empty)" if not first_line else f"{len(first_line)} records but no examples"
        raise DataError(path, None, None, f"{what}; no SuperGLUE split is empty: the copy was probably cut "
                                          f"short -- {_fix_hint(task)}")
    if task == "AX-g" and len(out) % 2:
        raise DataError(path, None, None, f"AX-g needs pairs of consecutive lines; found {len(out)} records")
    return out


def read_split(task: str, split: str, data_dir: str | Path | None = None,
               max_examples: int | None = None) -> list[Example]:
    """Examples of ``task``/``split`` (``split`` in train/val/test; AX-b/AX-g only ``test``).

    ``max_examples`` keeps the first examples, cut at a group boundary (whole MultiRC questions, whole
    AX-g pairs) so that per-question and per-pair metrics stay defined; use :func:`subsample` for a
    random subset.
    """
    path = task_path(task, split, data_dir)
    if not path.exists():
        root = resolve_superglue_dir(data_dir)
        what = "the SuperGLUE folder" if not root.exists() else f"{task} {split}"
        source = "the explicit parameter" if data_dir else "$GLMD_DATA / ../shared/data/superglue / data/superglue"
        raise MissingDataError(f"{what} not found: tried {path} (data_dir resolved from {source}). " + GET_DATA_HINT)
    exs = read_file(task, path, is_test=(split == "test" and task not in DIAGNOSTICS))
    if max_examples is not None:
        exs = _first_groups(exs, max_examples)
    return exs


def _groups(exs: list[Example]) -> list[list[Example]]:
    groups: dict[Any, list[Example]] = {}
    for ex in exs:
        groups.setdefault(ex.group_key, []).append(ex)
    return list(groups.values())


def _first_groups(exs: list[Example], n: int) -> list[Example]:
    out: list[Example] = []
    for g in _groups(exs):
        if out and len(out) + len(g) > n:
            break
        out.extend(g)
    return out


def subsample(examples: list[Example], n: int | None, seed: int = 0) -> list[Example]:
    """A seeded random subset of about ``n`` examples made of whole groups, in the original order.

    Fine-tuning (notebook 04) and evaluation (06) use the same function and seed, so a capped dev
    set is the same subset everywhere.
    """
    if n is None or n >= len(examples):
        return list(examples)
    groups = _groups(examples)
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    chosen, count = set(), 0
    for gi in order:
        if chosen and count + len(groups[gi]) > n:
            continue
        chosen.add(gi)
        count += len(groups[gi])
        if count >= n:
            break
    return [ex for gi in sorted(chosen) for ex in groups[gi]]


def example_texts(ex: Example) -> list[str]:
    """The natural-language texts of an example (for word counts and vocabulary statistics)."""
    f = ex.fields
    t = ex.task
    if t in ("CB", "RTE", "AX-g"):
        return [f["premise"], f["hypothesis"]]
    if t == "AX-b":
        return [f["sentence1"], f["sentence2"]]
    if t == "BoolQ":
        return [f["passage"], f["question"]]
    if t == "COPA":
        return [f["premise"], f["choice1"], f["choice2"]]
    if t == "WiC":
        return [f["sentence1"], f["sentence2"]]
    if t == "WSC":
        return [f["text"]]
    # MultiRC / ReCoRD repeat the passage in every flattened example: count it once, with the first
    if t == "MultiRC":
        return ([f["paragraph"]] if f.get("first_of_passage") else []) + [f["question"], f["answer"]]
    if t == "ReCoRD":
        return ([f["passage"]] if f.get("first_of_passage") else []) + [f["query"].replace("@placeholder", "")]
    raise ValueError(f"unknown task {t!r}")
