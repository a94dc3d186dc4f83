"""How sparse a 10,000-neuron SDMLP really is per batch in a run from scratch, and what a
step costs as a function of that: the measurement behind the limits of the approximate Top-K.

Trains, in one process and one after another, the runs of
`experiments/scale_split_fashion_mnist_10k.yaml` (Split Fashion-MNIST, 5 tasks × 8 epochs,
k = 10, GABA T = 60,000, SGD 0.05, batch 128):
- `1K`: the same config with 1,000 neurons (the cost the targets are stated against);
- `10K exact`: the reference layer;
- `10K lowrank`: the approximate Top-K as a user gets it (default candidate rule; exact
  path for batches whose candidates exceed 30% of the layer);
- `10K lowrank, always`: the approximate Top-K with the default candidate rule and
  `search_max_union: 1` (never falls back to exact): its candidates are the exact layer's
  active set up to the prescreen's margin, so its step cost is what computing only the
  neurons that are active costs.

Per step it records the wall time, the neurons active for at least one input of the batch
(the exact layer's union: every one of their address rows gets a gradient, so any method
that follows the exact layer must compute and update at least those rows), the mean
active per input, and for the approximate run its candidate union. It prints per-epoch
tables (GABA responses: mean g, share of neurons at g = 1), the step cost binned by the
batch's union against the 1K layer's median step, and the whole runs' training time.

Run: `.venv/bin/python benchmarks/gaba_union.py` (about 12 minutes on the 2-core VM,
1 thread); `--epochs 2` for a short look; `--variants 10K-exact` for one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sdmcl.config import load_experiment
from sdmcl.train.callbacks import Callback
from sdmcl.train.engine import Engine, prepare
from sdmcl.train.rundir import RunDir

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "scale_split_fashion_mnist_10k.yaml"
VARIANTS = {
    "1K": ("exact", ["model.neurons=1000"]),
    "10K-exact": ("exact", []),
    "10K-lowrank": ("lowrank", ["model.search_recall_every=0"]),
    "10K-lowrank-always": ("lowrank", ["model.search_max_union=1.0", "model.search_recall_every=0"]),
}
BINS = [0.0, 0.05, 0.10, 0.20, 0.30, 0.50, 1.01]


class StepRecorder(Callback):
    """Per training step: seconds since the previous step of the same epoch, the batch's
    union of active neurons, active per input, and the approximate layer's candidate union."""

    name = "step_recorder"

    def __init__(self):
        self.steps: list[dict] = []
        self.epochs: list[dict] = []
        self._last: float | None = None
        self._union_sum = 0.0
        self._approx = 0.0
        self._epoch_start = time.perf_counter()

    def on_task_start(self, engine, task) -> None:
        self._last = None
        self._epoch_start = time.perf_counter()

    def after_step(self, engine) -> None:
        now = time.perf_counter()
        model = engine.model
        counts = model.topk.batch_active_counts
        batch = engine.cfg.train.batch_size
        rec = {"epoch": engine.state.epochs_done, "seconds": None if self._last is None else now - self._last,
               "union": int((counts > 0).sum()) / model.cfg.neurons, "per_input": float(counts.sum()) / batch, "candidates": None}
        search = getattr(model, "search", None)
        if search is not None:
            union_sum, approx = float(search.stats[7]), float(search.stats[5])
            if approx < self._approx:  # the statistics were read (and reset) by an evaluation
                self._union_sum = self._approx = 0.0
            if approx > self._approx:
                rec["candidates"] = (union_sum - self._union_sum) / model.cfg.neurons
            self._union_sum, self._approx = union_sum, approx
        self.steps.append(rec)
        self._last = now

    def on_epoch_end(self, engine, task, epoch_in_task: int) -> None:
        now = time.perf_counter()
        g = engine.model.topk.responses()
        self.epochs.append({"epoch": engine.state.epochs_done, "task": task.index + 1, "seconds": now - self._epoch_start,
                            "g_mean": float(g.mean()) if g is not None else None,
                            "g_one": float((g >= 1).float().mean()) if g is not None else None})
        self._last = None
        self._epoch_start = time.perf_counter()


def train(label: str, seed: int, epochs: int | None) -> StepRecorder:
    search, overrides = VARIANTS[label]
    overrides = overrides + ["output.progress=false", "output.plots=false", f"train.threads={torch.get_num_threads()}"]
    if epochs:
        overrides.append(f"train.epochs_per_task={epochs}")
    runs = load_experiment(EXPERIMENT, overrides, only=["exact" if search == "exact" else "lowrank"])
    cfg = next(c for _, c in runs if c.seed == seed)
    rd = RunDir(Path(tempfile.mkdtemp(prefix="sdmcl-union-")) / "run")
    rd.create(cfg)
    engine = Engine(prepare(cfg), rd, progress=False, log=lambda s: None)
    recorder = StepRecorder()
    engine.callbacks.append(recorder)
    engine.step_callbacks.append(recorder)
    t0 = time.perf_counter()
    summary = engine.run(resume=False)
    recorder.total = time.perf_counter() - t0
    recorder.train_seconds = engine.state.train_seconds
    recorder.accuracy = summary["final_average_accuracy"]
    if engine.model.search is not None:
        recorder.inflation = candidate_inflation(engine)
    return recorder


@torch.no_grad()
def candidate_inflation(engine, batches: int = 20) -> list[dict]:
    """At the end of the run, on the first `batches` training batches of tasks 1, 3 and 5: the
    exact layer's union of active neurons against the default rule's candidates, and how
    close the scores around the threshold lie (what a prescreen has to resolve)."""
    model = engine.model
    search, topk = model.search, model.topk
    w, g, k = model.addresses.weight, topk.responses(), topk.current_k()
    search.max_union, search._skip = 1.0, 0
    topk.eval()
    out = []
    for t in (0, 2, 4):
        x_all = model.prepare_inputs(engine.tasks[t].train_x.reshape(len(engine.tasks[t].train_x), -1))
        active, cands, spread, near, exact_v, exact_v_recall = [], [], [], [], [], []
        for b in range(batches):
            x = x_all[b * 128 : (b + 1) * 128]
            r = (x @ w.T).relu_()
            act = topk.activate(r) > 0
            cols = search.select(x, w, g, k)
            active.append(int(act.any(0).sum()))
            cands.append(w.shape[0] if cols is None else len(cols))
            top = torch.topk(r, k + 1, dim=1).values
            spread.append(float((top[:, 0] - top[:, -1]).median()))
            # the same threshold rule given the exact (k+1)-th score of the union of each input's
            # 32 best approximate scores (instead of the block-maxima estimate): is the estimate
            # what inflates the candidates?
            approx = (x @ search.projection) @ (w @ search.projection).T
            best = torch.unique(torch.topk(approx, 32, dim=1).indices)
            v_hat = torch.topk(x @ w[best].T, k + 1, dim=1).values[:, -1]
            keep = (approx >= (1 - search.margin) * v_hat[:, None] * g[None, :]).any(0)
            keep[best] = True
            exact_v.append(int(keep.sum()))
            exact_v_recall.append(float((act & keep[None, :]).sum() / act.sum().clamp_min(1)))
            # neurons whose score lies within 5% of their own threshold g·v_{k+1}
            thr = top[:, -1:] * g[None, :]
            near.append(float(((r - thr).abs() <= 0.05 * thr).sum(1).float().mean()))
        out.append({"task": t + 1, "active": statistics.median(active), "candidates": statistics.median(cands),
                    "spread": statistics.median(spread), "near": statistics.median(near),
                    "exact_v": statistics.median(exact_v), "exact_v_recall": min(exact_v_recall)})
    topk.train()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, help="epochs per task (default: the experiment's 8)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    print(f"# GABA responses and the union of active neurons per batch\n\nmachine: {cpu}, {os.cpu_count()} cores; torch "
          f"{torch.__version__}, {torch.get_num_threads()} thread(s); load average {os.getloadavg()[0]:.2f}; seed {args.seed}")
    results = {}
    for label in args.variants:
        t0 = time.perf_counter()
        results[label] = rec = train(label, args.seed, args.epochs)
        print(f"\n## {label}: final average accuracy {rec.accuracy:.3f}; training {rec.train_seconds:.0f} s "
              f"(whole run {time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.2f})\n")
        if getattr(rec, "inflation", None):
            print("At the end of the run (20 training batches of 128 per task; default candidate rule, never falling back):\n")
            print("| data | union of active neurons (median) | candidates of the default rule | the rule with the exact (k+1)-th "
                  "score: candidates, lowest share of active pairs kept | best minus (k+1)-th score | neurons within 5% of "
                  "their threshold, per input |")
            print("|---|---|---|---|---|---|")
            for row in rec.inflation:
                print(f"| task {row['task']} | {row['active']:.0f} | {row['candidates']:.0f} | {row['exact_v']:.0f}, "
                      f"{row['exact_v_recall']:.3f} | {row['spread']:.3f} | {row['near']:.0f} |")
            print()
        unions = [s["union"] for s in rec.steps]
        print(f"union of active neurons over all {len(unions)} steps: mean {statistics.mean(unions):.3f}; "
              f"steps with a union of 10% or more {sum(u >= 0.1 for u in unions) / len(unions):.1%}, "
              f"20% or more {sum(u >= 0.2 for u in unions) / len(unions):.1%}\n")
        approx = rec.steps and any(s["candidates"] is not None for s in rec.steps)
        print("| epoch | task | s/epoch | union of active neurons per batch (median) | active per input (mean) | mean g | share g = 1 |"
              + (" candidates per batch (median share) |" if approx else ""))
        print("|---|---|---|---|---|---|---|" + ("---|" if approx else ""))
        for ep in rec.epochs:
            steps = [s for s in rec.steps if s["epoch"] == ep["epoch"] - 1]
            union = statistics.median(s["union"] for s in steps)
            per_input = statistics.mean(s["per_input"] for s in steps)
            cands = [s["candidates"] for s in steps if s["candidates"] is not None]
            extra = f" {statistics.median(cands):.3f} ({len(cands)}/{len(steps)} steps) |" if approx and cands else (" — |" if approx else "")
            print(f"| {ep['epoch']} | {ep['task']} | {ep['seconds']:.2f} | {union:.3f} | {per_input:.1f} | {ep['g_mean']:.3f} | "
                  f"{ep['g_one']:.4f} |{extra}")
    if "1K" in results:
        base = results["1K"]
        # the 1K layer's step once its union is small (after its switch): the cost the targets compare with
        base_steps = [s["seconds"] for s in base.steps if s["seconds"] is not None and s["union"] < 0.5] \
            or [s["seconds"] for s in base.steps if s["seconds"] is not None]  # (a run too short for the switch)
        base_ms = statistics.median(base_steps) * 1e3
        print(f"\n## Step cost by the batch's union of active neurons (1K median step after its switch: {base_ms:.2f} ms)\n")
        print("| union of active neurons | " + " | ".join(f"{label}: steps, median ms (× 1K)" for label in results if label != "1K") + " |")
        print("|---|" + "---|" * (len(results) - 1))
        for lo, hi in zip(BINS, BINS[1:]):
            cells = []
            for label, rec in results.items():
                if label == "1K":
                    continue
                sel = [s["seconds"] for s in rec.steps if s["seconds"] is not None and lo <= s["union"] < hi]
                cells.append(f"{len(sel)}, {statistics.median(sel) * 1e3:.1f} ({statistics.median(sel) * 1e3 / base_ms:.1f}×)" if sel else "—")
            print(f"| {lo:.0%}–{min(hi, 1):.0%} | " + " | ".join(cells) + " |")
        print("\n| run | training s | × 1K run | final average accuracy |\n|---|---|---|---|")
        for label, rec in results.items():
            print(f"| {label} | {rec.train_seconds:.0f} | {rec.train_seconds / base.train_seconds:.2f} | {rec.accuracy:.3f} |")


if __name__ == "__main__":
    main()
