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


def _random_predictions(task, examples, rng):
    """Predictions of the right kind for ``task``: label values, or ReCoRD candidate strings."""
    from glmd_lib.superglue.data import LABELS

    if task == "ReCoRD":
        return [ex.candidates[rng.integers(len(ex.candidates))] for ex in examples]
    labels = LABELS[task]
    return [labels[rng.integers(len(labels))] for _ in examples]


@pytest.mark.parametrize("task", ["BoolQ", "CB", "COPA", "MultiRC", "ReCoRD", "RTE", "WiC", "WSC", "AX-b", "AX-g"])
def test_sums_give_the_official_metrics_on_the_sample_and_on_a_resample(tmp_path, task):
    """The vectorised metrics equal glmd_lib.superglue.metrics.task_metrics: on the sample, and on a resample
    materialised as an example list in which every drawn unit is its own group (copies count twice)."""
    import dataclasses

    from glmd_lib.superglue.data import read_split
    from glmd_lib.superglue.metrics import task_metrics, task_score
    from glmd_lib.superglue.toy import write_toy_dataset
    from glmd_lib.tasks.intervals import (_resamples, _unit_sums, metric_intervals, metrics_from_sums,
                                          resampled_sums, unit_index)

    data = write_toy_dataset(tmp_path / "sg", n=12, tasks=[task])
    exs = read_split(task, "test" if task.startswith("AX") else "val", data)
    preds = _random_predictions(task, exs, np.random.default_rng(3))
    official = task_metrics(task, preds, exs)
    got = metric_intervals(task, preds, exs, n_boot=20)
    assert {k: v.value for k, v in got.items()} == pytest.approx({**official, "score": task_score(task, official)})
    unit, n_units = unit_index(exs)
    sums, _ = _unit_sums(task, preds, exs)
    drawn = _resamples(n_units, 1, seed=5)[0]
    copies = [(dataclasses.replace(ex, group=("draw", k)), p) for k, u in enumerate(drawn)
              for ex, p, eu in zip(exs, preds, unit) if eu == u]
    expected = task_metrics(task, [p for _, p in copies], [ex for ex, _ in copies])
    vectorised = metrics_from_sums(task, resampled_sums(sums, n_units, 1, seed=5))
    assert {k: float(vectorised[k][0]) for k in expected} == pytest.approx(expected)


def test_a_question_drawn_twice_counts_twice():
    """MultiRC exact match per question: the interval matches the normal approximation over questions. Merging
    the copies of a question drawn twice (regrouping a resample by its own keys) narrows it by about a quarter."""
    rng = np.random.default_rng(4)
    exs, preds = [], []
    for q in range(400):
        right = rng.random() < 0.5
        for a in range(3):
            exs.append(Example("MultiRC", (0, q, a), a % 2, {}, group=(0, q)))
            preds.append(a % 2 if right or a else 1 - a % 2)
    iv = metric_intervals_em(exs, preds)
    half = 1.96 * math.sqrt(iv.value * (1 - iv.value) / 400)
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.12)


def metric_intervals_em(exs, preds):
    from glmd_lib.tasks.intervals import metric_intervals

    return metric_intervals("MultiRC", preds, exs, n_boot=2000)["em"]


def test_interval_cell_prints_the_cap():
    from glmd_lib.tasks.intervals import interval_cell

    assert interval_cell(0.5, 0.4, 0.6, 56, 56) == "0.500 [0.400, 0.600] n=56"
    assert interval_cell(0.5, 0.4, 0.6, 16, 56) == "0.500 [0.400, 0.600] n=16 of 56"
    assert interval_cell(float("nan")) == "" and interval_cell(0.25) == "0.250"
