"""benchmarks/bench_peers.py's pure helpers (batches, step times, the table and the summary lines), offline and
without the peers: TRL and TextBrewer live in .venv-bench only, and importing the benchmark must not need them."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_peers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_peers", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_importing_the_benchmark_imports_no_peer():
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("bench_peers_again", PATH)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    assert not new & {"trl", "textbrewer", "datasets"}  # the peers are imported by their child process only


def test_batches_are_the_first_blocks_in_order(bench):
    blocks = torch.arange(7 * 5).reshape(7, 5)
    b = bench.make_batches(blocks, batch=2, n=3)
    assert b.shape == (3, 2, 5)
    assert torch.equal(b.reshape(-1, 5), blocks[:6])
    with pytest.raises(ValueError, match="smaller --batch"):
        bench.make_batches(blocks, batch=4, n=2)


def test_step_times_drop_the_warm_up(bench):
    ends = [10.0, 13.0, 14.5, 16.5]
    assert bench.step_times(ends, warmup=1) == [3.0, 1.5, 2.0]
    assert bench.step_times(ends, warmup=2) == [1.5, 2.0]
    with pytest.raises(ValueError):
        bench.step_times(ends, warmup=0)


def _rows():
    return [{"method": "naive", "tokens_s": 200.0, "step_s": 10.24, "steps_s": [10.0, 10.48], "peak_gib": 4.1},
            {"method": "trl", "tokens_s": 290.0, "step_s": 7.06, "steps_s": [7.0, 7.12], "peak_gib": 4.8},
            {"method": "textbrewer", "error": "timed out after 600 s"},
            {"method": "matched", "tokens_s": 600.0, "step_s": 3.41, "steps_s": [3.4, 3.42], "peak_gib": 2.0},
            {"method": "own", "tokens_s": 900.0, "step_s": 2.28, "steps_s": [2.2, 2.36], "peak_gib": 1.9}]


def test_fastest_peer_and_the_exact_summary_lines(bench):
    rows = _rows()
    peer = bench.fastest_peer(rows)
    assert peer["method"] == "trl"  # the project's rows and failed peers are never the reference
    assert bench.ratio_line("matched step", rows[3], peer) == \
        "matched step vs fastest peer: 2.07x tokens/s, 0.42x peak memory"
    assert bench.ratio_line("own step", rows[4], peer) == "own step vs fastest peer: 3.10x tokens/s, 0.40x peak memory"
    assert bench.ratio_line("own step", None, peer) == "own step vs fastest peer: n/a tokens/s, n/a peak memory"
    assert bench.fastest_peer([r for r in rows if r["method"] in bench.OURS]) is None


def test_table_and_overhead_line(bench):
    table = bench.format_table(_rows()).splitlines()
    assert table[0].split()[:2] == ["method", "tokens/s"] and len(table) == 2 + 5
    assert "timed out after 600 s" in table[4]
    assert table[3].split()[-4:] == ["290", "7.06", "7.00-7.12", "4.80"]
    line = bench.overhead_line({"teacher_s": 2.0, "student_s": 1.0, "step_s": 3.15})
    assert "+5.0% (loss step 3.15 s" in line and "(full vocabulary)" in line
    line = bench.overhead_line({"teacher_s": 2.0, "student_s": 1.0, "step_s": 3.15}, trainer_step_s=3.45)
    assert "+15.0% (trainer step 3.45 s vs 2.00 + 1.00 s; the loss step alone +5.0%" in line
    assert bench.overhead_line(None).endswith("n/a")


def test_without_bf16_units_trl_runs_with_bf16_off(bench):
    args = bench.parse([])
    args.bf16 = False
    assert bench.choose_methods(args, native_bf16=False) == ["naive", "textbrewer", "trl-fp32", "matched", "own",
                                                             "cache"]
    args.bf16 = True
    assert bench.choose_methods(args, native_bf16=True)[2] == "trl" and "exact" in bench.choose_methods(args, True)


def test_levers_line_names_each_lever(bench):
    c = {"teacher_s": 2.0, "student_s": 1.0, "step_s": 3.0, "step_eager_s": 3.6, "adamw_foreach_s": 0.1,
         "adamw_fused_s": 0.02}
    line = bench.levers_line(c)
    assert "3.60 s eager vs 3.00 s auto" in line and "0.100 s foreach vs 0.020 s fused" in line
    assert "autocast" not in line  # the teacher's bf16 copies are a lever only where the teacher runs bf16
    assert "2.40 s autocast of fp32 weights vs 2.00 s bf16 copies" in bench.levers_line({**c, "teacher_autocast_s": 2.4})
    assert bench.levers_line(None) == "levers: n/a"
