"""Scale: seconds per training epoch of large SDM layers (exact and approximate Top-K), of
stacked runs against the same runs one after another, and of regularized runs against
plain ones; peak memory and the approximate Top-K's recall. One process, paired.

    .venv/bin/python benchmarks/scale.py --quick     # a few minutes on a quiet 2-core CPU
    .venv/bin/python benchmarks/scale.py             # the full measurement (about 10 minutes on a shared 2-core CPU)
    .venv/bin/python benchmarks/scale.py --sections sizes --neurons 1000 10000

Workload: Split Fashion-MNIST (tasks of 12,000 training images, 2 classes each), SDMLP with
k = 10, SGD lr 0.05, batch 128, gradient clipping at 1.0, the SDM constraints after every
step, one thread (`--threads`); training epochs only (no evaluation). Every SDMLP is
measured *after the GABA switch*: its counters are set to T, so every neuron is inhibited
by the full v_{k+1} (exact Top-K with k active per input, the cheapest exact case; while
some responses g are below 1 more neurons are active and the exact layer costs more), and
its addresses trained on task 1 first (`--warm-epochs`, with the top-32 approximate layer,
the same start for every variant of a size).

Sections (each alternates its variants round by round, so all of them see the same
machine load; the first round is warm-up; reported: medians of per-round ratios):
- `sizes`: SDMLP with 1,000 / 10,000 / 100,000 neurons, exact and approximate
  (`model.topk_search: lowrank` with its defaults, and with the top-32 rule for the large
  layers; at 1,000 neurons the default falls back to the exact path), and the ReLU MLP with 1,000 units, each trained from the
  same start on task 2 after a warm-up on task 1. The ratio is to the exact SDMLP-1K epoch
  of the same round. The exact layers of 10,000 and more neurons train only `--steps`
  steps per round, scaled to a full epoch (94 steps); the others whole epochs (in
  `--quick` mode every variant trains 20 steps per round, scaled, so per-epoch costs
  such as the approximate layer's index rebuild weigh ~5× more). Also reported: the
  approximate layer's recall of the true top k and of the active units (sampled against
  the exact layer), the share of its steps that were approximate, and memory: the peak
  resident size during the variant's epochs above the size before them, and the variant's
  state (weights and buffers).
- `stack`: S = 1, 5, 20 SDMLP-1K runs (seeds 0..S−1) trained as one stack
  (train/stacked.py) against the same S runs one after another.
- `ewc`: SDMLP-1K with per-task EWC (the paper's setting) training the fifth task, so
  with the Fishers and anchors of four past tasks, against the plain SDMLP and against EWC
  with its penalty built in autograd every step (how sdmcl did it before the closed
  form); training epochs alone, and with the evaluation `sdmcl run` adds every epoch
  (the five tasks' test sets).

The machine's load average is printed before and after: on a shared machine the ratios
hold, the seconds do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from sdmcl.config import parse_config
from sdmcl.train.engine import Engine, call_hook, prepare
from sdmcl.train.rundir import RunDir
from sdmcl.train.stacked import train_stacked_epoch

FULL_STEPS = 94  # steps of one epoch of a 12,000-image task at batch 128
_PREPARED: dict = {}


def engine_for(model: dict, seed: int = 0, regularizer: dict | None = None) -> Engine:
    cfg = parse_config({
        "name": "scale", "seed": seed, "data": {"source": "fashion-mnist"},
        "model": model, "regularizer": regularizer or {"name": "none"},
        "optim": {"name": "sgd", "lr": 0.05, "grad_clip": 1.0},
        "train": {"batch_size": 128, "threads": torch.get_num_threads()}, "output": {"progress": False, "plots": False},
    })
    if "data" not in _PREPARED:
        _PREPARED["data"] = prepare(cfg)
    prepared = dataclasses.replace(_PREPARED["data"], cfg=cfg)
    rd = RunDir(Path(tempfile.mkdtemp(prefix="sdmcl-scale-")) / "run")
    rd.create(cfg)
    engine = Engine(prepared, rd, progress=False, log=lambda s: None)
    call_hook(engine.model, "apply_constraints")
    topk = getattr(engine.model, "topk", None)
    if topk is not None and topk.approach == "gaba_switch":  # after the switch: g = 1 for every neuron
        topk.gaba_counters.fill_(topk.gaba_switch_activations)
    return engine


def sdmlp(neurons: int, search: str = "exact", **extra) -> dict:
    return {"name": "sdmlp", "neurons": neurons, "k": 10, "gaba_switch_activations": 150_000, "topk_search": search, **extra}


TOP32 = {"search_margin": None, "search_candidates": 32}  # the top-k rule (models/topk_search.py)


def truncated(task, steps: int | None, batch_size: int = 128):
    """The task with only its first `steps` batches of training data (None: all of it)."""
    if steps is None:
        return task
    n = steps * batch_size
    return dataclasses.replace(task, train_x=task.train_x[:n], train_y=task.train_y[:n])


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The largest resident size seen (sampled every 2 ms) while the block runs."""

    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


# ---------------------------------------------------------------- sections


def bench_sizes(args) -> None:
    variants = []
    for n in args.neurons:  # (third field: trained for --steps steps per round only, the large exact layers)
        variants.append((f"SDMLP-{n // 1000}K exact", sdmlp(n), n >= 10_000))
        variants.append((f"SDMLP-{n // 1000}K approximate", sdmlp(n, "lowrank"), False))
        if n >= 10_000:
            variants.append((f"SDMLP-{n // 1000}K approximate top-32", sdmlp(n, "lowrank", **TOP32), False))
    variants.append(("ReLU-1K", {"name": "relu_mlp", "neurons": 1000}, False))
    base = variants[0][0]
    # one trained start per size: task 1 trained `--warm-epochs` epochs after the switch (with
    # the top-32 approximate layer, which is cheap at every size), then every variant of that
    # size starts task 2 from it
    starts = {}
    for n in args.neurons:
        donor = engine_for(sdmlp(n, "lowrank", search_min_neurons=0, **TOP32))
        call_hook(donor.model, "on_task_start", donor.tasks[0])
        t0 = time.perf_counter()
        for e in range(args.warm_epochs):
            donor.train_epoch(donor.tasks[0], e)
        starts[n] = {k: v.clone() for k, v in donor.model.state_dict().items()}
        print(f"  start for {n:,} neurons: {args.warm_epochs} epoch(s) of task 1 in {time.perf_counter() - t0:.0f} s", flush=True)
        del donor
    engines, memory, times, stats = {}, {}, {}, {}
    for label, model, _ in variants:
        before = rss()
        engine = engines[label] = engine_for(model)
        tasks = engine.tasks
        if model["name"] == "sdmlp":  # (the start's second moment already holds task 1's inputs)
            engine.model.load_state_dict(starts[model["neurons"]], strict=False)
        else:
            engine.train_epoch(tasks[0], 0)
        call_hook(engine.model, "on_task_start", tasks[1])
        if hasattr(engine.model, "neuron_stats"):
            engine.model.neuron_stats()  # reset the windows
        memory[label] = {"state": state_bytes(engine.model), "built": rss() - before, "peak": 0}
        times[label] = []
        stats[label] = []
    print(f"\n## SDM layer sizes (training epochs of task 2; {args.rounds} rounds, load {load()})\n")
    for r in range(args.rounds + 1):
        line = {}
        for label, model, partial in variants:
            engine = engines[label]
            steps = args.steps if partial else args.epoch_steps
            task = truncated(engine.tasks[1], steps)
            with PeakRSS() as peak:
                t0 = time.perf_counter()
                engine.train_epoch(task, r)
                line[label] = (time.perf_counter() - t0) * FULL_STEPS / (steps or FULL_STEPS)
            memory[label]["peak"] = max(memory[label]["peak"], peak.peak - peak.start)
            if r > 0:
                times[label].append(line[label])
            if hasattr(engine.model, "neuron_stats"):
                s = engine.model.neuron_stats()
                if r > 0 and s.get("search_approx_fraction") is not None:
                    stats[label].append(s)
        print(f"  round {r}{' (warm-up)' if r == 0 else ''}, s/epoch: " + ", ".join(f"{k} {v:.2f}" for k, v in line.items())
              + f"; load {load()}", flush=True)
    print("\n| variant | s/epoch (median) | ratio to " + base + " (median of rounds) | top-k recall | active-unit recall "
          "| approximate steps | state | peak during epochs |")
    print("|---|---|---|---|---|---|---|---|")
    for label, _, partial in variants:
        ts = times[label]
        ratio = statistics.median(t / b for t, b in zip(ts, times[base]))
        st = stats[label]

        def mean(key):
            vals = [s[key] for s in st if s.get(key) is not None]
            return f"{statistics.mean(vals):.4f}" if vals else "—"

        approx = mean("search_approx_fraction") if st else "—"
        note = f" ({args.steps} steps/round)" if partial else ""
        print(f"| {label}{note} | {statistics.median(ts):.3f} | {ratio:.2f} | {mean('search_topk_recall')} | "
              f"{mean('search_active_recall')} | {approx} | {gib(memory[label]['state'])} | {gib(memory[label]['peak'])} |")


def bench_stack(args) -> None:
    print(f"\n## Stacked runs: S SDMLP-1K runs as one stack against the same runs one after another (load {load()})\n")
    print("| S | sequential s/epoch (all S runs) | stacked s/epoch | stacked / sequential (median of rounds) |")
    print("|---|---|---|---|")
    for size in args.stacks:
        engines = [engine_for(sdmlp(1000), seed=s) for s in range(size)]
        seq, stk = [], []
        for r in range(args.rounds + 1):
            order = ("seq", "stk") if r % 2 == 0 else ("stk", "seq")
            for what in order:
                t0 = time.perf_counter()
                if what == "seq":
                    for e in engines:
                        e.train_epoch(truncated(e.tasks[1], args.epoch_steps), r)
                else:
                    train_stacked_epoch([(e, truncated(e.tasks[1], args.epoch_steps), r) for e in engines])
                dt = (time.perf_counter() - t0) * FULL_STEPS / (args.epoch_steps or FULL_STEPS)
                if r > 0:
                    (seq if what == "seq" else stk).append(dt)
        ratio = statistics.median(b / a for a, b in zip(seq, stk))
        print(f"| {size} | {statistics.median(seq):.2f} | {statistics.median(stk):.2f} | {ratio:.2f} |", flush=True)


def bench_ewc(args) -> None:
    print(f"\n## Regularized runs: SDMLP-1K + per-task EWC against the plain SDMLP, training task 5 (load {load()})\n")
    plain = engine_for(sdmlp(1000))
    ewc = engine_for(sdmlp(1000), regularizer={"name": "ewc", "lam": 200.0, "beta": 0.005})
    old = engine_for(sdmlp(1000), regularizer={"name": "ewc", "lam": 200.0, "beta": 0.005})
    old.quadratic = None  # the penalty built in autograd every step, dense gradients
    old.model.set_row_sparse_updates(False)
    plain.train_epoch(truncated(plain.tasks[0], args.warm_steps), 0)
    for e in (ewc, old):
        e.model.load_state_dict(plain.model.state_dict())
        for task in e.tasks[:4]:  # four task ends: the Fishers and anchors of tasks 1-4
            e.regularizer.on_task_end(e.model, task)
    variants = (("plain", plain), ("EWC (closed form)", ewc), ("EWC (autograd penalty)", old))
    train = {k: [] for k, _ in variants}
    whole = {k: [] for k, _ in variants}
    for r in range(args.rounds + 1):
        for label, e in variants:
            task = e.tasks[4]
            t0 = time.perf_counter()
            loss = e.train_epoch(truncated(task, args.epoch_steps), r)
            t1 = time.perf_counter()
            e.evaluate(5)  # what `sdmcl run` adds every epoch: the seen tasks' test sets (10,000 images)
            t2 = time.perf_counter()
            if r > 0:
                scale = FULL_STEPS / (args.epoch_steps or FULL_STEPS)
                train[label].append((t1 - t0) * scale)
                whole[label].append((t1 - t0) * scale + (t2 - t1))
    print("| variant | training s/epoch | ratio to plain | with the evaluation of 5 tasks: s/epoch | ratio to plain |")
    print("|---|---|---|---|---|")
    for label, _ in variants:
        r1 = statistics.median(t / b for t, b in zip(train[label], train["plain"]))
        r2 = statistics.median(t / b for t, b in zip(whole[label], whole["plain"]))
        print(f"| {label} | {statistics.median(train[label]):.3f} | {r1:.2f} | {statistics.median(whole[label]):.3f} | {r2:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and steps: a few minutes")
    ap.add_argument("--sections", nargs="+", default=["sizes", "stack", "ewc"], choices=["sizes", "stack", "ewc"])
    ap.add_argument("--neurons", nargs="+", type=int, default=[1000, 10_000, 100_000])
    ap.add_argument("--stacks", nargs="+", type=int, default=[1, 5, 20])
    ap.add_argument("--rounds", type=int, help="measured rounds per section (default 5; --quick 2)")
    ap.add_argument("--steps", type=int, help="steps per round of the large exact layers (default 20; --quick 5)")
    ap.add_argument("--warm-epochs", type=int, help="epochs of task 1 before the measured epochs of task 2 (default 3; --quick 1)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.steps = args.steps or (5 if args.quick else 20)
    args.epoch_steps = 20 if args.quick else None  # steps per round of the other variants (None: whole epochs)
    args.warm_steps = 20 if args.quick else None
    args.warm_epochs = args.warm_epochs or (1 if args.quick else 3)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"# sdmcl scale benchmark\n\nmachine: {cpu}, {os.cpu_count()} cores, {platform.machine()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); load average {load()}")
    print(f"mode: {'quick' if args.quick else 'full'}; {args.rounds} measured rounds after one warm-up round; "
          f"epochs of {'20 steps (scaled to 94)' if args.quick else '94 steps'}, the large exact layers {args.steps} steps (scaled)")
    t0 = time.perf_counter()
    for section in args.sections:
        {"sizes": bench_sizes, "stack": bench_stack, "ewc": bench_ewc}[section](args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\nprocess peak resident memory (every variant alive at once): {gib(peak)}; "
          f"took {time.perf_counter() - t0:.0f} s; load average now {load()}")


if __name__ == "__main__":
    main()
