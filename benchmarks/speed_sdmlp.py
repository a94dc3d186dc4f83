"""Steady-state seconds per epoch of the SDMLP engine vs a bare PyTorch loop of the same math.

Workload (issue #2): Split Fashion-MNIST (12,000 training images per task), SDMLP with
1,000 neurons, k = 10, GABA switch, batch 128, SGD lr 0.05, gradient clipping, SDM
constraints, evaluation on the seen tasks' test sets after every epoch.

    .venv/bin/python benchmarks/speed_sdmlp.py [--repeats 3] [--epochs 4] [--data /usr/share/datasets/fashion-mnist]

Each repeat trains `--epochs` epochs on each of the 5 tasks through the real engine
(`Engine.train_epoch` + `Engine.record`, exactly what `sdmcl run` does per epoch) and
times every epoch; the first epoch of a repeat is warm-up and dropped. Reported: the
median over all steady epochs of every repeat, and the median of the per-repeat medians.
The "bare" loop is forward, cross-entropy, backward and an SGD step only: no clipping,
no constraints, no counters, no evaluation — the floor the engine is compared against.
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
from sdmcl.train.engine import Engine, prepare
from sdmcl.train.rundir import RunDir


def engine_epochs(cfg, prepared, epochs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        rd = RunDir(Path(tmp) / "run")
        engine = Engine(prepared, rd, progress=False, log=lambda s: None)
        rd.create(cfg)
        times = []
        for task in engine.tasks:
            engine.model.on_task_start(task) if hasattr(engine.model, "on_task_start") else None
            for e in range(epochs):
                t0 = time.perf_counter()
                loss = engine.train_epoch(task, e)
                engine.state.epochs_done += 1
                engine.record(task, e + 1, loss, full=False)
                times.append(time.perf_counter() - t0)
        return times


def bare_epochs(prepared, epochs: int, neurons: int, k: int) -> list[float]:
    torch.manual_seed(0)
    d = prepared.input_dim
    w1 = torch.nn.Linear(d, neurons, bias=False)
    w2 = torch.nn.Linear(neurons, prepared.num_classes, bias=False)
    opt = torch.optim.SGD(list(w1.parameters()) + list(w2.parameters()), lr=0.05)
    times = []
    for task in prepared.tasks:
        x_all, y_all = task.train_x, task.train_y
        for _ in range(epochs):
            t0 = time.perf_counter()
            perm = torch.randperm(len(y_all))
            for s in range(0, len(y_all), 128):
                idx = perm[s : s + 128]
                x, y = x_all[idx], y_all[idx]
                x = torch.relu(x)
                x = x / x.norm(dim=1, keepdim=True)
                h = torch.relu(w1(x))
                v = torch.topk(h.detach(), k + 1, dim=1).values[:, -1:]
                a = torch.relu(h - v)
                loss = F.cross_entropy(w2(a), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4, help="epochs per task per repeat")
    ap.add_argument("--neurons", type=int, default=1000)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--gaba", type=int, default=500000,
                    help="GABA switch threshold T: 500000 = the reference's (dense phase); 1000 = switched after a few steps")
    args = ap.parse_args()
    cfg = parse_config({
        "name": "speed", "data": {"source": "fashion-mnist", "path": args.data},
        "model": {"name": "sdmlp", "neurons": args.neurons, "k": 10, "gaba_switch_activations": args.gaba},
        "optim": {"name": "sgd", "lr": 0.05, "grad_clip": 1.0},
        "train": {"epochs_per_task": args.epochs, "batch_size": 128, "eval_every": 1},
        "output": {"progress": False},
    })
    prepared = prepare(cfg)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"workload: {len(prepared.tasks)} tasks x {len(prepared.tasks[0].train_y)} training images, "
          f"SDMLP {args.neurons} neurons, GABA T={args.gaba}, batch 128, eval every epoch on seen tasks")
    for name, fn in (("engine (all SDMLP features + eval)", lambda: engine_epochs(cfg, prepared, args.epochs)),
                     ("bare loop (SDMLP math only)", lambda: bare_epochs(prepared, args.epochs, args.neurons, 10))):
        per_repeat, steady_all = [], []
        for _ in range(args.repeats):
            t = fn()[1:]
            per_repeat.append(statistics.median(t))
            steady_all += t
        print(f"{name:<38} median {statistics.median(steady_all):.3f} s/epoch; "
              f"per-repeat medians {', '.join(f'{m:.3f}' for m in per_repeat)}")


if __name__ == "__main__":
    main()
