"""Stage-1 speed and memory, measured in one run on the same batches.

    .venv/bin/python benchmarks/bench_stage1.py [--teacher smollm2-135m] [--vocab-map DIR] [--batch 8 --seq 128]

Prints:
1. time of a distillation step (teacher forward, no grad + student forward/backward + chunked loss)
   against the sum of a plain teacher forward (no grad) and a plain student forward+backward (HF
   cross-entropy) -> overhead (target <= 10%);
2. the step's peak extra memory (fresh subprocess each, ``ru_maxrss`` growth) against a naive version
   that materialises both models' full-vocabulary logits and an autograd KL (target <= 0.6x);
3. steps/s training from the teacher cache against running the teacher;
4. achieved FLOP/s of the step, (2 x teacher params + 6 x student params) per token, against this
   machine's measured 2048^3 fp32 matmul rate;
5. what the cache's top-k approximation costs: teacher mass (at T) inside the top-k, and the loss and
   gradient of the truncated teacher against the exact one.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from glmd_lib.device import set_threads  # noqa: E402
from glmd_lib.losses import distill_kl_reference, distill_loss, sparse_teacher_fn  # noqa: E402
from glmd_lib.models import count_parameters, load_teacher  # noqa: E402
from glmd_lib.stage1 import Distiller, TeacherRunner  # noqa: E402
from glmd_lib.student import build_student  # noqa: E402
from glmd_lib.teacher_cache import cache_key, ensure_teacher_cache, student_space  # noqa: E402
from glmd_lib.textdata import default_corpus, token_blocks  # noqa: E402
from glmd_lib.vocab import VocabMap  # noqa: E402


def setup(args):
    set_threads()
    teacher, tok = load_teacher(args.teacher)
    vm = VocabMap.load(args.vocab_map, tok) if args.vocab_map else None
    blocks = token_blocks(default_corpus("train"), tok, args.seq, max_blocks=args.batch * (args.batches + 1))
    student = build_student(teacher.config, {"layers": 4, "hidden": 256, "heads": 4}, vm, seed=0)
    return teacher, tok, vm, blocks, student


def timeit(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_rate(n=2048, repeats=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = timeit(lambda: a @ b, repeats)
    return 2 * n**3 / t


def memory_worker(args):
    """Run one step of ``args.memory_worker`` (chunked | naive) and print the peak RSS growth in MB."""
    teacher, tok, vm, blocks, student = setup(args)
    ids = blocks[: args.batch]
    attn = torch.ones_like(ids)
    s_ids = vm.map_ids(ids) if vm is not None else ids
    T = 15.0
    distiller = Distiller(student, T, None, args.chunk, 0.0)
    runner = TeacherRunner(teacher, vm, bf16=False)
    # warm both code paths on a tiny batch so lazy allocations are not counted
    small = ids[:1, :8]
    distiller(vm.map_ids(small) if vm is not None else small, torch.ones_like(small),
              runner.chunks(small, torch.ones_like(small)), torch.ones_like(small).bool(), None)[0].backward()
    student.zero_grad(set_to_none=False)
    # ru_maxrss is useless here (loading the teacher peaks higher than a step): sample the current RSS instead
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    base = rss()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if args.memory_worker == "chunked":
        loss, _ = distiller(s_ids, attn, runner.chunks(ids, attn), attn.bool(), None)
    else:
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=attn).logits
        s_logits = student(input_ids=s_ids, attention_mask=attn).logits
        loss = distill_kl_reference(s_logits, t_logits, attn, T, vm)
    loss.backward()
    done.set()
    sampler.join()
    print(json.dumps({"extra_mb": (max(peak[0], rss()) - base) / 2**20}))


def measure_memory(args, mode):
    cmd = [sys.executable, __file__, "--memory-worker", mode, "--teacher", args.teacher, "--batch", str(args.batch),
           "--seq", str(args.seq), "--batches", "1", "--chunk", str(args.chunk)] + (["--vocab-map", args.vocab_map] if args.vocab_map else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_mb"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--vocab-map", default=None, help="folder or file of a VocabMap (default: full vocabulary)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batches", type=int, default=3, help="distinct batches cycled through")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-topk", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=256, help="positions per loss chunk (Stage1Config.loss_chunk)")
    ap.add_argument("--memory-only", action="store_true", help="only section [2]")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        return memory_worker(args)

    print(f"# bench_stage1  {dt.datetime.now().isoformat(timespec='seconds')}  torch {torch.__version__}  "
          f"threads {set_threads()}  cmd: {' '.join(sys.argv)}")
    if args.memory_only:
        m_chunk, m_naive = measure_memory(args, "chunked"), measure_memory(args, "naive")
        print(f"[2] step peak extra memory: chunked {m_chunk:,.0f} MB, naive full-logits {m_naive:,.0f} MB "
              f"-> {m_chunk / max(m_naive, 1e-9):.2f}x (target <= 0.6x)")
        return
    teacher, tok, vm, blocks, student = setup(args)
    T = 15.0
    B, L = args.batch, args.seq
    tokens = B * L
    batches = [blocks[i * B:(i + 1) * B] for i in range(args.batches)]
    K = int(student.config.vocab_size)
    Pt, Ps = count_parameters(teacher), count_parameters(student)
    print(f"teacher {args.teacher}: {Pt:,} params; student 4x256: {Ps:,} params, {K:,} vocabulary rows; "
          f"batch {B} x {L} = {tokens} tokens; T = {T}")
    runner = TeacherRunner(teacher, vm, bf16=False)
    distiller = Distiller(student, T, None, args.chunk, 0.0)
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(batches)
        ids = batches[state["i"]]
        return ids, torch.ones_like(ids), (vm.map_ids(ids) if vm is not None else ids)

    def teacher_fwd():
        ids, attn, _ = nxt()
        with torch.no_grad():
            teacher(input_ids=ids, attention_mask=attn).logits

    def student_fwd_bwd():
        ids, attn, s_ids = nxt()
        student(input_ids=s_ids, attention_mask=attn, labels=s_ids).loss.backward()
        student.zero_grad(set_to_none=False)

    def distill_step():
        ids, attn, s_ids = nxt()
        loss, _ = distiller(s_ids, attn, runner.chunks(ids, attn), attn.bool(), None)
        loss.backward()
        student.zero_grad(set_to_none=False)

    t_t = timeit(teacher_fwd, args.repeats)
    t_s = timeit(student_fwd_bwd, args.repeats)
    t_d = timeit(distill_step, args.repeats)
    print(f"[1] teacher forward (no grad)      {t_t:7.3f} s  ({tokens / t_t:,.0f} tokens/s)")
    print(f"    student forward+backward       {t_s:7.3f} s")
    print(f"    sum                            {t_t + t_s:7.3f} s")
    print(f"    distillation step              {t_d:7.3f} s  -> overhead {100 * (t_d / (t_t + t_s) - 1):+.1f}% "
          f"(target <= +10%)")

    m_chunk = measure_memory(args, "chunked")
    m_naive = measure_memory(args, "naive")
    print(f"[2] step peak extra memory: chunked {m_chunk:,.0f} MB, naive full-logits {m_naive:,.0f} MB "
          f"-> {m_chunk / max(m_naive, 1e-9):.2f}x (target <= 0.6x)")

    with tempfile.TemporaryDirectory() as d:
        cblocks = torch.cat(batches)
        t0 = time.perf_counter()
        cache, _ = ensure_teacher_cache(Path(d) / "cache", teacher, cblocks, args.cache_topk,
                                        cache_key(args.teacher, teacher, cblocks, args.cache_topk), batch_size=B,
                                        progress=False)
        t_build = time.perf_counter() - t0

        def cached_step():
            state["i"] = (state["i"] + 1) % len(batches)
            idx = torch.arange(state["i"] * B, (state["i"] + 1) * B)
            ids = cblocks[idx]
            attn = torch.ones_like(ids)
            values, t_ids = cache.lookup(idx)
            fn = sparse_teacher_fn(values, student_space(t_ids, vm), K)
            loss, _ = distiller(vm.map_ids(ids) if vm is not None else ids, attn, fn, attn.bool(), None)
            loss.backward()
            student.zero_grad(set_to_none=False)

        t_c = timeit(cached_step, args.repeats)
        print(f"[3] steps/s: live teacher {1 / t_d:.3f}, teacher cache (top-{args.cache_topk}) {1 / t_c:.3f} "
              f"-> {t_d / t_c:.2f}x  (cache of {len(cblocks)} blocks built in {t_build:.1f} s, "
              f"{cache.values.nbytes + cache.ids.nbytes:,} bytes)")

        flops = (2 * Pt + 6 * Ps) * tokens
        rate = matmul_rate()
        print(f"[4] step FLOP/s {flops / t_d / 1e9:.1f} GFLOP/s ((2 x {Pt:,} + 6 x {Ps:,}) x {tokens} per step); "
              f"2048^3 fp32 matmul {rate / 1e9:.1f} GFLOP/s -> {100 * flops / t_d / rate:.0f}% of the matmul rate")

        # [5] the top-k approximation, on the first batch, for this (untrained) student
        ids = cblocks[:B]
        attn = torch.ones_like(ids)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=attn).logits
        t_kept = vm.restrict_logits(t_logits) if vm is not None else t_logits
        s_in = vm.map_ids(ids) if vm is not None else ids
        for Tm in (1.0, T):
            p = torch.softmax(t_kept.float() / Tm, -1)
            mass = p.topk(args.cache_topk, -1).values.sum(-1).mean()
            print(f"[5] T={Tm:g}: teacher mass inside its top-{args.cache_topk} (kept vocabulary): {mass:.3f}")
        s_logits = student(input_ids=s_in, attention_mask=attn).logits.detach().requires_grad_(True)
        exact, _ = distill_loss(s_logits, None, lambda sl: t_kept.reshape(-1, K)[sl].float(), attn.bool(), T)
        (g_exact,) = torch.autograd.grad(exact, s_logits)
        values, t_ids = cache.lookup(torch.arange(B))
        approx, _ = distill_loss(s_logits, None, sparse_teacher_fn(values, student_space(t_ids, vm), K), attn.bool(), T)
        (g_approx,) = torch.autograd.grad(approx, s_logits)
        cos = torch.nn.functional.cosine_similarity(g_exact.flatten(), g_approx.flatten(), dim=0)
        print(f"    T={T:g} loss exact {exact.item():.4f} vs top-{args.cache_topk} cache {approx.item():.4f} "
              f"({100 * (approx.item() / exact.item() - 1):+.1f}%); gradient cosine {cos.item():.3f}")


if __name__ == "__main__":
    main()
