"""Bootstrap intervals: the resampling units, the paired difference, and agreement with the normal
approximation where that is known to hold."""
import math

import numpy as np
import pytest

from glmd_lib.superglue.data import Example
from glmd_lib.tasks.intervals import mean_interval, mean_sd, paired_difference, score_interval


def _rte(golds):
    return [Example("RTE", i, g, {}) for i, g in enumerate(golds)]


def test_accuracy_interval_matches_normal_approximation():
    rng = np.random.default_rng(1)
    golds = ["entailment"] * 400
    preds = ["entailment" if rng.random() < 0.7 else "not_entailment" for _ in golds]
    iv = score_interval("RTE", preds, _rte(golds), n_boot=2000)
    acc = sum(p == g for p, g in zip(preds, golds)) / 400
    assert iv.value == pytest.approx(acc) and iv.n == 400
    half = 1.96 * math.sqrt(acc * (1 - acc) / 400)
    assert iv.low == pytest.approx(acc - half, abs=0.012) and iv.high == pytest.approx(acc + half, abs=0.012)


def test_perfect_predictions_have_a_degenerate_interval():
    golds = ["entailment", "not_entailment"] * 10
    iv = score_interval("RTE", golds, _rte(golds), n_boot=200)
    assert (iv.value, iv.low, iv.high) == (1.0, 1.0, 1.0)


def test_multirc_resamples_questions_not_answers():
    exs = [Example("MultiRC", (0, q, a), a % 2, {}, group=(0, q)) for q in range(5) for a in range(4)]
    iv = score_interval("MultiRC", [ex.label for ex in exs], exs, n_boot=50)
    assert iv.n == 5  # five questions, twenty answers


def test_paired_difference_of_identical_models_is_zero_and_not_distinguishable():
    golds = ["entailment", "not_entailment"] * 30
    preds = ["entailment"] * 60
    d = paired_difference("RTE", preds, preds, _rte(golds), n_boot=200)
    assert (d.value, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.verdict() == "not distinguishable"


def test_paired_difference_detects_a_clear_gap_and_not_a_tiny_one():
    rng = np.random.default_rng(0)
    golds = ["entailment" if rng.random() < 0.5 else "not_entailment" for _ in range(300)]
    flip = {"entailment": "not_entailment", "not_entailment": "entailment"}
    good = [g if rng.random() < 0.85 else flip[g] for g in golds]
    bad = [g if rng.random() < 0.55 else flip[g] for g in golds]
    d = paired_difference("RTE", good, bad, _rte(golds), n_boot=500)
    assert d.excludes_zero and d.verdict("good", "bad") == "good better"
    nearly = list(good)
    nearly[0] = flip[nearly[0]]  # one example apart
    assert not paired_difference("RTE", good, nearly, _rte(golds), n_boot=500).excludes_zero


def test_mean_interval_and_mean_sd():
    iv = mean_interval([1.0, 0.0, 1.0, 1.0], n_boot=300)
    assert iv.value == 0.75 and 0.0 <= iv.low <= 0.75 <= iv.high <= 1.0 and iv.n == 4
    grouped = mean_interval([1.0, 1.0, 0.0, 0.0], groups=["a", "a", "b", "b"], n_boot=100)
    assert grouped.n == 2
    m, sd, n = mean_sd([0.5, 0.7, 0.6])
    assert (m, n) == (pytest.approx(0.6), 3) and sd == pytest.approx(0.1)
    assert math.isnan(mean_sd([0.5])[1])
