"""Uncertainty on every score: percentile-bootstrap intervals, paired differences, mean ± sd over seeds.

Why a bootstrap: SuperGLUE dev splits are small (CB 56, COPA 100, RTE 277 examples), so a difference of a
few points between two models is often noise. Every reported score therefore carries its number of examples
and a 95% interval, and two models are called different only where the *paired* interval of their
difference (both scored on the same resampled examples) excludes zero.

Resampling units follow the metrics' own units: MultiRC answers are resampled by question (its exact match is
per question), AX-g examples by sentence pair (gender parity is per pair); every other task by example
(``Example.group_key`` holds exactly this). Scores are recomputed with the official metric on each resample,
so F1, MCC and parity get honest intervals too, not a normal approximation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from glmd_lib.superglue.metrics import task_metrics, task_score

N_BOOT = 1000
ALPHA = 0.05


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


def _groups(examples: Sequence[Any]) -> list[np.ndarray]:
    """Indices of ``examples`` per resampling unit (``group_key``), in order of first appearance."""
    order: dict[Any, list[int]] = {}
    for i, ex in enumerate(examples):
        order.setdefault(getattr(ex, "group_key", i), []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in order.values()]


def _resamples(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_units]`` unit indices drawn with replacement (one fixed stream per seed)."""
    return np.random.default_rng(seed).integers(0, n_units, size=(n_boot, n_units))


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap(statistic: Callable[[np.ndarray], float], examples: Sequence[Any], n_boot: int = N_BOOT,
              seed: int = 0, alpha: float = ALPHA) -> Interval:
    """Interval of ``statistic(indices)`` over resamples of ``examples``' units (see the module docstring)."""
    groups = _groups(examples)
    if not groups:
        return Interval(math.nan, math.nan, math.nan, 0)
    value = float(statistic(np.arange(len(examples))))
    draws = np.empty(n_boot)
    for b, units in enumerate(_resamples(len(groups), n_boot, seed)):
        draws[b] = statistic(np.concatenate([groups[u] for u in units]))
    return Interval(value, *_percentiles(draws, alpha), n=len(groups))


def score_on(task: str, predictions: Sequence[Any], examples: Sequence[Any]) -> Callable[[np.ndarray], float]:
    """``indices -> official task score`` of ``predictions`` on those ``examples``."""
    def statistic(idx: np.ndarray) -> float:
        return task_score(task, task_metrics(task, [predictions[i] for i in idx], [examples[i] for i in idx]))
    return statistic


def score_interval(task: str, predictions: Sequence[Any], examples: Sequence[Any], n_boot: int = N_BOOT,
                   seed: int = 0, alpha: float = ALPHA) -> Interval:
    """The task score of ``predictions`` with its bootstrap interval."""
    return bootstrap(score_on(task, predictions, examples), examples, n_boot, seed, alpha)


def paired_difference(task: str, predictions_a: Sequence[Any], predictions_b: Sequence[Any],
                      examples: Sequence[Any], n_boot: int = N_BOOT, seed: int = 0,
                      alpha: float = ALPHA) -> Interval:
    """Score(A) - score(B) on the same examples, both rescored on every shared resample (paired)."""
    a, b = score_on(task, predictions_a, examples), score_on(task, predictions_b, examples)
    return bootstrap(lambda idx: a(idx) - b(idx), examples, n_boot, seed, alpha)


def mean_interval(values: Sequence[float], groups: Sequence[Any] | None = None, n_boot: int = N_BOOT,
                  seed: int = 0, alpha: float = ALPHA) -> Interval:
    """Mean of per-example ``values`` (agreement 0/1, a KL ...) with its interval; ``groups`` as for scores."""
    vals = np.asarray(values, dtype=np.float64)
    units = [_Unit(g) for g in groups] if groups is not None else list(range(len(vals)))
    return bootstrap(lambda idx: float(vals[idx].mean()) if len(idx) else math.nan, units, n_boot, seed, alpha)


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
