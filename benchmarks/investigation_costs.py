"""What the run-time investigations cost: SDMLP training epochs with the per-step update-norm
probe on and off, alternated round by round in one process, and the time of one activation
snapshot against the time of one training epoch.

    .venv/bin/python benchmarks/investigation_costs.py [--rounds 6] [--optim sgd] [--every 1]

The SDMLP (1,000 neurons, k = 10, T = 150,000) is first trained 10 epochs on task 1 of Split
Fashion-MNIST (the GABA switch completes), then each round trains one epoch of task 2
without investigations, one with `investigate.update_norms` (every `--every`-th step), and takes one
activation snapshot (both tasks' training data and test data, as at the end of task 2).
Reported: medians over rounds, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sdmcl.config import parse_config
from sdmcl.train.engine import Engine, prepare
from sdmcl.train.investigations import ActivationSnapshots, UpdateNorms
from sdmcl.train.rundir import RunDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--optim", default="sgd", choices=["sgd", "sgdm", "adam", "rmsprop"])
    ap.add_argument("--every", type=int, default=1, help="investigate.update_norms_every")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    lr = {"sgd": 0.05, "sgdm": 0.03, "adam": 0.001, "rmsprop": 0.0005}[args.optim]
    cfg = parse_config({
        "name": "investigation-costs", "data": {"source": "fashion-mnist", "path": args.data},
        "model": {"name": "sdmlp", "neurons": 1000, "k": 10, "gaba_switch_activations": 150000},
        "optim": {"name": args.optim, "lr": lr, "grad_clip": 1.0},
        "train": {"batch_size": 128}, "output": {"progress": False},
        "investigate": {"activations_every": 1, "update_norms": True, "update_norms_every": args.every, "receptive_fields": 16},
    })
    prepared = prepare(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        rd = RunDir(Path(tmp) / "run")
        rd.create(cfg)
        engine = Engine(prepared, rd, progress=False, log=lambda s: None)
        engine.model.apply_constraints()
        engine.callbacks, engine.step_callbacks = [], []  # driven by hand below
        probe, snapshots = UpdateNorms(cfg.investigate), ActivationSnapshots(cfg.investigate)
        for cb in (probe, snapshots):
            cb.on_run_start(engine, resumed=False)
        for e in range(10):
            engine.train_epoch(engine.tasks[0], e)
            engine.state.epochs_done += 1
        task = engine.tasks[1]
        plain, probed, snap = [], [], []
        for r in range(args.rounds):
            engine.step_callbacks = []
            t0 = time.perf_counter()
            engine.train_epoch(task, 2 * r)
            plain.append(time.perf_counter() - t0)
            engine.step_callbacks = [probe]
            probe.on_task_start(engine, task)
            t0 = time.perf_counter()
            engine.train_epoch(task, 2 * r + 1)
            probe.on_epoch_end(engine, task, 2 * r + 1)
            probed.append(time.perf_counter() - t0)
            engine.state.epochs_done += 2
            t0 = time.perf_counter()
            snapshots.snapshot(engine, task)
            snap.append(time.perf_counter() - t0)
        for cb in (probe, snapshots):
            cb.close()
    ratio = statistics.median(b / a for a, b in zip(plain, probed))
    print(f"optimizer {args.optim}, task 2 epochs after the GABA switch, {args.rounds} rounds (median seconds):")
    print(f"  training epoch, no investigation:     {statistics.median(plain):.3f}")
    print(f"  training epoch, update norms on (every {args.every}): {statistics.median(probed):.3f}   (ratio {ratio:.3f})")
    print(f"  one activation snapshot (2 tasks):    {statistics.median(snap):.3f}   "
          f"({statistics.median(s / p for s, p in zip(snap, plain)):.2f} training epochs)")


if __name__ == "__main__":
    main()
