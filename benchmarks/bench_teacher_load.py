"""How long loading the teacher takes: the one-time GGUF conversion vs. the cached safetensors folder.

Usage: python benchmarks/bench_teacher_load.py [--fresh-cache]
--fresh-cache points GLMD_CACHE at a temporary folder so the conversion (download included) is timed too.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fresh-cache", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.fresh_cache:
        os.environ["GLMD_CACHE"] = tempfile.mkdtemp(prefix="glmd-cache-")
    from glmd_lib.models.teacher import load_teacher

    start = time.perf_counter()
    load_teacher("smollm2-135m")
    first = time.perf_counter() - start
    print(f"first load{' (download + GGUF conversion)' if args.fresh_cache else ''}: {first:.2f} s")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        load_teacher("smollm2-135m")
        times.append(time.perf_counter() - start)
    print(f"cached load: best {min(times):.2f} s, mean {sum(times) / len(times):.2f} s over {args.repeats} loads")


if __name__ == "__main__":
    main()
