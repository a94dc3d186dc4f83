"""Launching the runs of an experiment: which ones this launcher takes (`shard`), which are
already done (reused) or busy (locked by another live process: skipped with a note), and where
the rest train: one after another in this process, in `jobs` local worker processes, or as Ray
tasks (`backend="ray"`) on a local or remote Ray cluster.

Several launchers may work on one experiment at once (SLURM array jobs with `--shard i/n`, or
simply the same command started twice): a run directory is locked by the process training it,
so each run is trained by exactly one of them, a finished run is reused and an interrupted one
resumes from its checkpoint. Nothing below this module knows about shards, workers or Ray:
each run is `train.engine.run(cfg)`.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import os
import shlex
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdmcl.errors import ConfigError, UserError

BACKENDS = ("local", "ray")


def _fmt_pct(x: float) -> str:
    return f"{100 * x:5.1f}"


def print_run(label: str, rd, summary: dict, out=print) -> None:
    from sdmcl.report import setting_marks

    label = label + setting_marks(summary)
    accs = " ".join(_fmt_pct(a) for a in summary["final_task_accuracy"])
    out(f"{label}: final per-task accuracy (%): {accs}")
    out(f"{label}: final average accuracy {_fmt_pct(summary['final_average_accuracy'])}%  "
        f"forgetting {_fmt_pct(summary['forgetting'])}  BWT {100 * summary['backward_transfer']:+.1f}  "
        f"task-aware {_fmt_pct(summary['final_task_aware_accuracy'])}%  "
        f"({summary['seconds_per_epoch']:.3f} s/epoch)")
    out(f"{label}: results in {rd.path} (plots in {rd.path / 'plots'})")


@dataclass
class Outcome:
    """What became of one run in this launch."""

    label: str
    seed: int
    run_dir: str
    status: str  # finished | reused | skipped | stopped | diverged | error
    summary: dict | None = None
    message: str = ""
    seconds: float = 0.0
    cfg: Any = None  # the run's RunConfig (set by the launcher)


@dataclass
class LaunchReport:
    outcomes: list[Outcome] = field(default_factory=list)
    shard: tuple[int, int] | None = None
    total_runs: int = 0  # before sharding

    @property
    def results(self) -> list[tuple[str, dict]]:
        """(label, summary) of every finished or reused run, in the experiment's order."""
        return [(o.label, o.summary) for o in self.outcomes if o.summary is not None]

    @property
    def config_results(self) -> list[tuple[Any, dict]]:
        """(RunConfig, summary) of every finished or reused run: what report tables group."""
        return [(o.cfg, o.summary) for o in self.outcomes if o.summary is not None]

    def with_status(self, *statuses: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in statuses]

    # read as the list of (label, summary) that run_many used to return
    def __iter__(self):
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i):
        return self.results[i]


# ---------------------------------------------------------------- planning


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text}: expected i/n with 0 <= i < n, e.g. --shard 0/4 ... --shard 3/4")
    return i, n


def take_shard(runs: list, shard: tuple[int, int] | None) -> list:
    """Runs i, i+n, i+2n, ... of the experiment's fixed order: launchers given 0/n ... n-1/n with
    the same command divide the runs among them, without overlap and with none left out."""
    if shard is None:
        return list(runs)
    i, n = shard
    return [r for j, r in enumerate(runs) if j % n == i]


def available_cores() -> int:
    from sdmcl.preflight import usable_cores

    return usable_cores()


def divide_threads(runs: list, jobs: int, oversubscribe: bool) -> list:
    """Copies of the runs whose `train.threads` share the cores among `jobs` parallel runs: unset
    threads become cores // jobs; jobs × threads above the core count is an error unless
    `oversubscribe`. (`train.threads` does not change results or the run stamp.)"""
    cores = available_cores()
    if jobs > cores and not oversubscribe:
        raise ConfigError(f"--jobs {jobs}: this machine has {cores} cores; use --jobs {cores} or fewer, or add --oversubscribe")
    out = []
    for label, cfg in runs:
        cfg = copy.deepcopy(cfg)
        if cfg.train.threads is None:
            cfg.train.threads = max(1, cores // jobs)
        elif cfg.train.threads * jobs > cores and not (oversubscribe or cfg.train.oversubscribe):
            raise ConfigError(f"train.threads={cfg.train.threads} × --jobs {jobs} needs {cfg.train.threads * jobs} cores but "
                              f"this machine has {cores}; lower train.threads or --jobs, or add --oversubscribe")
        out.append((label, cfg))
    return out


def _absolute_paths(cfg):
    """A copy with output and data paths absolute (a Ray worker may start in another directory)."""
    cfg = copy.deepcopy(cfg)
    cfg.output.dir = str(Path(cfg.output.dir).expanduser().resolve())
    if cfg.data.path is not None:
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    return cfg


# ---------------------------------------------------------------- one run (in any process)

_prepared_cache: dict = {}


def _prepared_for(cfg):
    """The loaded tasks for `cfg`, reused across the runs of one process (one data set kept)."""
    from sdmcl.train.engine import prepare

    key = json.dumps([cfg.data.__dict__, cfg.benchmark.__dict__, cfg.train.device], sort_keys=True, default=str)
    if key not in _prepared_cache:
        _prepared_cache.clear()
        _prepared_cache[key] = prepare(cfg)
    prepared = _prepared_cache[key]
    prepared.cfg = cfg
    return prepared


def train_one(label: str, cfg, rerun: bool = False, resume: bool | None = None, quiet: bool = True,
              progress: bool = False, log=None, command: str | None = None, setup=None,
              run_dir: str | None = None) -> Outcome:
    """Train (or reuse, or resume) one run; every expected way it can end becomes an Outcome.
    A module-level function so worker processes and Ray tasks can import it. `setup(engine)`:
    see `train.engine.run` (a stack joins the run's engine). `run_dir`: where the run lives
    when that is not `output.dir/<name>-<stamp>` (a resumed, renamed run)."""
    from sdmcl.errors import DivergenceError
    from sdmcl.train.engine import StopRequested, run
    from sdmcl.train.rundir import RunDir, RunLocked, run_dir_for

    from sdmcl import provenance

    if command is not None:
        provenance.set_command(command)
    t0 = time.perf_counter()
    rd = RunDir(Path(run_dir) if run_dir is not None else run_dir_for(cfg))
    if log is None:
        log = (lambda s: None) if quiet else print
    outcome = Outcome(label, cfg.seed, str(rd.path), "error")
    try:
        prepared = None
        if not (rd.is_finished() and not rerun):
            prepared = _prepared_for(cfg)
        rd, summary = run(cfg, resume=resume, progress=progress, log=log, prepared=prepared, rerun=rerun, run_dir=rd.path,
                          setup=setup)
        outcome.status = "reused" if rd.reused else "finished"
        outcome.summary = summary
    except RunLocked as e:
        outcome.status, outcome.message = "skipped", f"in use by process {e.holder}"
    except StopRequested:
        outcome.status, outcome.message = "stopped", "stopped by a signal; checkpoint written"
    except DivergenceError as e:
        outcome.status, outcome.message = "diverged", str(e)
    except UserError as e:
        outcome.status, outcome.message = "error", str(e)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def _worker_init() -> None:
    # An idle worker ignores SIGINT/SIGTERM (the launcher forwards them); while it trains, the
    # engine's own handler checkpoints and stops the run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ---------------------------------------------------------------- the launcher


class _Progress:
    """One line per finished run (stdout) and an overall bar (stderr, only on a terminal)."""

    def __init__(self, total: int, show_bar: bool):
        from tqdm.auto import tqdm

        self.total, self.done = total, 0
        self.bar = tqdm(total=total, desc="runs", unit="run", dynamic_ncols=True, position=0,
                        disable=None if show_bar and total > 1 else True)
        self.write = tqdm.write

    def finished(self, o: Outcome) -> None:
        self.done += 1
        head = f"[{self.done}/{self.total}] {o.label} (seed {o.seed})"
        if o.summary is not None:
            s = o.summary
            text = (f"{head}: {o.status}, final avg acc {_fmt_pct(s['final_average_accuracy']).strip()}%  "
                    f"forgetting {_fmt_pct(s['forgetting']).strip()}  BWT {100 * s['backward_transfer']:+.1f}  "
                    f"({o.seconds:.1f} s)  {o.run_dir}")
        else:
            text = f"{head}: {o.status}: {o.message}  {o.run_dir}"
        self.write(text, file=sys.stdout)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def run_many(runs, resume=None, progress=True, jobs: int = 1, backend: str = "local", address: str | None = None,
             shard: tuple[int, int] | None = None, rerun: bool = False, oversubscribe: bool = False,
             gpus_per_run: float | None = None, stack: str | int = "auto",
             run_dir: str | Path | None = None) -> LaunchReport:
    """Run every (label, RunConfig) not yet finished. Returns what became of each run.

    Before the first run trains, every run to train is checked against this machine (device,
    threads, output paths, memory for `jobs` runs at once; with Ray each run is checked where
    it starts). `run_dir`: where a single resumed run lives (it may have been renamed or moved).
    `stack`: train up to this many runs of the same shapes at once as one stacked model
    (train/stacked.py); "auto": up to 32 on CUDA, none on the CPU (it does not pay there)."""
    from sdmcl.preflight import check_runs
    from sdmcl.train.rundir import RunDir, RunLocked, run_dir_for

    def where(cfg) -> Path:
        return Path(run_dir) if run_dir is not None else run_dir_for(cfg)

    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be >= 1")
    if backend == "ray" and jobs != 1:
        raise ConfigError("--jobs is for the local backend; with --backend ray each run is a task asking for "
                          "train.threads CPUs (1 when unset) and Ray runs as many at once as the cluster holds")
    if rerun and resume:
        raise ConfigError("--rerun starts runs from scratch and --resume continues one; give only one of them")
    report = LaunchReport(shard=shard, total_runs=len(runs))
    runs = take_shard(runs, shard)
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]}: {len(runs)} of {report.total_runs} runs")
    if oversubscribe:  # --oversubscribe: more threads than cores is the user's explicit choice
        runs = [(label, copy.deepcopy(cfg)) for label, cfg in runs]
        for _, cfg in runs:
            cfg.train.oversubscribe = True
    if jobs > 1:
        runs = divide_threads(runs, jobs, oversubscribe)
    if backend == "ray":
        runs = [(label, _absolute_paths(cfg)) for label, cfg in runs]

    from sdmcl.preflight import check_path_lengths

    for _, cfg in runs:  # before anything looks at the directories: a name too long cannot even be looked up
        check_path_lengths(where(cfg))
    owners: dict[Path, str] = {}
    for label, cfg in runs:
        path = where(cfg).resolve()
        if path in owners:
            raise ConfigError(f"runs {owners[path]!r} and {label!r} (seed {cfg.seed}) are the same config and would "
                              f"share {where(cfg)}; give them different settings or drop one")
        owners[path] = label

    outcomes: list[Outcome | None] = [None] * len(runs)
    todo = []
    for i, (label, cfg) in enumerate(runs):
        rd = RunDir(where(cfg))
        if rd.is_finished() and not rerun:
            outcomes[i] = o = train_one(label, cfg, log=print, run_dir=run_dir)  # reads the summary, says who made it
            if o.status == "error":  # e.g. a damaged summary.json: say so before training anything
                raise UserError(o.message)
            if len(runs) == 1 and o.summary is not None:
                print_run(label, rd, o.summary)
            continue
        holder = rd.lock_holder()
        if holder is not None and resume:
            raise RunLocked(rd.path, holder)  # the one run asked for by --resume
        if holder is not None:
            print(f"{rd.path}: skipped, in use by process {holder} (another launcher is training it)")
            outcomes[i] = Outcome(label, cfg.seed, str(rd.path), "skipped", message=f"in use by process {holder}")
            continue
        todo.append(i)

    if backend != "ray":
        check_runs([(runs[i][1], where(runs[i][1])) for i in todo], _prepared_for, concurrent=min(jobs, len(todo)))
        if jobs > 1:
            _prepared_cache.clear()  # the worker processes load their own data
    bar = _Progress(len(todo), progress)
    try:
        # stacks train in this process: "auto" leaves --jobs and Ray launches as they are
        stack_size = 1 if stack == "auto" and (jobs > 1 or backend == "ray") else resolve_stack(stack, [runs[i][1] for i in todo])
        if stack_size > 1 and (jobs > 1 or backend == "ray"):
            raise ConfigError(f"--stack {stack} trains its stacks in this process; use it without --jobs and --backend ray")
        if backend == "ray":
            _run_ray(runs, todo, outcomes, bar, rerun, resume, address, gpus_per_run)
        elif stack_size > 1:
            _run_stacked(runs, todo, outcomes, bar, rerun, resume, stack_size)
        elif jobs > 1:
            _run_processes(runs, todo, outcomes, bar, rerun, resume, jobs)
        else:
            _run_here(runs, todo, outcomes, bar, rerun, resume, progress, run_dir)
    finally:
        bar.close()
    for o, (_, cfg) in zip(outcomes, runs):
        if o is not None:
            o.cfg = cfg
    report.outcomes = [o for o in outcomes if o is not None]
    errors = report.with_status("error")
    if errors:
        raise UserError(errors[0].message)
    stopped = report.with_status("stopped")
    if stopped:
        from sdmcl.train.engine import StopRequested

        raise StopRequested(*[o.run_dir for o in stopped])
    return report


def _run_here(runs, todo, outcomes, bar, rerun, resume, progress, run_dir=None) -> None:
    """One after another in this process, with the engine's per-task lines and bar."""
    single = len(runs) == 1
    for i in todo:
        label, cfg = runs[i]
        log = print if single else bar.write
        try:
            prepared = _prepared_for(cfg)
        except UserError as e:
            outcomes[i] = Outcome(label, cfg.seed, "", "error", message=str(e))
            return
        log(f"== {label} (seed {cfg.seed}) — {cfg.model.name}"
            + (f" + {cfg.regularizer.name}" if cfg.regularizer.name != "none" else "")
            + f", {len(prepared.tasks)} tasks × {cfg.train.epochs_per_task} epochs on {prepared.dataset_name}")
        o = train_one(label, cfg, rerun=rerun, resume=resume, quiet=False, progress=progress, log=log, run_dir=run_dir)
        outcomes[i] = o
        if single and o.summary is not None:
            from sdmcl.train.rundir import RunDir

            print_run(label, RunDir(Path(o.run_dir)), o.summary)
        else:
            bar.finished(o)
        if o.status in ("stopped", "error"):
            return


# keys that may differ between the runs of one stack (they leave every shape unchanged)
STACK_FREE_KEYS = ("name", "seed", "output.", "benchmark.class_order", "benchmark.class_order_seed", "optim.lr",
                   "optim.grad_clip", "model.k", "model.gaba_switch_activations", "regularizer.", "train.threads",
                   "train.eval_batch_size")


def stack_key(cfg) -> str:
    """Runs with equal keys can train as one stack (the keys of STACK_FREE_KEYS may differ,
    the regularizer's name may not)."""
    from sdmcl.config import flatten

    flat = flatten(cfg.to_dict())
    kept = {k: v for k, v in flat.items() if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in STACK_FREE_KEYS)}
    kept["regularizer.name"] = cfg.regularizer.name
    return json.dumps(kept, sort_keys=True, default=str)


def resolve_stack(stack: str | int, cfgs) -> int:
    """The most runs per stack: a number, or "auto" (32 where the runs train on CUDA, else 1)."""
    if stack == "auto":
        import torch

        on_cuda = bool(cfgs) and all(c.train.device.startswith("cuda") or (c.train.device == "auto" and torch.cuda.is_available())
                                     for c in cfgs)
        return 32 if on_cuda else 1
    try:
        size = int(stack)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise ConfigError(f"--stack {stack}: give the most runs per stack (1 = no stacking) or auto")
    return size


def _run_stacked(runs, todo, outcomes, bar, rerun, resume, size) -> None:
    """Runs of the same shapes in stacks of up to `size`, each stack in threads of this
    process (train/stacked.py); a run that cannot join a stack trains alone in its thread."""
    from sdmcl.train.stacked import run_in_lockstep

    groups: dict[str, list[int]] = {}
    for i in todo:
        groups.setdefault(stack_key(runs[i][1]), []).append(i)
    command = shlex.join(sys.argv)
    for members in groups.values():
        for chunk in (members[j : j + size] for j in range(0, len(members), size)):
            if len(chunk) > 1:
                bar.write(f"== {len(chunk)} runs of the same shapes, as one stack where they can be (train/stacked.py): "
                          + ", ".join(f"{runs[i][0]} (seed {runs[i][1].seed})" for i in chunk))
            fns = [(lambda group, i=i: train_one(runs[i][0], runs[i][1], rerun, resume, command=command, setup=group.join))
                   for i in chunk]
            for i, o in zip(chunk, run_in_lockstep(fns)):
                if isinstance(o, BaseException):
                    raise o
                outcomes[i] = o
                bar.finished(o)
            if any(outcomes[i].status in ("stopped", "error") for i in chunk):
                return


def _run_processes(runs, todo, outcomes, bar, rerun, resume, jobs) -> None:
    """`jobs` worker processes (spawned: no state of this process leaks into them)."""
    pending: dict = {}

    def on_signal(signum, frame):
        for fut in pending:
            fut.cancel()  # not started yet: never starts
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signum)  # a training worker checkpoints and stops
            except ProcessLookupError:
                pass

    ctx = multiprocessing.get_context("spawn")
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, max(len(todo), 1)), mp_context=ctx, initializer=_worker_init) as pool:
            for i in todo:
                label, cfg = runs[i]
                pending[pool.submit(train_one, label, cfg, rerun, resume, command=shlex.join(sys.argv))] = i
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    i = pending.pop(fut)
                    if fut.cancelled():
                        continue
                    o = fut.result()
                    outcomes[i] = o
                    bar.finished(o)
                    if o.status == "error":
                        for other in pending:
                            other.cancel()  # a user error (e.g. missing data): start no more runs
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _run_ray(runs, todo, outcomes, bar, rerun, resume, address, gpus_per_run) -> None:
    """One Ray task per run, asking for train.threads CPUs (1 when unset) and its GPUs."""
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'sdmcl[ray]' (or pip install ray)") from None
    if not todo:
        return
    if address:
        ray.init(address=address, logging_level="warning")
    else:
        ray.init(num_cpus=available_cores(), include_dashboard=False, logging_level="warning")
    try:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        node_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        node_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        task = ray.remote(train_one)
        refs = {}
        for i in todo:
            label, cfg = runs[i]
            cpus = cfg.train.threads or 1
            if cfg.train.threads is None:
                cfg = copy.deepcopy(cfg)
                cfg.train.threads = 1
            gpus = gpus_per_run
            if gpus is None:  # a CUDA device, or `auto` where the cluster has GPUs: one GPU per run
                gpus = 1 if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and node_gpus > 0) else 0
            # a request no node can meet would wait forever
            if cpus > node_cpus:
                raise ConfigError(f"train.threads={cpus}: no node of the Ray cluster has {cpus} CPUs (the largest has "
                                  f"{node_cpus:g}); lower train.threads")
            if gpus > node_gpus:
                raise ConfigError(f"{label}: each run asks for {gpus:g} GPU(s) (train.device {cfg.train.device}, "
                                  f"--gpus-per-run) but no node of the Ray cluster has that many; use train.device=cpu "
                                  "or a smaller --gpus-per-run")
            refs[task.options(num_cpus=cpus, num_gpus=gpus).remote(label, cfg, rerun, resume, command=shlex.join(sys.argv))] = i
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                i = refs.pop(done[0])
                o = ray.get(done[0])
                outcomes[i] = o
                bar.finished(o)
                if o.status == "error":
                    for ref in refs:
                        ray.cancel(ref)
                    break
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref)
            print("sdmcl: interrupted; the Ray tasks are cancelled and their runs resume from their last checkpoint "
                  "with the same command", file=sys.stderr)
            raise
    finally:
        ray.shutdown()
