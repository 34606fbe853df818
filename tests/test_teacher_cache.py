"""The teacher cache: exact top-k contents, reuse and rebuild, and training from it equals the top-k loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glmd_lib.losses import distill_kl, distill_loss, sparse_teacher_fn
from glmd_lib.teacher_cache import (TeacherCache, TeacherCacheError, cache_key, ensure_teacher_cache,
                                    student_space)
from glmd_lib.vocab import VocabMap


@pytest.fixture
def blocks(smol_tokenizer, sample_text):
    from glmd_lib.textdata import token_blocks

    return token_blocks([sample_text], smol_tokenizer, seq_len=16, max_blocks=6)


def test_cache_holds_the_teachers_topk_and_is_reused(tmp_path, tiny_llama, blocks):
    key = cache_key("tiny", tiny_llama, blocks, 8)
    cache, built = ensure_teacher_cache(tmp_path / "c", tiny_llama, blocks, 8, key, batch_size=4, progress=False)
    assert built and len(cache) == 6
    assert isinstance(cache.values, np.memmap)
    with torch.no_grad():
        logits = tiny_llama(input_ids=blocks[[1, 4]]).logits
    v, i = logits.topk(8, -1)
    cv, ci = cache.lookup(torch.tensor([1, 4]))
    assert cv.dtype == torch.float16 and ci.dtype == torch.int64
    torch.testing.assert_close(cv.float(), v, rtol=1e-3, atol=1e-3)
    assert (ci == i).float().mean() > 0.99  # fp16 ties aside, the same ids
    again, built = ensure_teacher_cache(tmp_path / "c", tiny_llama, blocks, 8, key, progress=False)
    assert not built
    # other k or other blocks: rebuilt, never silently reused
    _, built = ensure_teacher_cache(tmp_path / "c", tiny_llama, blocks, 4, cache_key("tiny", tiny_llama, blocks, 4),
                                    progress=False)
    assert built and TeacherCache(tmp_path / "c").topk == 4
    other = blocks.flip(0)
    assert cache_key("tiny", tiny_llama, other, 4) != cache_key("tiny", tiny_llama, blocks, 4)


def test_damaged_cache_is_refused_or_rebuilt(tmp_path, tiny_llama, blocks):
    key = cache_key("tiny", tiny_llama, blocks, 4)
    ensure_teacher_cache(tmp_path / "c", tiny_llama, blocks, 4, key, progress=False)
    (tmp_path / "c" / "ids.npy").write_bytes(b"garbage")
    with pytest.raises(TeacherCacheError):
        TeacherCache(tmp_path / "c")
    _, built = ensure_teacher_cache(tmp_path / "c", tiny_llama, blocks, 4, key, progress=False)
    assert built and TeacherCache(tmp_path / "c").ids.shape == (6, 16, 4)


def test_loss_from_cache_equals_topk_loss_of_the_live_teacher(tmp_path, tiny_llama, blocks, smol_tokenizer):
    k = 16
    cache, _ = ensure_teacher_cache(tmp_path / "c", tiny_llama, blocks, k, cache_key("t", tiny_llama, blocks, k),
                                    progress=False)
    V = len(smol_tokenizer)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 16, V, generator=g)
    idx = torch.tensor([0, 5])
    with torch.no_grad():
        t = tiny_llama(input_ids=blocks[idx]).logits
    mask = torch.ones(2, 16)
    values, ids = cache.lookup(idx)
    got, _ = distill_loss(s, None, sparse_teacher_fn(values, student_space(ids, None), V), mask, 2.0)
    expect = distill_kl(s, t, mask, 2.0, topk=k)
    torch.testing.assert_close(got, expect, rtol=2e-3, atol=2e-3)


def test_student_space_drops_pruned_ids(smol_tokenizer):
    counts = torch.arange(len(smol_tokenizer)).flip(0)  # low ids most frequent
    vm = VocabMap.build(counts, smol_tokenizer, 0.25, substitute="unk")
    ids = torch.tensor([[vm.kept_ids[0].item(), vm.pruned_ids[0].item(), vm.kept_ids[5].item()]])
    assert student_space(ids, vm).tolist() == [[0, -1, 5]]
