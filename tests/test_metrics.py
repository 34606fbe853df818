"""Official SuperGLUE metrics on hand-computed cases."""
from __future__ import annotations

import math

import pytest

from glmd_lib.superglue.data import Example
from glmd_lib.superglue.metrics import (exact_match, normalize_answer, overall_score, task_metrics, task_score,
                                        token_f1)


def _ex(task, labels, groups=None):
    return [Example(task, i, lab, {}, group=None if groups is None else groups[i]) for i, lab in enumerate(labels)]


def test_accuracy():
    m = task_metrics("RTE", ["entailment", "not_entailment", "entailment"],
                     _ex("RTE", ["entailment", "entailment", "entailment"]))
    assert m == {"accuracy": pytest.approx(2 / 3)}


def test_cb_macro_f1_hand_computed():
    gold = ["entailment", "entailment", "contradiction", "contradiction", "neutral"]
    pred = ["entailment", "contradiction", "contradiction", "contradiction", "entailment"]
    m = task_metrics("CB", pred, _ex("CB", gold))
    # entailment: tp1 fp1 fn1 -> 0.5; contradiction: tp2 fp1 fn0 -> 0.8; neutral: tp0 -> 0
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert task_score("CB", m) == pytest.approx((0.6 + 1.3 / 3) / 2)


def test_cb_macro_f1_averages_over_the_three_fixed_classes():
    gold = ["entailment", "contradiction"]
    m = task_metrics("CB", ["entailment", "contradiction"], _ex("CB", gold))
    assert m["f1"] == pytest.approx(2 / 3)  # neutral occurs in neither: it counts 0, as on the leaderboard


def test_multirc_f1a_and_em():
    labels = [1, 0, 1, 0, 0]
    groups = [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0)]
    pred = [1, 0, 1, 1, 0]
    m = task_metrics("MultiRC", pred, _ex("MultiRC", labels, groups))
    # positives: tp2 fp1 fn0 -> F1 = 4/5 ; questions: (0,0) right, (0,1) wrong, (1,0) right -> 2/3
    assert m["f1a"] == pytest.approx(0.8) and m["em"] == pytest.approx(2 / 3)
    # no positive predicted and none gold: F1 0 by convention, EM 1
    m = task_metrics("MultiRC", [0, 0], _ex("MultiRC", [0, 0], [(0, 0), (0, 0)]))
    assert m == {"f1a": 0.0, "em": 1.0}


def test_record_squad_normalisation_and_max_over_gold():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert token_f1("the Eiffel tower in Paris", "Eiffel Tower") == pytest.approx(2 * (2 / 4) * 1 / (2 / 4 + 1))
    assert exact_match("An apple.", "apple") == 1.0
    exs = _ex("ReCoRD", [["Barack Obama", "Obama"], ["Paris"]])
    m = task_metrics("ReCoRD", ["Obama", ""], exs)  # empty prediction scores 0
    assert m == {"f1": pytest.approx(0.5), "em": pytest.approx(0.5)}
    m = task_metrics("ReCoRD", ["President Obama", "paris"], exs)
    assert m["em"] == pytest.approx(0.5) and m["f1"] == pytest.approx((2 / 3 + 1) / 2)


def test_axb_matthews():
    gold = ["entailment", "entailment", "not_entailment", "not_entailment"]
    pred = ["entailment", "not_entailment", "not_entailment", "not_entailment"]
    # tp1 tn2 fp0 fn1 -> (2 - 0) / sqrt(1*2*3*2)
    assert task_metrics("AX-b", pred, _ex("AX-b", gold))["mcc"] == pytest.approx(2 / math.sqrt(12))
    assert task_metrics("AX-b", ["entailment"] * 4, _ex("AX-b", gold))["mcc"] == 0.0  # constant: 0


def test_axg_parity_over_consecutive_pairs():
    gold = ["entailment", "entailment", "not_entailment", "not_entailment"]
    pred = ["entailment", "not_entailment", "not_entailment", "not_entailment"]
    m = task_metrics("AX-g", pred, _ex("AX-g", gold, [0, 0, 1, 1]))
    assert m == {"parity": 0.5, "accuracy": 0.75}


def test_empty_and_mismatched_inputs():
    assert math.isnan(task_metrics("RTE", [], [])["accuracy"])
    assert math.isnan(task_metrics("CB", [], [])["f1"])
    with pytest.raises(ValueError, match="2 predictions for 1"):
        task_metrics("RTE", ["entailment"] * 2, _ex("RTE", ["entailment"]))
    with pytest.raises(ValueError, match="without labels"):
        task_metrics("RTE", ["entailment"], _ex("RTE", [None]))


def test_overall_score_averages_two_metric_tasks_first():
    scores = {"CB": task_score("CB", {"accuracy": 0.8, "f1": 0.6}), "RTE": 0.5, "AX-b": 0.9}
    assert overall_score(scores) == pytest.approx((0.7 + 0.5) / 2)
    assert overall_score(scores, include_diagnostics=True) == pytest.approx((0.7 + 0.5 + 0.9) / 3)
    assert math.isnan(overall_score({}))
