"""The ``glmd`` command.

  glmd run --profile demo --run-dir runs/demo [--only 03 ...] [-p key=value ...] [-f params.yaml] [--force]
  glmd params [NOTEBOOK]        every notebook's parameters with their help text and profile values
  glmd stage1 --run-dir D [--profile P] [-p key=value ...]   stage 1 alone (``accelerate launch`` can start it)
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from glmd_lib.config.base import PROFILES, ConfigError


def _run(args: argparse.Namespace) -> int:
    from glmd_lib.pipeline import PipelineError, parse_params, run

    profile = args.profile or os.environ.get("GLMD_PROFILE") or "demo"
    run_dir = args.run_dir or os.path.join("runs", profile)
    start = time.perf_counter()
    try:
        params = parse_params(args.param, args.param_file)
        results = run(profile, run_dir, only=args.only, params=params, force=args.force,
                      cell_timeout=args.cell_timeout)
    except (ConfigError, PipelineError) as e:
        print(f"glmd run: error: {e}", file=sys.stderr)
        return 2
    ran = sum(r["status"] == "ran" for r in results)
    print(f"glmd run: {ran} notebook(s) executed, {len(results) - ran} skipped in "
          f"{time.perf_counter() - start:.0f} s. Results: {os.path.abspath(run_dir)}")
    report = os.path.join(run_dir, "report", "report.md")
    if os.path.exists(report):
        print(f"Report: {os.path.abspath(report)}")
    return 0


def _params(args: argparse.Namespace) -> int:
    from glmd_lib.pipeline import config_classes

    for name, cls in sorted(config_classes().items()):
        if args.notebook and not name.startswith(args.notebook):
            continue
        resolved = {p: cls.resolve(profile=p, run_dir="<run_dir>").to_dict() for p in PROFILES}
        print(f"{name}  ({cls.__name__}, writes <run_dir>/{cls.stage}/)")
        for key, help_text in cls.field_help().items():
            values = "  ".join(f"{p}={resolved[p][key]!r}" for p in PROFILES) if key != "run_dir" else ""
            print(f"  {key:22s} {values}\n      {help_text}")
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glmd", description="GLMD Workbench")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="execute the numbered notebooks in order with papermill")
    p_run.add_argument("--profile", choices=PROFILES, default=None, help="default: $GLMD_PROFILE or demo")
    p_run.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    p_run.add_argument("--only", action="append", help="run only this notebook (number or name); repeatable")
    p_run.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="a parameter; repeatable")
    p_run.add_argument("-f", "--param-file", action="append", metavar="YAML", help="parameters from a YAML file")
    p_run.add_argument("--force", action="store_true", help="rerun notebooks even when complete")
    p_run.add_argument("--cell-timeout", type=int, default=None, metavar="S",
                       help="fail a cell that runs longer than S seconds (default: no limit)")
    p_run.set_defaults(func=_run)

    p_par = sub.add_parser("params", help="list the notebooks' parameters")
    p_par.add_argument("notebook", nargs="?", default=None)
    p_par.set_defaults(func=_params)

    p_s1 = sub.add_parser("stage1", help="stage 1 distillation without the notebook", add_help=False)
    p_s1.set_defaults(func=None)

    args, rest = parser.parse_known_args(argv)
    if args.command == "stage1":
        from glmd_lib.distill.stage1 import main as stage1_main

        return stage1_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
