"""Compare finished stage-1 students on the same held-out blocks, with intervals and paired differences.

    .venv/bin/python benchmarks/stage1_students.py runs/a runs/b ...   (each a run directory with a finished stage 1)

Every student is scored by ``glmd_lib.distill.heldout.evaluate`` on the held-out blocks of the *first* run's
settings (they must share teacher, tokenizer and ``seq_len``). Top-1 agreement with the teacher and the
student's perplexity carry 95% intervals from a bootstrap over blocks; each later run's difference from the
first is a paired bootstrap over the same blocks, and a difference is claimed only where its interval excludes 0.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from glmd_lib.config.stages import Stage1Config
from glmd_lib.device import set_threads
from glmd_lib.distill.heldout import evaluate
from glmd_lib.distill.stage1 import heldout_blocks
from glmd_lib.models.student import load_student
from glmd_lib.models.teacher import load_teacher
from glmd_lib.tasks.intervals import mean_interval


def _settings(cfg: Stage1Config) -> str:
    keys = ("init", "temperature", "steps", "max_blocks", "student_layers", "student_hidden", "train_embeddings")
    return ", ".join(f"{k}={getattr(cfg, k)}" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    set_threads()
    cfgs = [Stage1Config.from_json(r / "stage1" / "config.json") for r in args.runs]
    first = cfgs[0]
    teacher, tok = load_teacher(first.teacher)
    valid = heldout_blocks(first, tok)
    print(f"# stage1_students  {time.strftime('%Y-%m-%dT%H:%M:%S')}  teacher {first.teacher}; held-out: "
          f"{len(valid)} blocks x {first.seq_len} tokens; 95% intervals: bootstrap over blocks (1,000 resamples)")
    per_run = []
    for run, cfg in zip(args.runs, cfgs):
        st = load_student(run / "stage1" / "student")
        per = {}
        m = evaluate(st.model, teacher, st.vocab_map, valid, first.batch_size, cfg.temperature, per_block=per)
        per_run.append(per)
        print(f"{run}: {_settings(cfg)}; {m['valid_tokens']:,} tokens\n"
              f"    top-1 agreement {m['valid_top1_agreement']:.3f} [{m['valid_top1_agreement_low']:.3f}, "
              f"{m['valid_top1_agreement_high']:.3f}]  perplexity {m['valid_student_ppl']:,.0f} "
              f"[{m['valid_student_ppl_low']:,.0f}, {m['valid_student_ppl_high']:,.0f}] (teacher "
              f"{m['valid_teacher_ppl']:.1f})  KL {m['valid_kl']:.3f}")
    base = per_run[0]
    for run, per in zip(args.runs[1:], per_run[1:]):
        # per-block differences (the blocks are equally long, so their mean is the per-token difference)
        agree = mean_interval([a - b for a, b in zip(per["agree"], base["agree"])])
        nll = mean_interval([a - b for a, b in zip(per["nll"], base["nll"])])
        verdict = lambda iv: "not distinguishable" if not iv.excludes_zero else "differs"  # noqa: E731
        print(f"{run} - {args.runs[0]}: top-1 agreement {agree.value:+.3f} [{agree.low:+.3f}, {agree.high:+.3f}] "
              f"({verdict(agree)}); perplexity ratio {math.exp(nll.value):.3f} [{math.exp(nll.low):.3f}, "
              f"{math.exp(nll.high):.3f}] ({verdict(nll)}); n = {agree.n} blocks")


if __name__ == "__main__":
    with torch.no_grad():
        main()
