"""The method registry of the comparison (issue #13): every method's parameters are ones the stages accept."""
from __future__ import annotations

import pytest

from glmd_lib.config.base import ConfigError
from glmd_lib.distill.methods import METHODS, matched_embedding_dim, method_params, validate_params

NAMES = ["no-kd", "kd", "tinybert", "minilm", "glmd-vc", "glmd", "glmd+al", "dim-reduction", "glmd-no-stage1",
         "glmd-no-2a", "glmd-no-2b", "glmd-t1", "glmd-sub-unk", "glmd-sub-dot", "glmd-sub-cosine",
         "glmd-pruned-substitute"]
NOT_YET: dict[str, str] = {}  # methods whose parameters a stage does not accept yet (xfail with the reason)


def test_the_registry_holds_the_issues_methods():
    assert list(METHODS) == NAMES
    assert {n for n, m in METHODS.items() if m.uses_intermediate_layers} == {"tinybert", "minilm"}
    assert not any(METHODS[n].uses_gold_labels for n in NAMES if n.startswith("glmd"))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=NOT_YET[n], strict=True))
                                  if n in NOT_YET else n for n in NAMES])
def test_every_method_resolves(name):
    params = method_params(name)
    assert set(params) == set(METHODS[name].params)


def test_bad_keys_and_values_name_the_method():
    with pytest.raises(ConfigError, match="method 'x': Stage1Config has no parameter 'los'"):
        validate_params("x", {"stage1.los": "kd"})
    with pytest.raises(ConfigError, match="method 'x': key 'stage9.loss' names no stage"):
        validate_params("x", {"stage9.loss": "kd"})
    with pytest.raises(ConfigError, match="method 'x':.*loss"):
        validate_params("x", {"stage1.loss": "distil"})
    with pytest.raises(ConfigError, match="method 'x':.*ce_weight"):
        validate_params("x", {"stage1.loss": "kd"})  # kd without its CE weight
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        method_params("nope")


def test_matched_embedding_dim():
    # GLMD's kept half of 49,152 rows at hidden 576 costs K*H; V*E + 2*E*H at the returned E is within one step
    E = matched_embedding_dim(24_576, 49_152, 576)
    assert abs(49_152 * E + 2 * E * 576 - 24_576 * 576) <= 49_152 + 2 * 576
