"""Substitute search speed (issue 3, "Speed": substitute search for the whole vocabulary under 10 s).

With the real teacher's input embeddings (SmolLM2-135M: 49,152 x 576) and a map keeping half the
vocabulary (the paper's rate), times for each similarity:

* ``nearest_kept`` for every token of the vocabulary (49k queries x K kept, in chunks);
* ``VocabMap.build`` end to end (ranking, protection, substitutes for the pruned half);

and, for the distillation loss, ``restrict_probs`` on a batch of teacher logits.

    .venv/bin/python benchmarks/bench_vocab.py [--keep 0.5] [--lines 20000]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import torch

from glmd_lib.data.paths import resolve_corpus_dir
from glmd_lib.device import set_threads
from glmd_lib.vocab.frequency import count_tokens
from glmd_lib.models.teacher import load_teacher
from glmd_lib.vocab.substitutes import nearest_kept
from glmd_lib.vocab.vocab_map import VocabMap, kept_size, protected_token_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--lines", type=int, default=20000, help="corpus lines counted for the ranking")
    ap.add_argument("--chunk", type=int, default=2048)
    args = ap.parse_args()
    threads = set_threads()

    model, tok = load_teacher(args.teacher)
    E = model.get_input_embeddings().weight.detach()
    V = E.shape[0]
    print(f"# bench_vocab  {datetime.datetime.now().isoformat(timespec='seconds')}  "
          f"{platform.processor() or platform.machine()}, {threads} torch threads, torch {torch.__version__}")
    counts = count_tokens(resolve_corpus_dir(), tok, max_lines=args.lines)
    K = kept_size(V, args.keep)
    print(f"teacher {args.teacher}: embeddings {V:,} x {E.shape[1]}, keep {args.keep} -> K = {K:,} "
          f"(ranking from {counts.sum():,} corpus tokens)")

    base = VocabMap.build(counts, tok, keep=args.keep, substitute="unk")
    all_ids = torch.arange(V)
    print(f"\n{'method':<11}{'all 49k queries (s)':>21}{'build, pruned only (s)':>25}   (coarse=auto: bf16 + fp32 rerank)")
    results = {}
    for method in ("dot", "cosine", "euclidean"):
        t0 = time.perf_counter()
        results[method] = nearest_kept(E, all_ids, base.kept_ids, method, chunk=args.chunk)
        t_all = time.perf_counter() - t0
        t0 = time.perf_counter()
        vm = VocabMap.build(counts, tok, keep=args.keep, substitute=method, embeddings=E, chunk=args.chunk)
        t_build = time.perf_counter() - t0
        assert set(vm.substitutes.tolist()) <= set(vm.kept_ids.tolist())
        print(f"{method:<11}{t_all:>21.2f}{t_build:>25.2f}")
    t0 = time.perf_counter()
    VocabMap.build(counts, tok, keep=args.keep, substitute="unk")
    print(f"{'unk':<11}{'-':>21}{time.perf_counter() - t0:>25.2f}")

    # the exhaustive fp32 search, for time and agreement
    t0 = time.perf_counter()
    exact = nearest_kept(E, all_ids, base.kept_ids, "cosine", chunk=args.chunk, coarse="fp32")
    t_exact = time.perf_counter() - t0
    keys = torch.nn.functional.normalize(E[base.kept_ids].float(), dim=-1)
    qn = torch.nn.functional.normalize(E.float(), dim=-1)
    s_fast = (qn * keys[results["cosine"]]).sum(-1)
    s_exact = (qn * keys[exact]).sum(-1)
    differ = int((exact != results["cosine"]).sum())
    worse = int((s_exact - s_fast > 1e-5).sum())
    print(f"cosine, exhaustive fp32, all 49k queries: {t_exact:.2f} s; bf16+rerank picks another token for "
          f"{differ} of {V:,} queries, with a lower exact cosine (by > 1e-5) for {worse}")

    logits = torch.randn(8, 128, V)
    for mode in ("renormalize", "substitute"):
        t0 = time.perf_counter()
        for _ in range(3):
            vm.restrict_probs(logits, temperature=15.0, pruned_mass=mode)
        dt = (time.perf_counter() - t0) / 3
        print(f"restrict_probs({mode}) on 8 x 128 x {V:,} logits: {dt * 1e3:.0f} ms")
    print(f"protected tokens: {len(protected_token_ids(tok))}")


if __name__ == "__main__":
    main()
