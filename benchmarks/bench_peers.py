"""One stage-1 step of this project against its peers, measured in one run on the same batches (issue #12).

    make bench-peers     # creates .venv-bench (TRL, TextBrewer, this project), then runs this script with it
    .venv-bench/bin/python benchmarks/bench_peers.py [--batch 8 --seq 256] [--warmup 2 --steps 3] [--vocab-map DIR]

Every method trains the same student (4 layers x 256, built by ``glmd_lib`` from the teacher's config, fp32
master weights, AdamW, gradient clipping at 1.0) from the same teacher (SmolLM2-135M-Instruct, ``smollm2-135m``)
on the same batches (shared corpus text, the teacher's tokenizer, ``--batch`` x ``--seq`` tokens, all positions
real), at T = 15, each in its own subprocess:

  naive       Hugging Face DistilBERT-style KD: both models' full logits, KLDivLoss(batchmean) at T, x T^2 (fp32)
  textbrewer  TextBrewer 0.2.1 GeneralDistiller with logits adaptors, its default kd_loss_type 'ce' at T (fp32)
  trl         TRL GKDTrainer with its defaults (bf16 autocast and gradient checkpointing as SFTConfig sets them,
              generalised JSD with beta 0.5), except lmbda = 0: it trains on the given batches instead of
              generating on-policy completions. Its loss never applies GKDConfig.temperature (that is the sampling
              temperature), so it trains at T = 1. On a CPU without bf16 units its bf16 default is emulated (many
              times slower), so there it runs as ``trl-fp32`` (its defaults with bf16 off) unless asked otherwise.
  matched     this project's step (glmd_lib Trainer + Distiller + TeacherRunner: the chunked T^2 KL from the
              student's hidden states), full vocabulary like the peers; bf16 autocast for teacher and student where
              the CPU has bf16 units (``--precision``), fp32 master weights and fp32 loss
  own         the same with the project's compressed vocabulary (24,576 kept rows: ``--vocab-map``, else
              ``runs/demo/vocab``, else a map built here from corpus counts)
  cache       matched, the teacher's signal from the exact hidden-state cache (its body ran once, beforehand)
  exact       matched in fp32 throughout (the bitwise-repeatable setting); only where ``matched`` runs bf16

Timing: a global optimizer-step hook stamps the end of every step; the first ``--warmup`` steps (loading,
torch.compile, allocator warm-up) are dropped and a method's step time is the mean of the next ``--steps``.
Peak memory: the child's peak resident set (``ru_maxrss``, loading included), read right after training. The
``matched`` child then also times, interleaved on the same batches, a teacher forward (full logits), a student
forward + backward (Hugging Face cross-entropy) and its own step without the optimizer (means of the rounds): the
overhead figure is the trainer's timed step (the table's mean) against the teacher forward plus the student's
forward/backward, and the loss step alone is given beside it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEERS = ("naive", "textbrewer", "trl", "trl-fp32")
OURS = ("matched", "own", "cache", "exact")
LABELS = {"naive": "naive KD (HF DistilBERT style, fp32)", "textbrewer": "TextBrewer GeneralDistiller (fp32)",
          "trl": "TRL GKDTrainer, defaults (bf16, grad. ckpt)", "trl-fp32": "TRL GKDTrainer, defaults but bf16 off",
          "matched": "this project, matched (full vocabulary)", "own": "this project, kept vocabulary",
          "cache": "this project, matched + hidden-state cache", "exact": "this project, matched, fp32 (exact)"}
STUDENT = {"layers": 4, "hidden": 256, "heads": 4}


# --------------------------------------------------------------------------------------------
# pure helpers (tested in tests/test_bench_peers.py without any peer installed)
# --------------------------------------------------------------------------------------------

def make_batches(blocks: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """``[n, batch, L]``: the first ``n * batch`` token blocks, in order (every method sees these, in this order)."""
    if blocks.ndim != 2 or blocks.shape[0] < n * batch:
        raise ValueError(f"need {n * batch} token blocks of one length for {n} batches of {batch}, got "
                         f"{tuple(blocks.shape)}; use a smaller --batch/--steps or more corpus text")
    return blocks[: n * batch].reshape(n, batch, blocks.shape[1]).clone()


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Per-step seconds from the end stamps of consecutive optimizer steps, the first ``warmup`` steps dropped."""
    if warmup < 1:
        raise ValueError("warmup must be >= 1: the first step has no start stamp")
    return [b - a for a, b in zip(ends[warmup - 1:], ends[warmup:])]


def fastest_peer(rows: list[dict]) -> dict | None:
    """The peer row with the most tokens/s (rows that failed or timed out carry no ``tokens_s``)."""
    done = [r for r in rows if r["method"] in PEERS and r.get("tokens_s")]
    return max(done, key=lambda r: r["tokens_s"]) if done else None


def ratio_line(label: str, row: dict | None, peer: dict | None) -> str:
    """``<label> vs fastest peer: <x>x tokens/s, <y>x peak memory`` (``n/a`` where a figure is missing)."""
    if not (row and peer and row.get("tokens_s") and peer.get("tokens_s")):
        return f"{label} vs fastest peer: n/a tokens/s, n/a peak memory"
    return (f"{label} vs fastest peer: {row['tokens_s'] / peer['tokens_s']:.2f}x tokens/s, "
            f"{row['peak_gib'] / peer['peak_gib']:.2f}x peak memory")


def format_table(rows: list[dict]) -> str:
    """The result table: method, tokens/s, step seconds (mean, min-max over the timed steps), peak memory."""
    head = f"{'method':<46} {'tokens/s':>9} {'step s':>8} {'(min-max)':>13} {'peak GiB':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        label = LABELS.get(r["method"], r["method"])
        if not r.get("tokens_s"):
            lines.append(f"{label:<46} {r.get('error', 'failed')}")
            continue
        spread = f"{min(r['steps_s']):.2f}-{max(r['steps_s']):.2f}"
        lines.append(f"{label:<46} {r['tokens_s']:>9,.0f} {r['step_s']:>8.2f} {spread:>13} {r['peak_gib']:>9.2f}")
    return "\n".join(lines)


def overhead_line(c: dict | None, trainer_step_s: float | None = None) -> str:
    """The trainer's timed step (``trainer_step_s``: the mean the table shows, optimizer included) against a teacher
    forward plus a student forward/backward (means of the component rounds); the loss step alone (no optimizer,
    the same rounds) in brackets. Without ``trainer_step_s`` the loss step stands in for it."""
    if not c:
        return "step overhead over teacher forward + student forward/backward (full vocabulary): n/a"
    parts = c["teacher_s"] + c["student_s"]
    if trainer_step_s is None:
        step, which, alone = c["step_s"], "loss step", ""
    else:
        alone = f"; the loss step alone {100 * (c['step_s'] / parts - 1):+.1f}%"
        step, which = trainer_step_s, "trainer step"
    return (f"step overhead over teacher forward + student forward/backward (full vocabulary): "
            f"{100 * (step / parts - 1):+.1f}% ({which} {step:.2f} s vs {c['teacher_s']:.2f} + "
            f"{c['student_s']:.2f} s{alone}; target <= +10%)")


def levers_line(c: dict | None) -> str:
    """What each lever is worth, measured in the matched child (means of its rounds)."""
    if not c:
        return "levers: n/a"
    parts = [f"loss kernel: step {c['step_eager_s']:.2f} s eager vs {c['step_s']:.2f} s auto",
             f"AdamW step {c['adamw_foreach_s']:.3f} s foreach vs {c['adamw_fused_s']:.3f} s fused"]
    if "teacher_autocast_s" in c:
        parts.insert(1, f"teacher forward {c['teacher_autocast_s']:.2f} s autocast of fp32 weights vs "
                        f"{c['teacher_s']:.2f} s bf16 copies")
    return "levers (matched child): " + "; ".join(parts)


# --------------------------------------------------------------------------------------------
# the child side: one method per process
# --------------------------------------------------------------------------------------------

class StepClock:
    """Stamps the end of every optimizer step of any torch optimizer in this process (one stamp per step: the
    wrappers of accelerate and HF call the inner optimizer's step from their own) and prints progress."""

    def __init__(self, method: str, total: int):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.method, self.total, self.ends = method, total, []
        self.handle = register_optimizer_step_post_hook(self._hook)

    def _hook(self, *_):
        now = time.perf_counter()
        if self.ends and now - self.ends[-1] < 1e-3:  # a wrapper's step around the inner one
            return
        self.ends.append(now)
        took = f"{now - self.ends[-2]:.2f} s" if len(self.ends) > 1 else "(first)"
        print(f"progress   {self.method}: step {len(self.ends)}/{self.total} {took}", flush=True)

    def stop(self) -> list[float]:
        """The stamps so far; later optimizer steps (the levers' AdamW timing) are not stamped."""
        self.handle.remove()
        return list(self.ends)


def peak_gib() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _load(args, vocab_map=None):
    from glmd_lib.device import set_threads
    from glmd_lib.models.student import build_student
    from glmd_lib.models.teacher import load_teacher

    set_threads(args.threads)
    teacher, tok = load_teacher(args.teacher)
    student = build_student(teacher.config, STUDENT, vocab_map, seed=0)
    batches = torch.load(Path(args.workdir) / "batches.pt")
    return teacher, tok, student, batches


def child_naive(args) -> dict:
    """HF DistilBERT-style distillation loop (examples/research_projects/distillation/distiller.py, KD term)."""
    import torch.nn.functional as F

    teacher, _, student, batches = _load(args)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr)
    kl, T = torch.nn.KLDivLoss(reduction="batchmean"), args.temperature
    clock = StepClock("naive", len(batches))
    student.train()
    for ids in batches:
        attn = torch.ones_like(ids)
        s = student(input_ids=ids, attention_mask=attn).logits
        with torch.no_grad():
            t = teacher(input_ids=ids, attention_mask=attn).logits
        mask = attn.bool().unsqueeze(-1).expand_as(s)
        s_sel, t_sel = (torch.masked_select(x, mask).view(-1, s.size(-1)) for x in (s, t))
        loss = kl(F.log_softmax(s_sel / T, -1), F.softmax(t_sel / T, -1)) * T ** 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return {"ends": clock.stop(), "peak_gib": peak_gib()}


def child_textbrewer(args) -> dict:
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    teacher, _, student, batches = _load(args)
    out = Path(args.workdir) / "textbrewer"
    tc = TrainingConfig(device="cpu", output_dir=str(out), log_dir=None, ckpt_steps=len(batches))
    adaptor = lambda batch, outputs: {"logits": outputs.logits}  # noqa: E731
    distiller = GeneralDistiller(tc, DistillationConfig(temperature=args.temperature), teacher, student,
                                 adaptor, adaptor)
    data = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)} for ids in batches]
    clock = StepClock("textbrewer", len(batches))
    with distiller:
        distiller.train(torch.optim.AdamW(student.parameters(), lr=args.lr), data, num_steps=len(batches),
                        max_grad_norm=1.0)
    return {"ends": clock.stop(), "peak_gib": peak_gib()}


def child_trl(args, bf16: bool | None) -> dict:
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class InOrder(GKDTrainer):  # the same batches as every other method, in the same order
        def _get_train_sampler(self, *a, **k):
            return SequentialSampler(self.train_dataset)

    teacher, tok, student, batches = _load(args)
    rows = batches.reshape(-1, batches.shape[-1])
    data = Dataset.from_dict({"input_ids": rows.tolist()})

    def collate(features):
        ids = torch.tensor([f["input_ids"] for f in features])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}

    extra = {} if bf16 is None else {"bf16": bf16}
    cfg = GKDConfig(output_dir=str(Path(args.workdir) / "trl"), per_device_train_batch_size=batches.shape[1],
                    max_steps=len(batches), lmbda=0.0, learning_rate=args.lr, max_grad_norm=1.0,
                    report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=0,
                    use_cpu=True, **extra)
    trainer = InOrder(model=student, teacher_model=teacher, args=cfg, train_dataset=data, data_collator=collate,
                      processing_class=tok)
    clock = StepClock("trl" if bf16 is None else "trl-fp32", len(batches))
    trainer.train()
    return {"ends": clock.stop(), "peak_gib": peak_gib(),
            "settings": {"bf16": cfg.bf16, "gradient_checkpointing": cfg.gradient_checkpointing, "beta": cfg.beta,
                         "lmbda": cfg.lmbda, "temperature (sampling only)": cfg.temperature}}


def _project_parts(args, method: str):
    """The project's pieces for ``method``: runner, loss closure, distiller, batch source, precision."""
    from glmd_lib.config.stages import Stage1Config
    from glmd_lib.distill.distiller import Distiller
    from glmd_lib.distill.stage1 import make_loss_fn
    from glmd_lib.distill.teacher import TeacherRunner
    from glmd_lib.distill.teacher_cache import cache_key, ensure_teacher_cache
    from glmd_lib.trainer import IndexBatches
    from glmd_lib.vocab.vocab_map import VocabMap

    vm = VocabMap.load(Path(args.workdir) / "vocab") if method == "own" else None
    teacher, tok, student, batches = _load(args, vm)
    bf16 = args.bf16 and method != "exact"
    runner = TeacherRunner(teacher, vm, bf16, args.temperature)
    blocks = batches.reshape(-1, batches.shape[-1])
    cache = None
    if method == "cache":
        key = cache_key(args.teacher, teacher, blocks, None, mode="hidden", bf16=bf16)
        cache, _ = ensure_teacher_cache(Path(args.workdir) / f"cache-{os.getpid()}", teacher, blocks, None, key,
                                        batch_size=batches.shape[1], progress=False)
    cfg = Stage1Config.resolve("demo", run_dir=str(Path(args.workdir) / "run"), temperature=args.temperature,
                               batch_size=batches.shape[1], seq_len=batches.shape[2], loss_chunk=args.chunk,
                               use_vocab_map=vm is not None, teacher_cache=cache is not None)
    loss_fn = make_loss_fn(cfg, runner, vm, "causal", tok, cache, int(student.config.vocab_size))
    distiller = Distiller(student, args.temperature, None, args.chunk, 0.0)
    source = IndexBatches(len(blocks), batches.shape[1], lambda idx: {
        "input_ids": blocks[idx], "attention_mask": torch.ones_like(blocks[idx]), "index": idx}, shuffle=False)
    return teacher, student, runner, loss_fn, distiller, source, batches, bf16


def child_project(args, method: str) -> dict:
    from glmd_lib.trainer import TrainConfig, Trainer

    teacher, student, runner, loss_fn, distiller, source, batches, bf16 = _project_parts(args, method)
    out = Path(args.workdir) / f"{method}-out"
    cfg = TrainConfig(steps=len(batches), lr=args.lr, warmup_steps=0, checkpoint_every=0, bf16=bf16, cpu=True)
    clock = StepClock(method, len(batches))
    Trainer(distiller, loss_fn, source, out, cfg, progress=False).train(resume=False)
    res = {"ends": clock.stop(), "peak_gib": peak_gib(), "settings": {"bf16": bf16, "chunk": args.chunk}}
    if method == "matched":
        res["components"] = components(args, teacher, student, loss_fn, distiller, batches, bf16)
    return res


def components(args, teacher, student, loss_fn, distiller, batches, bf16: bool) -> dict:
    """Interleaved on the same batches, the mean of ``--component-reps`` rounds each (the statistic of the timed steps):
    teacher forward, student forward/backward
    and the step without optimizer (the overhead figure), plus the levers: the step with the eager loss kernel,
    the teacher under plain autocast (fp32 weights cast at every call) and AdamW foreach vs fused."""
    from torch.func import functional_call

    from glmd_lib.device import autocast
    from glmd_lib.distill.teacher import bf16_linear_weights

    weights = bf16_linear_weights(teacher) if bf16 else {}

    def teacher_fwd(ids, w=weights):
        with torch.no_grad(), autocast("cpu", bf16):
            functional_call(teacher, w, (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def student_fwd_bwd(ids):
        with autocast("cpu", bf16):
            loss = student(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        student.zero_grad(set_to_none=True)

    def step(ids, kernel="auto"):
        os.environ["GLMD_LOSS_KERNEL"] = kernel
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "index": torch.arange(len(ids))}
        with autocast("cpu", bf16):
            loss, _ = loss_fn(batch, distiller)
        loss.backward()
        distiller.zero_grad(set_to_none=True)

    fns = {"teacher_s": teacher_fwd, "student_s": student_fwd_bwd, "step_s": step,
           "step_eager_s": lambda ids: step(ids, "eager")}
    if bf16:
        fns["teacher_autocast_s"] = lambda ids: teacher_fwd(ids, {})
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(args.component_reps + 1):  # the first round warms up
        ids = batches[rep % len(batches)]
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(ids)
            if rep:
                times[name].append(time.perf_counter() - t0)
        print(f"progress   components: round {rep}/{args.component_reps}", flush=True)
    os.environ.pop("GLMD_LOSS_KERNEL", None)
    return {**{k: sum(v) / len(v) for k, v in times.items()}, **adamw_times(student)}


def adamw_times(model) -> dict:
    """One AdamW step over the student's parameters: PyTorch's default (foreach) against fused=True."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    out = {}
    for name, kw in (("adamw_foreach_s", {"foreach": True}), ("adamw_fused_s", {"fused": True})):
        opt = torch.optim.AdamW(params, lr=1e-6, **kw)
        opt.step()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            opt.step()
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def run_child(args) -> None:
    method = args.child
    if method == "naive":
        res = child_naive(args)
    elif method == "textbrewer":
        res = child_textbrewer(args)
    elif method in ("trl", "trl-fp32"):
        res = child_trl(args, None if method == "trl" else False)
    else:
        res = child_project(args, method)
    print("result " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------------------------
# the parent: data, one subprocess per method, the table
# --------------------------------------------------------------------------------------------

def prepare(args, work: Path) -> None:
    """Token batches (and, for ``own``, the vocabulary map) written where every child reads them."""
    from glmd_lib.data.blocks import token_blocks
    from glmd_lib.data.corpus import default_corpus
    from glmd_lib.models.teacher import load_tokenizer
    from glmd_lib.vocab.vocab_map import VocabMap

    tok = load_tokenizer(args.teacher)
    n = args.warmup + args.steps
    blocks = token_blocks(default_corpus("train"), tok, args.seq, max_blocks=n * args.batch)
    torch.save(make_batches(blocks, args.batch, n), work / "batches.pt")
    if "own" not in args.methods:
        return
    src = args.vocab_map or (REPO / "runs" / "demo" / "vocab" if (REPO / "runs/demo/vocab").is_dir() else None)
    if src:
        vm = VocabMap.load(src, tok)
        print(f"kept vocabulary: {vm.num_kept:,} rows from {src}")
    else:
        from glmd_lib.vocab.frequency import count_tokens

        counts = count_tokens(default_corpus("train"), tok, max_lines=args.vocab_lines)
        vm = VocabMap.build(counts, tok, keep=args.keep, substitute="unk")
        print(f"kept vocabulary: {vm.num_kept:,} rows, built here from the counts of {args.vocab_lines:,} corpus "
              f"lines (UNK substitutes: the step's cost does not depend on them)")
    vm.save(work / "vocab")


def launch(args, method: str, work: Path) -> dict:
    """Run one method in a fresh process; its progress lines are echoed, its result parsed."""
    cmd = [sys.executable, __file__, "--child", method, "--workdir", str(work)] + args.passthrough
    env = dict(os.environ, TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore")
    log = work / f"{method}.log"
    t0, result = time.perf_counter(), None
    with open(log, "w") as err, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                                 start_new_session=True) as p:
        # also a child that hangs without printing; its whole group (compile workers hold its stdout too)
        watchdog = threading.Timer(args.child_timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
        watchdog.start()
        try:
            for line in p.stdout:
                if line.startswith("progress "):
                    print(line.rstrip()[len("progress "):], flush=True)
                elif line.startswith("result "):
                    result = json.loads(line[len("result "):])
        finally:
            p.wait()
            watchdog.cancel()
    if result is None and time.perf_counter() - t0 >= args.child_timeout:
        return {"method": method, "error": f"timed out after {args.child_timeout} s"}
    if result is None:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        print(f"  {method} failed (exit {p.returncode}); last lines of {log}:\n{tail}", flush=True)
        return {"method": method, "error": f"failed (exit {p.returncode})"}
    steps = step_times(result["ends"], args.warmup)
    tokens = args.batch * args.seq
    return {"method": method, "steps_s": steps, "step_s": sum(steps) / len(steps),
            "tokens_s": tokens * len(steps) / sum(steps), "peak_gib": result["peak_gib"],
            "settings": result.get("settings"), "components": result.get("components"),
            "wall_s": time.perf_counter() - t0}


def choose_methods(args, native_bf16: bool) -> list[str]:
    if args.methods:
        return args.methods
    methods = ["naive", "textbrewer", "trl" if native_bf16 else "trl-fp32", "matched", "own", "cache"]
    return methods + (["exact"] if args.bf16 else [])


def header(args) -> None:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    from glmd_lib.device import cpu_bf16_native

    print(f"# bench_peers  {dt.datetime.now().isoformat(timespec='seconds')}  {platform.machine()}, "
          f"{os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"torch {torch.__version__}, transformers {version('transformers')}, trl {version('trl')}, "
          f"textbrewer {version('textbrewer')}; CPU bf16 units: {'yes' if cpu_bf16_native() else 'no (AVX2 only)'}")
    print(f"cmd: {' '.join(sys.argv)}")
    print(f"teacher {args.teacher}; student {STUDENT['layers']}x{STUDENT['hidden']}; batch {args.batch} x "
          f"{args.seq} = {args.batch * args.seq:,} tokens; T = {args.temperature:g}; {args.warmup} warm-up + "
          f"{args.steps} timed steps per method; project precision: {'bf16 autocast' if args.bf16 else 'fp32'}")


def report(rows: list[dict]) -> None:
    print()
    print(format_table(rows))
    for r in rows:
        if r.get("settings") and r["method"].startswith("trl"):
            print(f"  {r['method']}: {r['settings']}")
    print("notes: TRL's GKD loss does not apply its temperature (GKDConfig.temperature is for sampling): its row "
          "trains at T = 1 with the generalised JSD (beta 0.5); TextBrewer's 'ce' loss is the soft cross-entropy "
          "(the KL's gradient, no T^2); the others compute T^2 KL at T = 15. Compare speed and memory, not losses.")
    matched = next((r for r in rows if r["method"] == "matched"), None)
    print(overhead_line(matched.get("components") if matched else None, matched.get("step_s") if matched else None))
    print(levers_line(matched.get("components") if matched else None))
    peer = fastest_peer(rows)
    print(f"fastest peer: {LABELS[peer['method']] if peer else 'none finished'}; targets: matched >= 2x tokens/s "
          f"at <= 0.5x peak memory, own >= 3x")
    print(ratio_line("matched step", matched, peer))
    print(ratio_line("own step", next((r for r in rows if r["method"] == "own"), None), peer))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped before timing (>= 1)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per method")
    ap.add_argument("--temperature", type=float, default=15.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--chunk", type=int, default=256, help="the project's loss chunk (Stage1Config.loss_chunk)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="the project's rows: auto = bf16 autocast where the CPU has bf16 units, else fp32")
    ap.add_argument("--methods", nargs="+", choices=PEERS + OURS, default=None)
    ap.add_argument("--vocab-map", default=None, help="the kept vocabulary for 'own' (default: runs/demo/vocab, "
                                                       "else built here)")
    ap.add_argument("--keep", type=int, default=24576, help="kept rows when the map is built here")
    ap.add_argument("--vocab-lines", type=int, default=50000, help="corpus lines counted when the map is built here")
    ap.add_argument("--component-reps", type=int, default=3, help="timed rounds of the matched child's components")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--child-timeout", type=int, default=600, help="seconds before a method is given up")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        run_child(args)
        return 0
    from glmd_lib.device import cpu_bf16_native

    import importlib.util

    missing = [m for m in ("trl", "textbrewer") if importlib.util.find_spec(m) is None]
    if missing and not args.methods:
        print(f"bench_peers: {', '.join(missing)} not installed in {sys.prefix}: the peers run in their own venv; "
              f"use `make bench-peers` (or --methods to pick what this venv can run). Skipped.")
        return 0
    native = cpu_bf16_native()
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and native)
    args.methods = choose_methods(args, native)
    keep = ("teacher", "temperature", "lr", "chunk", "component_reps", "threads")
    args.passthrough = [x for k in keep if getattr(args, k) is not None
                        for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))] + (["--bf16"] if args.bf16 else [])
    header(args)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as d:
        work = Path(d)
        prepare(args, work)
        rows = []
        for i, m in enumerate(args.methods, 1):
            print(f"[{i}/{len(args.methods)}] {LABELS[m]}  ({time.perf_counter() - t_start:.0f} s so far)", flush=True)
            rows.append(launch(args, m, work))
    print(f"total {time.perf_counter() - t_start:.0f} s")
    report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
