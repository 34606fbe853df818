"""The distillation losses: value and gradient against independent formulas, padding, vocabulary
restriction, top-k, chunking, the hidden-state path, its memory, and the stage-2b soft cross-entropy."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glmd_lib.device import compile_problem, matmul_dtype
from glmd_lib.distill import losses
from glmd_lib.distill.losses import (LossError, distill_kl, distill_kl_reference, distill_loss, loss_kernel,
                                     mask_tokens, soft_cross_entropy)
from glmd_lib.distill.teacher import sparse_teacher_fn

V, K = 23, 11


class _Map:
    """Minimal stand-in with the VocabMap attributes the loss uses (the real map is tested in test_vocab)."""

    def __init__(self, kept):
        self.kept_ids = torch.as_tensor(kept)
        self.vocab_size, self.num_kept = V, len(kept)

    def restrict_logits(self, t):
        return t.index_select(-1, self.kept_ids.to(t.device))

    def target_logits(self, t, temperature):  # pruned_mass="renormalize"
        return self.restrict_logits(t)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, K, generator=g) * 2
    t = torch.randn(3, 5, V, generator=g) * 4
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    kept = torch.randperm(V, generator=g)[:K]
    return s, t, mask, _Map(kept)


def _kl_div_formula(s, t_kept, mask, T):
    """T^2 * KL via torch's kl_div, mean over mask: an independent formulation."""
    per_pos = F.kl_div(torch.log_softmax(s / T, -1), torch.log_softmax(t_kept / T, -1), log_target=True,
                       reduction="none").sum(-1)
    return T * T * (per_pos * mask).sum() / mask.sum()


@pytest.mark.parametrize("T", [1.0, 2.0, 15.0])
@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_value_and_gradient_match_kl_div(data, T, chunk):
    s, t, mask, vm = data
    s = s.clone().requires_grad_(True)
    loss = distill_kl(s, t, mask, T, vm, chunk=chunk)
    (g,) = torch.autograd.grad(loss, s)
    s2 = s.detach().clone().requires_grad_(True)
    ref = _kl_div_formula(s2, t[..., vm.kept_ids], mask, T)
    (g2,) = torch.autograd.grad(ref, s2)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g2, rtol=1e-4, atol=1e-7)
    assert g[mask == 0].abs().max() == 0  # padding gets no gradient


def test_padding_does_not_dilute_the_mean(data):
    s, t, mask, vm = data
    full = distill_kl(s, t, mask, 2.0, vm)
    # the same real positions without any padding, and with garbage in the padded positions
    real = mask.bool()
    alone = distill_kl(s[real][None], t[real][None], torch.ones(1, int(real.sum())), 2.0, vm)
    s_bad, t_bad = s.clone(), t.clone()
    s_bad[~real], t_bad[~real] = 1e4, -1e4
    torch.testing.assert_close(full, alone)
    torch.testing.assert_close(distill_kl(s_bad, t_bad, mask, 2.0, vm), full)
    # a mean over all positions (diluted) would be different: the test can tell
    diluted = distill_kl(s, t, torch.ones_like(mask), 2.0, vm)
    assert not torch.isclose(diluted, full)


def test_temperature_scaling_and_zero_for_equal_distributions(data):
    s, t, mask, vm = data
    same = vm.restrict_logits(t)
    assert distill_kl(same, t, mask, 15.0, vm).abs() < 1e-5
    # T^2 keeps the loss's size comparable across T (it does not shrink like 1/T^2)
    l1, l15 = distill_kl(s, t, mask, 1.0, vm), distill_kl(s, t, mask, 15.0, vm)
    assert l15 > 0.01 * l1


def test_topk_truncation(data):
    s, t, mask, vm = data
    t_kept = vm.restrict_logits(t)
    k = 3
    vals, idx = t_kept.topk(k, -1)
    trunc = torch.full_like(t_kept, -1e9).scatter(-1, idx, vals)  # other tokens ~ probability 0
    expect = _kl_div_formula(s, trunc, mask, 2.0)
    got = distill_kl(s, t, mask, 2.0, vm, topk=k, chunk=2)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(got, distill_kl(s, t, mask, 2.0, vm))
    torch.testing.assert_close(distill_kl(s, t, mask, 2.0, vm, topk=K), distill_kl(s, t, mask, 2.0, vm))


def test_hidden_path_matches_autograd_including_logged_and_added_ce(data):
    _, t, mask, vm = data
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 5, 7, generator=g, requires_grad=True)
    head = torch.nn.Linear(7, K)
    labels = torch.randint(K, (3, 5), generator=g)
    labels[mask == 0] = -100
    t_flat = t.reshape(-1, V)
    teacher_fn = lambda sl: vm.restrict_logits(t_flat[sl])  # noqa: E731
    for ce_weight in (0.0, 0.3):
        loss, logs = distill_loss(h, head, teacher_fn, mask, 3.0, labels=labels, ce_weight=ce_weight, chunk=4)
        grads = torch.autograd.grad(loss, [h, head.weight, head.bias])
        logits = head(h)
        kl = _kl_div_formula(logits, t[..., vm.kept_ids], mask, 3.0)
        ce = F.cross_entropy(logits.reshape(-1, K), labels.reshape(-1))
        ref = kl + ce_weight * ce
        ref_grads = torch.autograd.grad(ref, [h, head.weight, head.bias])
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logs["kl"], kl.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logs["ce"], ce.detach(), rtol=1e-5, atol=1e-6)  # logged in both cases
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_hidden_path_never_keeps_full_logits_for_backward():
    """The memory claim: nothing of size positions x vocabulary is saved for the backward pass."""
    N, D, KK = 64, 8, 5000
    h = torch.randn(1, N, D, requires_grad=True)
    head = torch.nn.Linear(D, KK, bias=False)
    t = torch.randn(N, KK)
    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss, _ = distill_loss(h, head, lambda sl: t[sl], torch.ones(1, N), 15.0, chunk=16)
    assert max(saved) <= max(N * D, KK * D)  # hidden-sized and weight-sized gradients only
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        naive = distill_kl_reference(head(h), t[None], None, 15.0)
    assert max(saved) >= N * KK  # ... whereas plain autograd keeps [N, K] tensors
    loss.backward()
    assert h.grad is not None and head.weight.grad is not None


def test_sparse_teacher_matches_dense_topk(data):
    s, t, mask, vm = data
    t_kept = vm.restrict_logits(t)
    vals, idx = t_kept.topk(4, -1)
    fn = sparse_teacher_fn(vals, idx, K)
    loss, _ = distill_loss(s, None, fn, mask, 2.0)
    torch.testing.assert_close(loss, distill_kl(s, t, mask, 2.0, vm, topk=4), rtol=1e-5, atol=1e-6)
    # dropped entries (-1) are ignored; a position with none left does not count
    idx2 = idx.clone()
    idx2[..., 0] = -1
    idx2[0, 0, :] = -1
    loss2, _ = distill_loss(s, None, sparse_teacher_fn(vals, idx2, K), mask, 2.0)
    assert torch.isfinite(loss2)
    m2 = mask.clone()
    m2[0, 0] = 0
    loss3, _ = distill_loss(s, None, sparse_teacher_fn(vals, idx2, K), m2, 2.0)
    torch.testing.assert_close(loss2, loss3)


def test_bad_shapes_and_maps_are_named(data):
    s, t, mask, vm = data
    with pytest.raises(LossError, match="VocabMap"):
        distill_kl(s, t, mask, 2.0)
    wrong = _Map(vm.kept_ids[:5])
    with pytest.raises(LossError, match="keeps|kept"):
        distill_kl(s, t, mask, 2.0, wrong)
    with pytest.raises(LossError, match="positions"):
        distill_kl(s, t[:, :4], mask, 2.0, vm)
    with pytest.raises(LossError, match="temperature"):
        distill_kl(s, t, mask, 0.0, vm)


def test_soft_cross_entropy():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 1.0]], requires_grad=True)
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, -math.inf]])
    s2 = s.detach().clone()
    s2[1, 2] = -math.inf  # a padded candidate slot
    expect = -(torch.softmax(t, -1) * torch.log_softmax(s.detach(), -1)).nan_to_num().sum(-1).mean()
    got = soft_cross_entropy(s, t)
    torch.testing.assert_close(got, expect)
    got.backward()
    assert torch.isfinite(s.grad).all()
    assert torch.isfinite(soft_cross_entropy(s2, t))
    # T scales both distributions
    assert not torch.isclose(soft_cross_entropy(s, t, 4.0), got)
    with pytest.raises(LossError):
        soft_cross_entropy(s, t[:, :2])


def test_mask_tokens_masks_only_real_positions():
    ids = torch.randint(5, 100, (4, 50))
    attn = torch.ones_like(ids)
    attn[:, 40:] = 0
    ids[:, 0] = 1  # a special token
    g = torch.Generator().manual_seed(0)
    out, sel = mask_tokens(ids, attn, mask_token_id=3, vocab_size=100, probability=0.3, generator=g,
                           special_ids=(1,))
    assert not sel[:, 40:].any() and not sel[:, 0].any()
    assert 0.2 < sel[:, 1:40].float().mean() < 0.4
    assert (out[~sel] == ids[~sel]).all()
    assert (out[sel] == 3).float().mean() > 0.6
    out2, sel2 = mask_tokens(ids, attn, 3, 100, 0.3, generator=torch.Generator().manual_seed(0), special_ids=(1,))
    assert torch.equal(out, out2) and torch.equal(sel, sel2)


def test_the_loss_reports_its_denominator(data):
    """``logs["count"]``: the positions the KL mean is over (mask, and rows with teacher mass), so the trainer
    can weigh micro-batches by it (issue #10, fix 7)."""
    s, t, mask, vm = data
    _, logs = distill_loss(s, None, lambda sl: vm.restrict_logits(t.reshape(-1, V)[sl]), mask, 2.0)
    assert logs["count"] == mask.sum()
    t_flat = vm.restrict_logits(t.reshape(-1, V)).clone()
    t_flat[0] = -math.inf  # a position without teacher mass does not count
    _, logs = distill_loss(s, None, lambda sl: t_flat[sl], mask, 2.0)
    assert logs["count"] == mask.sum() - 1


# --------------------------------------------------------------------------------------------
# the two kernels of the softmax/KL part (issue #12): both against plain autograd on full logits
# --------------------------------------------------------------------------------------------

KERNELS = ["eager", pytest.param("compile", marks=pytest.mark.skipif(
    compile_problem() is not None, reason="torch.compile needs a C++ compiler"))]


def _reference(h, head, t_kept, mask, T, labels):
    """T^2 KL by F.kl_div on full fp32 logits over the rows where the teacher has mass, and the student's CE."""
    logits = head(h)
    has_mass = torch.isfinite(t_kept).any(-1)
    m = mask.float() * has_mass.float()
    t_safe = torch.where(has_mass[..., None], t_kept, torch.zeros_like(t_kept))
    per_pos = F.kl_div(torch.log_softmax(logits / T, -1), torch.log_softmax(t_safe / T, -1), log_target=True,
                       reduction="none").nan_to_num().sum(-1)
    kl = T * T * (per_pos * m).sum() / m.sum()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    return kl, ce


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("T", [1.0, 15.0])
def test_kernels_match_kl_div_on_full_logits(kernel, T, monkeypatch):
    """Value, logged CE and every gradient (hidden states, output weight and bias), with chunks and blocks that
    do not divide the positions, teacher logits of -inf (no mass) and a position without any teacher mass."""
    monkeypatch.setattr(losses, "ROWS", 3)
    g = torch.Generator().manual_seed(2)
    N, D, KK = 37, 6, 300
    h = torch.randn(1, N, D, generator=g, requires_grad=True)
    head = torch.nn.Linear(D, KK)
    t = torch.randn(1, N, KK, generator=g) * 5
    t[0, 3, : KK // 2] = -math.inf
    t[0, 5] = -math.inf
    mask = torch.ones(1, N)
    mask[0, -4:] = 0
    labels = torch.randint(KK, (1, N), generator=g)
    labels[0, -4:] = -100
    loss, logs = distill_loss(h, head, lambda sl: t.reshape(-1, KK)[sl], mask, T, labels=labels, chunk=10,
                              kernel=kernel)
    grads = torch.autograd.grad(loss, [h, head.weight, head.bias])
    kl, ce = _reference(h, head, t, mask, T, labels)
    ref_grads = torch.autograd.grad(kl, [h, head.weight, head.bias])
    torch.testing.assert_close(loss, kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logs["ce"], ce.detach(), rtol=1e-5, atol=1e-5)
    assert logs["count"] == mask.sum() - 1  # the position without teacher mass does not count
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_trained_ce_gradient_matches_autograd(kernel):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 9, 5, generator=g, requires_grad=True)
    head = torch.nn.Linear(5, 40)
    t = torch.randn(2, 9, 40, generator=g)
    labels = torch.randint(40, (2, 9), generator=g)
    loss, _ = distill_loss(h, head, lambda sl: t.reshape(-1, 40)[sl], torch.ones(2, 9), 2.0, labels=labels,
                           ce_weight=0.5, chunk=4, kernel=kernel)
    kl, ce = _reference(h, head, t, torch.ones(2, 9), 2.0, labels)
    for a, b in zip(torch.autograd.grad(loss, [h, head.weight]), torch.autograd.grad(kl + 0.5 * ce, [h, head.weight])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_under_bf16_autocast_the_head_runs_in_bf16_and_the_rest_stays_fp32():
    """The trainer's bf16 autocast: the output layer's matmuls in bf16 (close to fp32), the loss and every
    gradient in fp32 (the master weights' dtype)."""
    g = torch.Generator().manual_seed(4)
    h = torch.randn(1, 40, 32, generator=g, requires_grad=True)
    head = torch.nn.Linear(32, 500, bias=False)
    t = torch.randn(1, 40, 500, generator=g) * 3
    fp32, _ = distill_loss(h, head, lambda sl: t.reshape(-1, 500)[sl], torch.ones(1, 40), 15.0, chunk=16)
    g32 = torch.autograd.grad(fp32, [h, head.weight])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul_dtype(h) == torch.bfloat16
        bf, _ = distill_loss(h, head, lambda sl: t.reshape(-1, 500)[sl], torch.ones(1, 40), 15.0, chunk=16)
    gbf = torch.autograd.grad(bf, [h, head.weight])
    assert bf.dtype == torch.float32 and all(x.dtype == torch.float32 for x in gbf)
    assert not torch.equal(bf, fp32)  # it did run in bf16 ...
    torch.testing.assert_close(bf, fp32, rtol=2e-2, atol=1e-3)  # ... to bf16's precision
    for a, b in zip(gbf, g32):
        assert F.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_steps_read_bf16_teacher_logits_and_sum_the_weight_gradient_in_fp32(kernel):
    """Under bf16 autocast: teacher logits handed over in bf16 give bitwise the loss and gradients of the same
    logits in fp32 (the kernel reads them in fp32 itself), and the output layer's gradient is the fp32 sum over
    chunks of each chunk's bf16 product, exactly (the buffers made once per step change no value)."""
    g = torch.Generator().manual_seed(5)
    h = torch.randn(1, 40, 32, generator=g, requires_grad=True)
    head = torch.nn.Linear(32, 500, bias=False)
    t16 = (torch.randn(1, 40, 500, generator=g) * 3).bfloat16().reshape(-1, 500)

    def run(t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = distill_loss(h, head, lambda sl: t[sl], torch.ones(1, 40), 15.0, chunk=16, kernel=kernel)
        return loss, torch.autograd.grad(loss, [h, head.weight])

    loss16, grads16 = run(t16)
    loss32, grads32 = run(t16.float())
    assert torch.equal(loss16, loss32) and all(torch.equal(a, b) for a, b in zip(grads16, grads32))
    assert grads16[1].dtype == torch.float32
    hb, wb = h.detach().reshape(-1, 32).bfloat16(), head.weight.detach().bfloat16()
    # the buffers: bitwise the fp32 sum, in chunk order, of each chunk's bf16 product (as a plain `+=` makes it)
    w = torch.zeros(500, 32)
    bufs, expect = losses._GradBuffers(torch.zeros(40, 32), w, None), torch.zeros(500, 32)
    for start in range(0, 40, 16):
        sl = slice(start, start + 16)
        gc, hc = torch.randn(len(range(40)[sl]), 500, generator=g).bfloat16(), hb[sl]
        bufs.push(gc, hc, wb, sl)
        expect += gc.t() @ hc
    assert torch.equal(bufs.bufs[1], expect)


def test_loss_kernel_choice(monkeypatch):
    monkeypatch.delenv("GLMD_LOSS_KERNEL", raising=False)
    assert loss_kernel(None, 1000) == "eager"  # small calls never pay for a compilation
    assert loss_kernel("eager", 1 << 30) == "eager"
    monkeypatch.setattr(losses, "compile_problem", lambda: "no C++ compiler (test)")
    assert loss_kernel("auto", 1 << 30) == "eager"  # auto falls back where nothing can be compiled ...
    with pytest.raises(LossError, match="no C.. compiler"):
        loss_kernel("compile", 10)  # ... an explicit request says why it cannot
    monkeypatch.setattr(losses, "compile_problem", lambda: None)
    assert loss_kernel("auto", losses.COMPILE_MIN_ENTRIES) == "compile"
    monkeypatch.setenv("GLMD_LOSS_KERNEL", "eager")
    assert loss_kernel(None, 1 << 30) == "eager"
    monkeypatch.setenv("GLMD_LOSS_KERNEL", "fast")
    with pytest.raises(LossError, match="GLMD_LOSS_KERNEL"):
        loss_kernel(None, 10)
