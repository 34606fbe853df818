"""Uncertainty on every score: percentile-bootstrap intervals, paired differences, mean ± sd over seeds.

Why a bootstrap: SuperGLUE dev splits are small (CB 56, COPA 100, RTE 277 examples), so a difference of a
few points between two models is often noise. Every reported score therefore carries its number of examples
and a 95% interval, and two models are called different only where the *paired* interval of their
difference (both scored on the same resampled examples) excludes zero.

Resampling units follow the metrics' own units: MultiRC answers are resampled by question (its exact match is
per question), AX-g examples by sentence pair (gender parity is per pair); every other task by example
(``Example.group_key`` holds exactly this). Scores are recomputed with the official metric on each resample,
so F1, MCC and parity get honest intervals too, not a normal approximation. A unit drawn twice counts twice.

How, fast: every official metric is a function of sums over units (correct answers, true/false positives per
class, questions answered entirely right, pairs predicted alike ...). :func:`_unit_sums` computes those per
unit once; a resample is then a vector of how often each unit was drawn, and all resamples' sums are one
matrix product. 1,000 resamples of BoolQ's 3,270 dev examples take milliseconds instead of the minute the
metric functions would need when called per resample. ``tests/test_intervals.py`` checks that the sums give
exactly :func:`glmd_lib.superglue.metrics.task_metrics` on every task.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from glmd_lib.superglue.data import LABELS
from glmd_lib.superglue.metrics import METRICS, exact_match, token_f1

N_BOOT = 1000
ALPHA = 0.05
_BLOCK = 200  # resamples per matrix product (bounds memory on ReCoRD-sized sets)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% (``1 - alpha``) percentile-bootstrap interval over ``n`` units."""

    value: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def verdict(self, better: str = "A", worse: str = "B") -> str:
        """For a difference ``A - B``: which is better, or "not distinguishable"."""
        if not self.excludes_zero:
            return "not distinguishable"
        return f"{better} better" if self.value > 0 else f"{worse} better"

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


# --------------------------------------------------------------------------------------------
# resampling units and draws
# --------------------------------------------------------------------------------------------

def unit_index(examples: Sequence[Any]) -> tuple[np.ndarray, int]:
    """The resampling unit of each example (numbered by first appearance of its ``group_key``), and the count."""
    keys: dict[Any, int] = {}
    unit = [keys.setdefault(getattr(ex, "group_key", i), len(keys)) for i, ex in enumerate(examples)]
    return np.asarray(unit, dtype=np.int64), len(keys)


def _resamples(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_units]`` unit indices drawn with replacement (one fixed stream per seed)."""
    return np.random.default_rng(seed).integers(0, n_units, size=(n_boot, n_units))


def _draw_counts(draws: np.ndarray, n_units: int) -> np.ndarray:
    """How often each unit was drawn in each resample: ``[rows, n_units]``."""
    rows = draws.shape[0]
    flat = (np.arange(rows)[:, None] * n_units + draws).ravel()
    return np.bincount(flat, minlength=rows * n_units).reshape(rows, n_units).astype(np.float64)


def resampled_sums(sums: dict[str, np.ndarray], n_units: int, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Every per-unit column of ``sums`` summed over each of ``n_boot`` resamples: ``{name: [n_boot]}``."""
    names = list(sums)
    table = np.stack([sums[k] for k in names], axis=1)  # [n_units, columns]
    draws = _resamples(n_units, n_boot, seed)
    out = np.concatenate([_draw_counts(draws[i:i + _BLOCK], n_units) @ table for i in range(0, n_boot, _BLOCK)])
    return {k: out[:, j] for j, k in enumerate(names)}


def totals(sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sums over all units (the sample itself, every unit drawn once)."""
    return {k: np.asarray(v.sum()) for k, v in sums.items()}


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# the official metrics as functions of per-unit sums
# --------------------------------------------------------------------------------------------

def _per_unit(values: Sequence[float], unit: np.ndarray, n_units: int) -> np.ndarray:
    out = np.zeros(n_units)
    np.add.at(out, unit, np.asarray(values, dtype=np.float64))
    return out


def _counts(preds: Sequence[Any], golds: Sequence[Any], positive: Any) -> dict[str, list[bool]]:
    return {"tp": [p == positive and g == positive for p, g in zip(preds, golds)],
            "fp": [p == positive and g != positive for p, g in zip(preds, golds)],
            "fn": [p != positive and g == positive for p, g in zip(preds, golds)],
            "tn": [p != positive and g != positive for p, g in zip(preds, golds)]}


def _unit_columns(task: str, preds: Sequence[Any], golds: Sequence[Any], unit: np.ndarray,
                  n_units: int) -> dict[str, Any]:
    """Per-example columns (lists) and per-unit ones (arrays of length ``n_units``) a task's metrics need."""
    cols: dict[str, Any] = {"n": [1.0] * len(golds), "correct": [p == g for p, g in zip(preds, golds)]}
    if task == "ReCoRD":
        cols["f1"] = [max((token_f1(p or "", a) for a in g), default=0.0) for p, g in zip(preds, golds)]
        cols["em"] = [max((exact_match(p or "", a) for a in g), default=0.0) for p, g in zip(preds, golds)]
    elif task == "CB":
        for c in LABELS["CB"]:
            cols.update({f"{k}_{c}": v for k, v in _counts(preds, golds, c).items()})
    elif task in ("MultiRC", "AX-b"):
        cols.update(_counts(preds, golds, 1 if task == "MultiRC" else "entailment"))
    if task in ("MultiRC", "AX-g"):
        wrong = _per_unit([not c for c in cols["correct"]], unit, n_units)
        seen: dict[int, set] = {}
        for u, p in zip(unit.tolist(), preds):
            seen.setdefault(u, set()).add(repr(p))
        cols["unit_right"] = (wrong == 0).astype(np.float64)
        cols["unit_same"] = np.asarray([len(seen[u]) == 1 for u in range(n_units)], dtype=np.float64)
        cols["units"] = np.ones(n_units)
    return cols


def _unit_sums(task: str, predictions: Sequence[Any], examples: Sequence[Any]) -> tuple[dict[str, np.ndarray], int]:
    """``({column: per-unit sum}, n_units)`` of ``predictions`` on labelled ``examples``."""
    if len(predictions) != len(examples):
        raise ValueError(f"{task}: {len(predictions)} predictions for {len(examples)} examples")
    unit, n_units = unit_index(examples)
    cols = _unit_columns(task, predictions, [ex.label for ex in examples], unit, n_units)
    return {k: (v if isinstance(v, np.ndarray) else _per_unit(v, unit, n_units)) for k, v in cols.items()}, n_units


def _ratio(num: np.ndarray, den: np.ndarray, empty: float = math.nan) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, empty), where=den != 0)


def _f1(s: dict[str, np.ndarray], suffix: str = "") -> np.ndarray:
    tp, fp, fn = s["tp" + suffix], s["fp" + suffix], s["fn" + suffix]
    return np.where(tp == 0, 0.0, _ratio(2 * tp, 2 * tp + fp + fn, 0.0))


def _mcc(s: dict[str, np.ndarray]) -> np.ndarray:
    tp, tn, fp, fn = s["tp"], s["tn"], s["fp"], s["fn"]
    return _ratio(tp * tn - fp * fn, np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)), 0.0)


def metrics_from_sums(task: str, s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The official metrics of ``task`` and its ``"score"`` from (resampled) sums; arrays in, arrays out."""
    accuracy = _ratio(s["correct"], s["n"])
    if task == "CB":
        metrics = {"accuracy": accuracy, "f1": sum(_f1(s, f"_{c}") for c in LABELS["CB"]) / len(LABELS["CB"])}
    elif task == "MultiRC":
        metrics = {"f1a": _f1(s), "em": _ratio(s["unit_right"], s["units"])}
    elif task == "ReCoRD":
        metrics = {"f1": _ratio(s["f1"], s["n"]), "em": _ratio(s["em"], s["n"])}
    elif task == "AX-b":
        metrics = {"mcc": _mcc(s)}
    elif task == "AX-g":
        metrics = {"parity": _ratio(s["unit_same"], s["units"]), "accuracy": accuracy}
    elif task in METRICS:
        metrics = {"accuracy": accuracy}
    else:
        raise ValueError(f"unknown task {task!r}")
    return {**metrics, "score": sum(metrics[m] for m in METRICS[task]) / len(METRICS[task])}


# --------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------

def _intervals(point: dict[str, Any], draws: dict[str, np.ndarray], n: int, alpha: float) -> dict[str, Interval]:
    return {k: Interval(float(v), *_percentiles(np.asarray(draws[k]), alpha), n=n) for k, v in point.items()}


def metric_intervals(task: str, predictions: Sequence[Any], examples: Sequence[Any], n_boot: int = N_BOOT,
                     seed: int = 0, alpha: float = ALPHA) -> dict[str, Interval]:
    """Every official metric of ``task`` and its ``"score"``, each with its interval (one set of resamples)."""
    sums, n_units = _unit_sums(task, predictions, examples)
    if n_units == 0:
        return {}
    point = metrics_from_sums(task, totals(sums))
    return _intervals(point, metrics_from_sums(task, resampled_sums(sums, n_units, n_boot, seed)), n_units, alpha)


def score_interval(task: str, predictions: Sequence[Any], examples: Sequence[Any], n_boot: int = N_BOOT,
                   seed: int = 0, alpha: float = ALPHA) -> Interval:
    """The task score of ``predictions`` with its bootstrap interval."""
    out = metric_intervals(task, predictions, examples, n_boot, seed, alpha)
    return out.get("score", Interval(math.nan, math.nan, math.nan, 0))


def paired_difference(task: str, predictions_a: Sequence[Any], predictions_b: Sequence[Any],
                      examples: Sequence[Any], n_boot: int = N_BOOT, seed: int = 0,
                      alpha: float = ALPHA) -> Interval:
    """Score(A) - score(B) on the same examples, both rescored on every shared resample (paired)."""
    (a, n_units), (b, _) = _unit_sums(task, predictions_a, examples), _unit_sums(task, predictions_b, examples)
    if n_units == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    both = {**{f"a.{k}": v for k, v in a.items()}, **{f"b.{k}": v for k, v in b.items()}}
    drawn = resampled_sums(both, n_units, n_boot, seed)

    def score(sums: dict[str, np.ndarray], side: str) -> np.ndarray:
        return metrics_from_sums(task, {k[2:]: v for k, v in sums.items() if k.startswith(side)})["score"]

    diff = lambda s: score(s, "a.") - score(s, "b.")  # noqa: E731
    return _intervals({"d": diff(totals(both))}, {"d": diff(drawn)}, n_units, alpha)["d"]


def mean_interval(values: Sequence[float], groups: Sequence[Any] | None = None, n_boot: int = N_BOOT,
                  seed: int = 0, alpha: float = ALPHA) -> Interval:
    """Mean of per-example ``values`` (agreement 0/1, a KL ...) with its interval; ``groups`` as for scores
    (the mean is over examples, the resampling over groups)."""
    vals = np.asarray(values, dtype=np.float64)
    unit, n_units = unit_index([_Unit(g) for g in groups] if groups is not None else vals)
    if n_units == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    sums = {"v": _per_unit(vals, unit, n_units), "n": _per_unit(np.ones(len(vals)), unit, n_units)}
    mean: Callable[[dict[str, np.ndarray]], np.ndarray] = lambda s: _ratio(s["v"], s["n"])  # noqa: E731
    return _intervals({"m": mean(totals(sums))}, {"m": mean(resampled_sums(sums, n_units, n_boot, seed))}, n_units,
                      alpha)["m"]


@dataclass(frozen=True)
class _Unit:
    group_key: Any


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof = 1; NaN for one value) across seeds, and their count."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, 0
    sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
    return float(np.mean(vals)), sd, len(vals)


def interval_cell(value: float, low: float | None = None, high: float | None = None, n: Any = None,
                  n_split: Any = None, digits: int = 3) -> str:
    """``0.612 [0.480, 0.740] n=56`` for a table; a capped subset says so (``n=16 of 56``), so the cap is
    printed next to every number it affects. Missing parts are left out."""
    def num(x: Any) -> bool:
        return x is not None and not (isinstance(x, float) and math.isnan(x))

    if not num(value):
        return ""
    text = f"{value:.{digits}f}"
    if num(low) and num(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    if num(n):
        text += f" n={int(n)}"
        if num(n_split) and int(n_split) > int(n):
            text += f" of {int(n_split)}"
    return text
