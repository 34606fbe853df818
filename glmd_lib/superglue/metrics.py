"""The official SuperGLUE metrics, on predicted label values and the examples they belong to.

* accuracy: BoolQ, COPA, RTE, WiC, WSC; CB also macro-F1, averaged over CB's three fixed classes
  (entailment, contradiction, neutral) as the leaderboard does: a class absent from both the gold labels and
  the predictions counts 0, so a small or resampled dev set cannot inflate the score by dropping a class.
* MultiRC: F1 over all answer options (``f1a``, positive class 1) and exact match per question
  (``em``: every answer option of the question right).
* ReCoRD: token F1 and exact match, each the max over the gold answers, with SQuAD normalisation
  (lower case, no punctuation, no articles, single spaces); averaged over queries.
* AX-b: Matthews correlation (0 when undefined, e.g. a constant prediction).
* AX-g: gender parity (share of pairs of consecutive examples predicted alike) and accuracy.

``task_score`` averages a task's metrics (two-metric tasks first); ``overall_score`` is the mean of the
task scores over the eight main tasks (the diagnostics are reported, not averaged, as on the leaderboard).
Metric values are fractions in [0, 1] (MCC in [-1, 1]). An empty prediction list gives NaN.
"""
from __future__ import annotations

import collections
import math
import re
import string
from typing import Any, Sequence

from glmd_lib.superglue.data import DIAGNOSTICS, LABELS, Example

METRICS = {
    "BoolQ": ("accuracy",), "CB": ("accuracy", "f1"), "COPA": ("accuracy",), "MultiRC": ("f1a", "em"),
    "ReCoRD": ("f1", "em"), "RTE": ("accuracy",), "WiC": ("accuracy",), "WSC": ("accuracy",),
    "AX-b": ("mcc",), "AX-g": ("parity", "accuracy"),
}


def accuracy(preds: Sequence[Any], golds: Sequence[Any]) -> float:
    if not golds:
        return math.nan
    return sum(p == g for p, g in zip(preds, golds)) / len(golds)


def f1_binary(preds: Sequence[Any], golds: Sequence[Any], positive: Any = 1) -> float:
    tp = sum(p == positive and g == positive for p, g in zip(preds, golds))
    fp = sum(p == positive and g != positive for p, g in zip(preds, golds))
    fn = sum(p != positive and g == positive for p, g in zip(preds, golds))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_macro(preds: Sequence[Any], golds: Sequence[Any], classes: Sequence[Any]) -> float:
    """Mean of the per-class F1 over the fixed ``classes`` (a class nobody predicts or has scores 0)."""
    if not golds:
        return math.nan
    return sum(f1_binary(preds, golds, c) for c in classes) / len(classes)


def matthews_corr(preds: Sequence[Any], golds: Sequence[Any], positive: Any = "entailment") -> float:
    if not golds:
        return math.nan
    tp = sum(p == positive and g == positive for p, g in zip(preds, golds))
    tn = sum(p != positive and g != positive for p, g in zip(preds, golds))
    fp = sum(p == positive and g != positive for p, g in zip(preds, golds))
    fn = sum(p != positive and g == positive for p, g in zip(preds, golds))
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else (tp * tn - fp * fn) / denom


def normalize_answer(s: str) -> str:
    """SQuAD / ReCoRD normalisation: lower case, drop punctuation and articles, collapse spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def record_metrics(preds: Sequence[str | None], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    if not golds:
        return {"f1": math.nan, "em": math.nan}
    f1s, ems = [], []
    for p, answers in zip(preds, golds):
        p = p or ""
        f1s.append(max((token_f1(p, a) for a in answers), default=0.0))
        ems.append(max((exact_match(p, a) for a in answers), default=0.0))
    return {"f1": sum(f1s) / len(f1s), "em": sum(ems) / len(ems)}


def multirc_metrics(preds: Sequence[int], examples: Sequence[Example]) -> dict[str, float]:
    golds = [ex.label for ex in examples]
    if not golds:
        return {"f1a": math.nan, "em": math.nan}
    by_q: dict[Any, bool] = {}
    for p, ex in zip(preds, examples):
        by_q[ex.group_key] = by_q.get(ex.group_key, True) and p == ex.label
    return {"f1a": f1_binary(preds, golds, 1), "em": sum(by_q.values()) / len(by_q)}


def gender_parity(preds: Sequence[Any], examples: Sequence[Example]) -> float:
    """Share of AX-g pairs (``group``) whose two predictions agree."""
    pairs: dict[Any, list[Any]] = collections.defaultdict(list)
    for p, ex in zip(preds, examples):
        pairs[ex.group_key].append(p)
    if not pairs:
        return math.nan
    return sum(len(set(map(repr, v))) == 1 for v in pairs.values()) / len(pairs)


def task_metrics(task: str, predictions: Sequence[Any], examples: Sequence[Example]) -> dict[str, float]:
    """The official metrics of ``task`` for ``predictions`` (label values) of labelled ``examples``."""
    if len(predictions) != len(examples):
        raise ValueError(f"{task}: {len(predictions)} predictions for {len(examples)} examples")
    if any(ex.label is None for ex in examples):
        raise ValueError(f"{task}: examples without labels (a test split?) cannot be scored")
    golds = [ex.label for ex in examples]
    if task == "CB":
        return {"accuracy": accuracy(predictions, golds), "f1": f1_macro(predictions, golds, LABELS["CB"])}
    if task == "MultiRC":
        return multirc_metrics(predictions, examples)
    if task == "ReCoRD":
        return record_metrics(predictions, golds)
    if task == "AX-b":
        return {"mcc": matthews_corr(predictions, golds)}
    if task == "AX-g":
        return {"parity": gender_parity(predictions, examples), "accuracy": accuracy(predictions, golds)}
    if task in METRICS:
        return {"accuracy": accuracy(predictions, golds)}
    raise ValueError(f"unknown task {task!r}")


def task_score(task: str, metrics: dict[str, float]) -> float:
    """One number per task: the mean of its metrics (CB: acc & F1; MultiRC: F1a & EM; ReCoRD: F1 & EM)."""
    names = METRICS[task]
    missing = [n for n in names if n not in metrics]
    if missing:
        raise ValueError(f"{task}: metrics {missing} missing from {sorted(metrics)}")
    return sum(metrics[n] for n in names) / len(names)


def overall_score(per_task_scores: dict[str, float], include_diagnostics: bool = False) -> float:
    """Mean of the task scores (diagnostics excluded unless asked for). NaN when there are none."""
    vals = [v for t, v in per_task_scores.items() if include_diagnostics or t not in DIAGNOSTICS]
    return sum(vals) / len(vals) if vals else math.nan


def majority_label(examples: Sequence[Example]) -> Any:
    """Most frequent label (ties: the first in label order of appearance); MultiRC/COPA work the same."""
    counts = collections.Counter(repr(ex.label) for ex in examples)
    best = max(counts.values())
    for ex in examples:
        if counts[repr(ex.label)] == best:
            return ex.label
    return None
