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
5. what the cache's approximation costs, at T = 1 and T = 15 on ``--batches`` batches: teacher mass
   inside the top-k, how well the tail-moment estimate matches the exact tail mass, and the loss and
   gradient of the old -inf truncation and of the tail-filled teacher (format 2) against the exact one.
   ``--only cache-approx`` runs just this item.
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
from glmd_lib.distill.losses import distill_kl_reference, distill_loss  # noqa: E402
from glmd_lib.models.teacher import count_parameters, load_teacher  # noqa: E402
from glmd_lib.distill.distiller import Distiller  # noqa: E402
from glmd_lib.distill.teacher import (TeacherRunner, cached_teacher_fn, sparse_teacher_fn,  # noqa: E402
                                      student_space, tail_fill)
from glmd_lib.models.student import build_student  # noqa: E402
from glmd_lib.distill.teacher_cache import cache_key, ensure_teacher_cache  # noqa: E402
from glmd_lib.data.blocks import token_blocks  # noqa: E402
from glmd_lib.data.corpus import default_corpus  # noqa: E402
from glmd_lib.vocab.vocab_map import VocabMap  # noqa: E402


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


def cache_approx(args, teacher, student, vm, cache, cblocks, B, K):
    """[5] the cache's approximation against the exact teacher, for this (untrained) student.

    Over the first ``args.batches`` batches of ``cblocks``: losses are means over the batches, the
    gradient cosine is over all of them at once (the gradient w.r.t. the student's logits).
    """
    n_b = len(cblocks) // B
    cos = torch.nn.functional.cosine_similarity
    batches = []
    for b in range(n_b):
        idx = torch.arange(b * B, (b + 1) * B)
        ids = cblocks[idx]
        attn = torch.ones_like(ids)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=attn).logits
            t_kept = (vm.restrict_logits(t_logits) if vm is not None else t_logits).float()
            s_logits = student(input_ids=vm.map_ids(ids) if vm is not None else ids, attention_mask=attn).logits
        del t_logits
        batches.append((idx, attn, t_kept, s_logits.float()))
    print(f"[5] teacher cache (top-{cache.topk} + tail moments) vs the exact teacher: {n_b} batches of "
          f"{B} x {cblocks.shape[1]}, untrained student")
    for Tm in (1.0, 15.0):
        mass, tail_err, losses, grads = [], [], {"exact": [], "trunc": [], "fill": []}, \
            {"exact": [], "trunc": [], "fill": []}
        for idx, attn, t_kept, s_logits in batches:
            values, t_ids, tail = cache.lookup(idx)
            sid = student_space(t_ids, vm)
            p = torch.softmax(t_kept / Tm, -1)
            mass.append(p.topk(cache.topk, -1).values.sum(-1).mean())
            # exact tail mass (kept tokens outside the cached top-k) vs the log-normal moment estimate
            z = t_kept / Tm
            in_top = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, sid.clamp(min=0), sid >= 0)
            lse_exact = torch.logsumexp(z.masked_fill(in_top, -float("inf")), -1)
            n_tail = (~in_top).sum(-1).float()
            lse_est = n_tail.log() + tail_fill(tail, Tm) / Tm
            tail_err.append((lse_est - lse_exact).abs().mean())
            fns = {"exact": lambda sl, t=t_kept: t.reshape(-1, K)[sl],
                   "trunc": sparse_teacher_fn(values, sid, K),
                   "fill": sparse_teacher_fn(values, sid, K, tail=tail, temperature=Tm)}
            for name, fn in fns.items():
                s = s_logits.clone().requires_grad_(True)
                loss, _ = distill_loss(s, None, fn, attn.bool(), Tm, chunk=args.chunk)
                (g,) = torch.autograd.grad(loss, s)
                losses[name].append(loss.item())
                grads[name].append(g.flatten())
        ex = sum(losses["exact"]) / n_b
        g_ex = torch.cat(grads["exact"])
        print(f"    T={Tm:g}: teacher mass inside its top-{cache.topk} (kept vocabulary) {torch.stack(mass).mean():.3f}; "
              f"tail log-mass estimate off by {torch.stack(tail_err).mean():.3f} (mean |log est - log exact|)")
        print(f"    T={Tm:g}: loss exact {ex:.4f}")
        for name, label in (("trunc", f"top-{cache.topk} truncated (-inf, format 1)"),
                            ("fill", f"top-{cache.topk} + tail fill (format 2)")):
            v = sum(losses[name]) / n_b
            print(f"         {label:<36} {v:10.4f} ({100 * (v / ex - 1):+9.1f}%)  gradient cosine "
                  f"{cos(torch.cat(grads[name]), g_ex, dim=0).item():.4f}")


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
    ap.add_argument("--only", choices=["cache-approx"], default=None,
                    help="cache-approx: only section [5] (build a cache of --batches batches, compare at T=1, 15)")
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
    if args.only == "cache-approx":
        with tempfile.TemporaryDirectory() as d:
            cblocks = torch.cat(batches)
            t0 = time.perf_counter()
            cache, _ = ensure_teacher_cache(Path(d) / "cache", teacher, cblocks, args.cache_topk,
                                            cache_key(args.teacher, teacher, cblocks, args.cache_topk),
                                            batch_size=B, progress=False)
            print(f"    cache of {len(cblocks)} blocks built in {time.perf_counter() - t0:.1f} s")
            cache_approx(args, teacher, student, vm, cache, cblocks, B, K)
        return
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

        def cached_step(teacher_fn_for):
            """One student step on the next cached batch; ``teacher_fn_for(idx)`` reads the cache."""
            state["i"] = (state["i"] + 1) % len(batches)
            idx = torch.arange(state["i"] * B, (state["i"] + 1) * B)
            ids = cblocks[idx]
            attn = torch.ones_like(ids)
            loss, _ = distiller(vm.map_ids(ids) if vm is not None else ids, attn, teacher_fn_for(idx),
                                attn.bool(), None)
            loss.backward()
            student.zero_grad(set_to_none=False)

        def from_cache(c):
            """What stage 1 trains on: the library's teacher_fn of a cache (top-k: tail-filled; hidden: exact)."""
            return lambda idx: cached_teacher_fn(c, idx, runner, vm, K, T, torch.device("cpu"))

        t_c = timeit(lambda: cached_step(from_cache(cache)), args.repeats)
        print(f"[3] steps/s: live teacher {1 / t_d:.3f}, teacher cache (top-{args.cache_topk}) {1 / t_c:.3f} "
              f"-> {t_d / t_c:.2f}x  (cache of {len(cblocks)} blocks built in {t_build:.1f} s, "
              f"{cache.values.nbytes + cache.ids.nbytes + cache.tail.nbytes:,} bytes)")

        # the exact cache: the teacher's final hidden states, kept rows of its output layer applied per chunk
        t0 = time.perf_counter()
        hcache, _ = ensure_teacher_cache(Path(d) / "hidden", teacher, cblocks, None,
                                         cache_key(args.teacher, teacher, cblocks), batch_size=B, progress=False)
        t_hbuild = time.perf_counter() - t0

        t_h = timeit(lambda: cached_step(from_cache(hcache)), args.repeats)
        print(f"    teacher cache (hidden states, exact) {1 / t_h:.3f} steps/s -> {t_d / t_h:.2f}x  "
              f"(built in {t_hbuild:.1f} s, {hcache.hidden.nbytes:,} bytes)")

        flops = (2 * Pt + 6 * Ps) * tokens
        rate = matmul_rate()
        print(f"[4] step FLOP/s {flops / t_d / 1e9:.1f} GFLOP/s ((2 x {Pt:,} + 6 x {Ps:,}) x {tokens} per step); "
              f"2048^3 fp32 matmul {rate / 1e9:.1f} GFLOP/s -> {100 * flops / t_d / rate:.0f}% of the matmul rate")

        cache_approx(args, teacher, student, vm, cache, cblocks, B, K)

if __name__ == "__main__":
    main()
