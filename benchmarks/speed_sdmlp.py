"""Seconds per epoch of the SDMLP engine, paired epoch by epoch with a bare PyTorch loop.

Workload (issue #2; the reference's run in SPEC §6): Split Fashion-MNIST (5 tasks of
12,000 training images), SDMLP with 1,000 neurons, k = 10, GABA switch T = 500,000,
SGD lr 0.05, batch 128, gradient clipping at 1.0, SDM constraints after every step,
evaluation of the seen tasks' test sets after every epoch and of all tasks at task ends,
20 epochs per task.

    .venv/bin/python benchmarks/speed_sdmlp.py [--repeats 3] [--epochs 20] [--gaba 500000]

The engine side calls what `sdmcl run` calls per epoch (`Engine.train_epoch`,
`Engine.record`, and at task ends the hooks and the checkpoint). The bare side is the
same SDMLP math (normalise, project, Top-K via the (k+1)-th value, cross-entropy,
backward, SGD step) with no clipping, constraints, counters, evaluation or outputs: the
floor. The two alternate epoch by epoch, each on the same task, so that both see the same
machine load: this VM's speed drifts by ±30% over minutes, and a ratio of paired epochs
is far steadier than two medians taken minutes apart. The first epoch of each repeat
is warm-up and dropped. A third timing per epoch, the evaluation's matrix products
X·W₁ᵀ alone, shows how much of the bare loop's time evaluation needs at the least.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sdmcl.config import parse_config
from sdmcl.train.engine import Engine, call_hook, prepare
from sdmcl.train.rundir import RunDir


class BareSDMLP:
    """The SDMLP forward/backward/SGD math and nothing else (dense gradients)."""

    def __init__(self, input_dim: int, neurons: int, num_classes: int, k: int, lr: float, batch_size: int):
        torch.manual_seed(0)
        self.w1 = torch.nn.Linear(input_dim, neurons, bias=False)
        self.w2 = torch.nn.Linear(neurons, num_classes, bias=False)
        self.opt = torch.optim.SGD([self.w1.weight, self.w2.weight], lr=lr)
        self.k, self.batch_size = k, batch_size

    def train_epoch(self, x_all: torch.Tensor, y_all: torch.Tensor) -> None:
        perm = torch.randperm(len(y_all))
        for s in range(0, len(y_all), self.batch_size):
            idx = perm[s : s + self.batch_size]
            x, y = torch.relu(x_all[idx]), y_all[idx]
            x = x / x.norm(dim=1, keepdim=True)
            h = torch.relu(self.w1(x))
            v = torch.topk(h.detach(), self.k + 1, dim=1).values[:, -1:]
            loss = F.cross_entropy(self.w2(torch.relu(h - v)), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


@torch.no_grad()
def eval_products(engine: Engine, num_tasks: int) -> None:
    """Only the address products X·W₁ᵀ of the evaluation just done (same chunks): a floor
    for evaluation that no implementation of this workload goes under."""
    w = engine.model.addresses.weight
    end = int(engine.evaluator.test_offsets[num_tasks])
    bs = engine.cfg.train.eval_batch_size
    for s in range(0, end, bs):
        engine.evaluator.test_x[s : s + bs] @ w.T


def one_repeat(cfg, prepared, epochs: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rd = RunDir(Path(tmp) / "run")
        rd.create(cfg)
        engine = Engine(prepared, rd, progress=False, log=lambda s: None)
        call_hook(engine.model, "apply_constraints")
        m = cfg.model
        bare = BareSDMLP(prepared.input_dim, m.neurons, prepared.num_classes, m.k, cfg.optim.lr, cfg.train.batch_size)
        for task in engine.tasks:
            call_hook(engine.model, "on_task_start", task)
            engine.regularizer.on_task_start(engine.model, task)
            for e in range(epochs):
                last = e == epochs - 1
                t0 = time.perf_counter()
                loss = engine.train_epoch(task, e)
                engine.state.epochs_done += 1
                t_train = time.perf_counter()
                if last:
                    call_hook(engine.model, "on_task_end", task)
                    engine.regularizer.on_task_end(engine.model, task)
                entry = engine.record(task, e + 1, loss, full=last)
                if last:
                    engine.save()
                t1 = time.perf_counter()
                bare.train_epoch(task.train_x, task.train_y)
                t2 = time.perf_counter()
                eval_products(engine, len(engine.tasks) if last else task.index + 1)
                t3 = time.perf_counter()
                rows.append({"task": task.index, "engine": t1 - t0, "bare": t2 - t1, "eval": t1 - t_train, "floor": t3 - t2,
                             "active_per_input": entry["active_per_input"], "accuracy": entry["seen_average_accuracy"]})
    return rows[1:]  # the first epoch is warm-up


def summarize(label: str, rows: list[dict]) -> str:
    eng = statistics.median(r["engine"] for r in rows)
    bare = statistics.median(r["bare"] for r in rows)
    ratio = statistics.median(r["engine"] / r["bare"] for r in rows)
    train_ratio = statistics.median((r["engine"] - r["eval"]) / r["bare"] for r in rows)
    ev = statistics.median(r["eval"] for r in rows)
    floor = statistics.median(r["floor"] / r["bare"] for r in rows)
    return (f"{label:<10} engine {eng:.3f} (of which eval {ev:.3f})  bare {bare:.3f}  "
            f"engine/bare {ratio:.2f}  without eval {train_ratio:.2f}  eval products alone/bare {floor:.2f}  ({len(rows)} epochs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20, help="epochs per task")
    ap.add_argument("--neurons", type=int, default=1000)
    ap.add_argument("--gaba", type=int, default=500_000, help="GABA switch threshold T (the reference's 500,000)")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    cfg = parse_config({
        "name": "speed", "data": {"source": "fashion-mnist", "path": args.data},
        "model": {"name": "sdmlp", "neurons": args.neurons, "k": 10, "gaba_switch_activations": args.gaba},
        "optim": {"name": "sgd", "lr": 0.05, "grad_clip": 1.0},
        "train": {"epochs_per_task": args.epochs, "batch_size": 128, "eval_every": 1},
        "output": {"progress": False},
    })
    prepared = prepare(cfg)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"workload: {len(prepared.tasks)} tasks x {len(prepared.tasks[0].train_y)} training images x {args.epochs} epochs, "
          f"SDMLP {args.neurons} neurons k=10 GABA T={args.gaba}, batch 128, eval every epoch; {args.repeats} repeats")
    print("seconds per epoch, medians over epochs (eval: the evaluation + outputs part of the engine's epoch):")
    every = []
    for r in range(args.repeats):
        rows = one_repeat(cfg, prepared, args.epochs)
        every += rows
        print(summarize(f"repeat {r + 1}", rows), f" final seen accuracy {rows[-1]['accuracy']:.3f}")
    for t in range(len(prepared.tasks)):
        print(summarize(f"task {t + 1}", [r for r in every if r["task"] == t]),
              f" active/input {statistics.median(r['active_per_input'] for r in every if r['task'] == t):.1f}")
    print(summarize("ALL", every))


if __name__ == "__main__":
    main()
