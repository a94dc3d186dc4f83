"""`sdmcl` command line: run | compare | report | list | data.

Every mistake a user can make in a config, data file, checkpoint or output directory
ends in one line on stderr and exit code 2; a diverged run exits with 3; a run stopped
by SIGINT/SIGTERM writes a checkpoint and exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdmcl.errors import DivergenceError, UserError


def cmd_run(args) -> int:
    from sdmcl.config import load_experiment

    run_dir = None
    if args.resume:
        # `--resume DIR key=value`: argparse takes the first override for the config
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        if args.config and "=" not in args.config:
            raise UserError(f"sdmcl run: give either a config ({args.config}) or --resume RUN_DIR, not both")
        from sdmcl.train.rundir import config_for_resume

        cfg = config_for_resume(args.resume, overrides)
        runs, resume, run_dir = [(cfg.name, cfg)], True, args.resume
    else:
        if not args.config:
            raise UserError("sdmcl run: give a config file (e.g. experiments/quickstart.yaml) or --resume RUN_DIR")
        runs = load_experiment(args.config, args.overrides)
        resume = None
    from sdmcl.launch import run_many
    from sdmcl.report import comparison_table

    results = run_many(runs, resume=resume, progress=not args.no_progress, run_dir=run_dir)
    if len(results) > 1:
        print()
        print(comparison_table(results))
    return 0


def cmd_compare(args) -> int:
    from sdmcl.config import load_experiment

    runs = []
    for path in args.configs:
        overrides = list(args.overrides)
        if args.seeds:
            overrides.append("seeds=[" + ",".join(map(str, args.seeds)) + "]")
        for label, cfg in load_experiment(path, overrides):
            runs.append((label if label != cfg.name or len(args.configs) == 1 else Path(path).stem, cfg))
    from sdmcl.launch import run_many
    from sdmcl.report import comparison_table

    if args.out:
        from sdmcl.preflight import check_output_file

        check_output_file(args.out, "--out")  # before any training
    results = run_many(runs, progress=not args.no_progress)
    print()
    table = comparison_table(results)
    print(table)
    if args.out:
        from sdmcl.errors import OutputError

        try:
            Path(args.out).write_text(table + "\n")
        except OSError as e:
            raise OutputError(f"--out {args.out}: could not write the table ({e.strerror or e}); it is printed above") from None
    return 0


def cmd_report(args) -> int:
    from sdmcl.report import report_run_dirs

    print(report_run_dirs(args.run_dirs, note=lambda line: print(f"sdmcl: note: {line}", file=sys.stderr)))
    return 0


def cmd_list(args) -> int:
    from sdmcl.data.sources import SOURCES
    from sdmcl.models.topk import K_APPROACHES
    from sdmcl.registry import MODELS, REGULARIZERS, load_all
    from sdmcl.train.optim import OPTIMIZERS

    load_all()
    print("models:")
    for name, e in sorted(MODELS.items()):
        print(f"  {name:<14} {e.summary}")
    print("k approaches: " + ", ".join(K_APPROACHES))
    print("regularizers:")
    for name, e in sorted(REGULARIZERS.items()):
        print(f"  {name:<14} {e.summary}")
    print("optimizers:")
    for name, desc in OPTIMIZERS.items():
        print(f"  {name:<14} {desc}")
    print("data sources (benchmarks are any source split into tasks of benchmark.classes_per_task classes):")
    for name, info in SOURCES.items():
        print(f"  {name:<14} {info.description}")
    exp_dir = Path(__file__).resolve().parents[2] / "experiments"
    if exp_dir.is_dir():
        print(f"experiments ({exp_dir}):")
        for p in sorted(exp_dir.glob("*.yaml")):
            lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
            first = lines[0].lstrip("# ").strip() if lines else ""
            print(f"  {p.stem:<36} {first}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sdmcl", description="Continual learning with Sparse Distributed Memory MLPs")
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train a config (or every variant × seed of an experiment file)")
    r.add_argument("config", nargs="?", help="YAML config or experiment file")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.k=5 train.epochs_per_task=50 seeds=[0,1,2]")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="run several configs × seeds and print one table (mean ± s.e.m.)")
    c.add_argument("configs", nargs="+", help="YAML configs/experiment files")
    c.add_argument("--seeds", type=int, nargs="+", help="seeds for every config")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every config")
    c.add_argument("--out", help="also write the table to this file")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="table of finished runs")
    rep.add_argument("run_dirs", nargs="+")
    rep.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="models, k approaches, regularizers, optimizers, data sources, experiments")
    ls.set_defaults(func=cmd_list)

    try:
        from sdmcl.data import commands as data_commands

        data_commands.add_parser(sub)
    except ImportError:
        pass
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    # key=value overrides may come after options (`run CONFIG --no-progress model.k=5`)
    if extra:
        if args.command == "run" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            ap.error("unrecognized arguments: " + " ".join(extra))
    from sdmcl.train.engine import StopRequested

    try:
        handler = getattr(args, "func", None) or args.handler
        return handler(args) or 0
    except UserError as e:
        print(f"sdmcl: error: {e}", file=sys.stderr)
        return e.exit_code
    except DivergenceError as e:
        print(f"sdmcl: error: {e}", file=sys.stderr)
        return e.exit_code
    except StopRequested:
        print("sdmcl: stopped by signal; a checkpoint was written. Resume with the same command, or `sdmcl run --resume RUN_DIR`.",
              file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("sdmcl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
