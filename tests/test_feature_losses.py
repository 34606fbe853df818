"""TinyBERT's and MiniLM's loss math against references written with explicit loops (issue #13), and the
trained objective around it: skipped terms are recorded, the projections are trained but not saved."""
from __future__ import annotations

import math

import pytest
import torch

from glmd_lib.distill.feature_losses import attention_kl, hidden_mse, relation_heads, uniform_layer_map, \
    value_relation_kl
from glmd_lib.distill.feature_objective import FeatureObjective


def _causal_probs(B, H, T, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, H, T, T, generator=g).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    return torch.softmax(scores, -1)


def _counted_rows(mask, heads):
    """(batch, head, query) of every counted query position."""
    return [(b, h, i) for b in range(mask.shape[0]) for h in range(heads) for i in range(mask.shape[1]) if mask[b, i]]


def test_uniform_layer_map():
    assert uniform_layer_map(2, 4) == [1, 3]
    assert uniform_layer_map(3, 12) == [3, 7, 11]
    assert uniform_layer_map(4, 10) == [2, 4, 7, 9]  # 2.5 -> 3 and 7.5 -> 8: halves round up
    assert uniform_layer_map(3, 3) == [0, 1, 2]


def test_hidden_mse_matches_loops():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 3, 4, generator=g) for _ in range(2)]
    t = [torch.randn(2, 3, 6, generator=g) for _ in range(2)]
    W = [torch.randn(6, 4, generator=g) for _ in range(2)]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = hidden_mse(s, t, lambda k, x: x @ W[k].T, mask)
    pair_means = []
    for k in range(2):
        total, n = 0.0, 0
        for b in range(2):
            for p in range(3):
                if mask[b, p]:
                    proj = [sum(float(W[k][d, e]) * float(s[k][b, p, e]) for e in range(4)) for d in range(6)]
                    total += sum((proj[d] - float(t[k][b, p, d])) ** 2 for d in range(6)) / 6
                    n += 1
        pair_means.append(total / n)
    assert float(got) == pytest.approx(sum(pair_means) / 2, rel=1e-5)


def test_attention_kl_matches_loops():
    ps, pt = _causal_probs(2, 2, 4, 1), _causal_probs(2, 2, 4, 2)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    got = attention_kl(ps, pt, mask)
    total, n = 0.0, 0
    for b, h, i in _counted_rows(mask, heads=2):
        total += sum(float(pt[b, h, i, j]) * math.log(float(pt[b, h, i, j]) / float(ps[b, h, i, j]))
                     for j in range(i + 1))
        n += 1
    assert float(got) == pytest.approx(total / n, rel=1e-5)
    assert float(attention_kl(pt, pt, mask)) == pytest.approx(0.0, abs=1e-6)


def _relation_ref(x, b, h, d, i, allowed):
    """softmax over allowed keys j of <x_i, x_j> / sqrt(d) for relation head h (columns h*d .. h*d+d)."""
    xs = x[b, :, h * d:(h + 1) * d]
    scores = {j: float(torch.einsum("e,e->", xs[i], xs[j])) / math.sqrt(d) for j in allowed}
    z = sum(math.exp(v) for v in scores.values())
    return {j: math.exp(v) / z for j, v in scores.items()}


@pytest.mark.parametrize("causal", [True, False])
def test_value_relation_kl_matches_loops_across_widths(causal):
    g = torch.Generator().manual_seed(3)
    sv, tv = torch.randn(2, 4, 4, generator=g), torch.randn(2, 4, 6, generator=g)  # widths 4 and 6, 2 heads
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = value_relation_kl(sv, tv, 2, mask, causal)
    total, n = 0.0, 0
    for b, h, i in _counted_rows(mask, heads=2):
        keys = [j for j in range(4) if mask[b, j] and (j <= i or not causal)]
        rt, rs = _relation_ref(tv, b, h, 3, i, keys), _relation_ref(sv, b, h, 2, i, keys)
        total += sum(rt[j] * math.log(rt[j] / rs[j]) for j in keys)
        n += 1
    assert float(got) == pytest.approx(total / n, rel=1e-5)
    assert relation_heads(4, 6, 4) == 2 and relation_heads(32, 64, 4) == 4


def test_objective_records_skipped_attention_and_trains_projections(make_tiny_llama):
    teacher, student = make_tiny_llama(num_hidden_layers=3, hidden_size=32), make_tiny_llama(
        num_hidden_layers=1, hidden_size=16, num_attention_heads=4, num_key_value_heads=1, seed=1)
    obj = FeatureObjective("tinybert", student.config, teacher.config, causal=True)
    assert "attention" in obj.skipped and "4 attention heads" in obj.skipped["attention"]
    assert obj.layer_map == [2] and sum(p.numel() for p in obj.parameters()) == 2 * (16 * 32 + 32)
    same = FeatureObjective("minilm", teacher.config, teacher.config, causal=True)
    assert same.skipped == {} and same.project is None  # MiniLM projects nothing
