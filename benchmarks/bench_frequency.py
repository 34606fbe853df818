"""Counting throughput against the raw speed of the same fast tokenizer (issue 3, "Speed").

Measured side by side in one run, on the same lines of the shared corpus:

* ``raw``: the fast tokenizer's ``encode_batch_fast`` on batches of lines already in memory (the limit:
  no reading, no counting);
* ``count_tokens``: what notebook 01 runs: read + decode the file, tokenize, ``np.bincount``;
* ``naive``: encode each line with ``tokenizer.encode`` and update a ``collections.Counter``.

Then the whole shared corpus (all train shards) is counted once. Each measurement is repeated and
the best run is reported (the machine is shared, the best run is the least disturbed one).

    .venv/bin/python benchmarks/bench_frequency.py [--lines 40000] [--repeats 3] [--no-full]
"""
from __future__ import annotations

import argparse
import collections
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np

from glmd_lib.data.paths import resolve_corpus_dir
from glmd_lib.data.corpus import iter_corpus_lines
from glmd_lib.vocab.frequency import count_tokens, tokenizer_parallelism
from glmd_lib.models.teacher import load_tokenizer


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--corpus", default=None, help="default: the shared Gutenberg train shards")
    ap.add_argument("--lines", type=int, default=40000, help="lines for the side-by-side comparison")
    ap.add_argument("--naive-lines", type=int, default=10000, help="lines for the (slow) naive loop")
    ap.add_argument("--batch-lines", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-full", action="store_true", help="skip counting the whole corpus")
    args = ap.parse_args()

    corpus = Path(args.corpus) if args.corpus else resolve_corpus_dir()
    tok = load_tokenizer(args.teacher)
    backend = tok.backend_tokenizer
    print(f"# bench_frequency  {datetime.datetime.now().isoformat(timespec='seconds')}  "
          f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores")
    print(f"tokenizer {args.teacher} ({len(tok):,} tokens), corpus {corpus}")

    # the comparison slice: a file holding the first --lines lines, so count_tokens reads from disk
    lines = list(iter_corpus_lines(corpus, max_lines=args.lines))
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_frequency_slice.txt"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    n_bytes = tmp.stat().st_size
    batches = [lines[i:i + args.batch_lines] for i in range(0, len(lines), args.batch_lines)]

    def raw():
        n = 0
        for b in batches:
            n += sum(len(e.ids) for e in backend.encode_batch_fast(b, add_special_tokens=False))
        return n

    def counted():
        return count_tokens(tmp, tok, batch_lines=args.batch_lines)

    with tokenizer_parallelism(True):
        raw()  # warm-up
        t_raw = t_cnt = float("inf")
        for _ in range(args.repeats):  # interleaved: both see the same machine load
            t, n_tokens = best_of(raw, 1)
            t_raw = min(t_raw, t)
            t, counts = best_of(counted, 1)
            t_cnt = min(t_cnt, t)
    assert counts.sum() == n_tokens, (counts.sum(), n_tokens)

    naive_lines = lines[: args.naive_lines]

    def naive():
        c = collections.Counter()
        for line in naive_lines:
            c.update(tok.encode(line, add_special_tokens=False))
        return sum(c.values())

    t_naive, n_naive = best_of(naive, 1)

    print(f"\nside by side: {len(lines):,} lines, {n_bytes / 1e6:.1f} MB, {n_tokens:,} tokens, best of {args.repeats}")
    print(f"{'method':<44}{'seconds':>9}{'M tokens/s':>12}{'vs raw':>9}")
    rows = [("raw: encode_batch_fast, lines in memory", t_raw, n_tokens),
            ("count_tokens: file -> counts", t_cnt, n_tokens),
            (f"naive: encode per line + Counter ({len(naive_lines):,} lines)", t_naive, n_naive)]
    for name, t, n in rows:
        print(f"{name:<44}{t:>9.2f}{n / t / 1e6:>12.2f}{(n / t) / (n_tokens / t_raw):>9.2f}")
    print(f"counting overhead over raw: {100 * (t_cnt / t_raw - 1):+.1f}% of the time")

    if not args.no_full:
        t0 = time.perf_counter()
        full = count_tokens(corpus, tok, batch_lines=args.batch_lines)
        t_full = time.perf_counter() - t0
        print(f"\nwhole corpus: {full.sum():,} tokens, {(full > 0).sum():,} types seen, "
              f"{t_full:.1f} s ({full.sum() / t_full / 1e6:.2f} M tokens/s)")
    tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
