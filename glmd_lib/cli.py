"""The ``glmd`` command.

  glmd run --profile demo --run-dir runs/demo [--only 03 ...] [-p key=value ...] [-f params.yaml] [--force]
                                -p seeds=[0,1,2]: notebooks 03-06 once per seed in <run_dir>/seed-<k>/
  glmd compare --profile P --run-dir D [-f grid.yaml] [--methods a,b] [-p key=value ...]
                                methods x seeds x sweep points as ordinary runs under D/runs/, shared stages once,
                                then notebook 08 (D/compare/results.csv); compare.methods/seeds/keep_rates/tasks
  glmd params [NOTEBOOK]        every notebook's parameters as -p names them, with help text and profile values
  glmd stage1 --run-dir D [--profile P] [-p key=value ...]   stage 1 alone (``accelerate launch`` can start it)
  glmd export STUDENT_DIR OUT_DIR   a saved student as a plain Hugging Face folder (AutoTokenizer, pipeline)

Every error is one line on stderr (exit code 2): a wrong parameter or parameter file, a run directory that
cannot be used or that another ``glmd run`` / ``glmd stage1`` holds. Ctrl-C prints where the run stopped and
how to resume (exit code 130).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from glmd_lib.config.base import PROFILES, ConfigError, parse_params

PARAMS_HELP = """\
-p KEY=VALUE (repeatable) or -f params.yaml. A stage's own parameter is written stage.key
(-p stage1.lr=2e-3; YAML: `stage1: {lr: 2e-3}`) and reaches only that notebook; a key only one
notebook declares may also be written bare. A shared key (one meaning in every notebook) is written
bare and reaches every notebook that declares it. run_dir and profile are set with --run-dir and
--profile (default: $GLMD_PROFILE, else demo). Profiles: smoke (CI), demo (CPU), gpu (a larger GPU run),
paper (the authors' settings; README "Settings that differ from the paper").
-p seeds=[0,1,2] (glmd run only; YAML `seeds: [0, 1, 2]`) runs notebooks 03-06 once per seed in
<run_dir>/seed-<k>/ with seed=k (00-02 and 07 once in <run_dir>); the report shows mean ± sd.
"""


def _run(args: argparse.Namespace) -> int:
    from glmd_lib.pipeline import NOTEBOOK_DIR, Interrupted, PipelineError, run
    from glmd_lib.runlock import RunDirError, RunLockedError

    profile = args.profile or os.environ.get("GLMD_PROFILE") or "demo"
    run_dir = args.run_dir or os.path.join("runs", profile)
    start = time.perf_counter()
    try:
        params = parse_params(args.param, args.param_file)
        results = run(profile, run_dir, only=args.only, params=params, force=args.force,
                      cell_timeout=args.cell_timeout, notebook_dir=Path(args.notebook_dir or NOTEBOOK_DIR))
    except Interrupted as e:
        print(f"glmd run: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("glmd run: interrupted; rerun the same command to resume (finished notebooks are skipped)",
              file=sys.stderr)
        return 130
    except (ConfigError, PipelineError, RunDirError, RunLockedError) as e:
        print(f"glmd run: error: {e}", file=sys.stderr)
        return 2
    ran = sum(r["status"] == "ran" for r in results)
    print(f"glmd run: {ran} notebook(s) executed, {len(results) - ran} skipped in "
          f"{time.perf_counter() - start:.0f} s. Results: {os.path.abspath(run_dir)}")
    report = os.path.join(run_dir, "report", "report.md")
    if os.path.exists(report):
        print(f"Report: {os.path.abspath(report)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from glmd_lib.compare.runner import run_compare
    from glmd_lib.pipeline import Interrupted, PipelineError
    from glmd_lib.runlock import RunDirError, RunLockedError

    profile = args.profile or os.environ.get("GLMD_PROFILE") or "demo"
    run_dir = args.run_dir or os.path.join("runs", f"compare-{profile}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    try:
        out = run_compare(profile, run_dir, parse_params(args.param, args.param_file), methods, force=args.force,
                          cell_timeout=args.cell_timeout)
    except Interrupted as e:
        print(f"glmd compare: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("glmd compare: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ConfigError, PipelineError, RunDirError, RunLockedError) as e:
        print(f"glmd compare: error: {e}", file=sys.stderr)
        return 2
    plan = out["plan"]
    print(f"glmd compare: {len(plan.runs)} method run(s) + {len(plan.untrained)} untrained reference(s), "
          f"{out['runs_ran']} ran, in {out['seconds']:.0f} s; one task-teacher set for all. "
          f"Results: {plan.root / 'compare' / 'results.csv'}")
    return 0


def _params(args: argparse.Namespace) -> int:
    import dataclasses

    from glmd_lib.config.base import allowed_range
    from glmd_lib.pipeline import addressing, discover

    steps = [s for s in discover() if s.config is not None]
    names = addressing(steps)
    print(PARAMS_HELP)
    for step in steps:
        cls = step.config
        if args.notebook and not step.name.startswith(args.notebook):
            continue
        resolved = {p: cls.resolve(profile=p, run_dir="<run_dir>").to_dict() for p in PROFILES}
        print(f"{step.name}  ({cls.__name__}, writes <run_dir>/{cls.stage}/)")
        ranges = {f.name: allowed_range(f) for f in dataclasses.fields(cls)}
        for key, help_text in cls.field_help().items():
            if key not in ("run_dir", "profile"):  # options of glmd run, not parameters
                values = "  ".join(f"{p}={resolved[p][key]!r}" for p in PROFILES)
                allowed = f" [{ranges[key]}]" if ranges[key] else ""
                print(f"  {names[step.name][key]:28s} {values}\n      {help_text}{allowed}")
        print()
    return 0


def _stage1(rest: list[str]) -> int:
    """``glmd stage1``: check the parameters, then run stage 1 holding the run-directory lock (a ``glmd run``
    on the same directory would delete its checkpoints). In a distributed launch rank 0 holds it for all."""
    from glmd_lib.config.stages import Stage1Config
    from glmd_lib.runlock import RunDirError, RunLockedError, run_lock

    if {"-h", "--help"} & set(rest):
        from glmd_lib.distill.stage1 import main as stage1_main

        return stage1_main(rest)
    pre = argparse.ArgumentParser(add_help=False)  # just what names the run directory; stage1's main parses all
    pre.add_argument("--run-dir", default=None)
    pre.add_argument("--profile", default=None)
    pre.add_argument("-p", "--param", action="append", default=[])
    known, _ = pre.parse_known_args(rest)
    try:
        params = {k.removeprefix(f"{Stage1Config.stage}."): v for k, v in parse_params(known.param).items()}
        cfg = Stage1Config.resolve(known.profile, run_dir=known.run_dir, **params)
        with run_lock(cfg.run_dir, what=" ".join(["glmd stage1", *rest])):
            from glmd_lib.distill.stage1 import main as stage1_main  # torch: seconds, after the cheap checks

            return stage1_main(rest)
    except (ConfigError, RunDirError, RunLockedError) as e:
        print(f"glmd stage1: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glmd stage1: interrupted; rerun the same command to continue from the last checkpoint "
              "(resume=True)", file=sys.stderr)
        return 130


def _export(args: argparse.Namespace) -> int:
    from glmd_lib.models.export import ExportError, export_student
    from glmd_lib.models.student import StudentError

    try:
        out = export_student(args.student_dir, args.out_dir)
    except (ExportError, StudentError, FileNotFoundError) as e:
        print(f"glmd export: error: {e}", file=sys.stderr)
        return 2
    print(f"glmd export: wrote {out} (AutoTokenizer / AutoModelForCausalLM / pipeline load it; see its README.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glmd", description="GLMD Workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="execute the numbered notebooks in order with papermill")
    p_run.add_argument("--profile", choices=PROFILES, default=None, help="default: $GLMD_PROFILE or demo")
    p_run.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    p_run.add_argument("--only", action="append", help="run only this notebook (number or name); repeatable")
    p_run.add_argument("-p", "--param", action="append", metavar="KEY=VALUE",
                       help="a parameter, KEY or STAGE.KEY (see glmd params); repeatable")
    p_run.add_argument("-f", "--param-file", action="append", metavar="YAML", help="parameters from a YAML file")
    p_run.add_argument("--force", action="store_true", help="rerun notebooks even when complete")
    p_run.add_argument("--cell-timeout", type=int, default=None, metavar="S",
                       help="fail a cell that runs longer than S seconds (default: no limit)")
    p_run.add_argument("--notebook-dir", default=None, metavar="DIR",
                       help="run the numbered notebooks of DIR (default: the repository's notebooks/)")
    p_run.set_defaults(func=_run)

    p_cmp = sub.add_parser("compare", help="GLMD against baselines and ablations: methods x seeds x sweep points")
    p_cmp.add_argument("--profile", choices=PROFILES, default=None, help="default: $GLMD_PROFILE or demo")
    p_cmp.add_argument("--run-dir", default=None, help="default: runs/compare-<profile>")
    p_cmp.add_argument("--methods", default=None, help="comma-separated registered methods (overrides compare.methods)")
    p_cmp.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="compare.KEY or any run parameter")
    p_cmp.add_argument("-f", "--param-file", action="append", metavar="YAML", help="the grid / parameters as YAML")
    p_cmp.add_argument("--force", action="store_true", help="rerun every notebook even when complete")
    p_cmp.add_argument("--cell-timeout", type=int, default=None, metavar="S", help="fail a cell running over S s")
    p_cmp.set_defaults(func=_compare)

    p_par = sub.add_parser("params", help="list the notebooks' parameters")
    p_par.add_argument("notebook", nargs="?", default=None)
    p_par.set_defaults(func=_params)

    p_ex = sub.add_parser("export", help="write a saved student as a plain Hugging Face model folder")
    p_ex.add_argument("student_dir", help="a student folder, e.g. <run_dir>/stage2/RTE/student")
    p_ex.add_argument("out_dir", help="the folder to write (replaced atomically)")
    p_ex.set_defaults(func=_export)

    p_s1 = sub.add_parser("stage1", help="stage 1 distillation without the notebook", add_help=False)
    p_s1.set_defaults(func=None)

    args, rest = parser.parse_known_args(argv)
    if args.command == "stage1":
        return _stage1(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
