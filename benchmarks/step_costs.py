"""What each per-step feature of the SDMLP engine costs: training epochs with one feature
switched off, alternated round by round with the full engine in one process.

    .venv/bin/python benchmarks/step_costs.py [--gaba 5000000] [--rounds 8]
        [--variants full no-constraints no-clip dense-steps dense-backward]

The model is first trained 6 epochs on each of tasks 1–2 (T = 5,000,000: still before the
GABA switch, every neuron active; T = 100,000: switched, ~430 of 1,000 neurons active per
batch), then each round trains one epoch of task 3 per variant. Variants:
- `full`: what `sdmcl run` does (clipping, constraints, counters, row-sparse steps).
- `no-constraints`: no clamp / renormalisation after the step.
- `all-rows-constraints`: the constraints on every address row, not only the changed ones.
- `no-clip`: no gradient clipping.
- `dense-steps`: sparse address gradient, but dense (not row-sparse) optimizer steps.
- `dense-backward`: dense address gradient (`model.sparse_backward: false`).
Switching a feature off changes the training trajectory too; over a few epochs of one
task that changes the timing by far less than the features themselves. Reported: the
median epoch per variant and the median of its per-round ratio to `full`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sdmcl.config import parse_config
from sdmcl.train.engine import Engine, prepare
from sdmcl.train.rundir import RunDir

VARIANTS = ("full", "no-constraints", "all-rows-constraints", "no-clip", "dense-steps", "dense-backward")


def configure(engine: Engine, variant: str, full_constraints) -> None:
    model = engine.model
    engine.cfg.optim.grad_clip = None if variant == "no-clip" else 1.0
    model.cfg.sparse_backward = variant != "dense-backward"
    model.set_row_sparse_updates(variant not in ("dense-steps", "dense-backward"))
    if variant == "no-constraints":
        model.apply_constraints = lambda: setattr(model, "_last_batch", None)
    elif variant == "all-rows-constraints":  # forget which rows the step changed: constrain all
        model.apply_constraints = lambda: (setattr(model, "_last_batch", None), full_constraints())
    else:
        model.apply_constraints = full_constraints


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gaba", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = ap.parse_args()
    cfg = parse_config({
        "name": "step-costs", "data": {"source": "fashion-mnist", "path": args.data},
        "model": {"name": "sdmlp", "neurons": 1000, "k": 10, "gaba_switch_activations": args.gaba},
        "optim": {"name": "sgd", "lr": 0.05, "grad_clip": 1.0},
        "train": {"batch_size": 128}, "output": {"progress": False},
    })
    prepared = prepare(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        rd = RunDir(Path(tmp) / "run")
        rd.create(cfg)
        engine = Engine(prepared, rd, progress=False, log=lambda s: None)
        full_constraints = engine.model.apply_constraints
        for task in engine.tasks[:2]:
            for e in range(6):
                engine.train_epoch(task, e)
        task = engine.tasks[2]
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        for r in range(args.rounds):
            for variant in args.variants:
                configure(engine, variant, full_constraints)
                t0 = time.perf_counter()
                engine.train_epoch(task, r)
                times[variant].append(time.perf_counter() - t0)
    print(f"GABA T={args.gaba}, task 3 training epochs (no evaluation), {args.rounds} rounds; seconds per epoch:")
    base = times[args.variants[0]]
    for variant, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        print(f"  {variant:<15} median {statistics.median(ts):.3f}  per-round ratio to {args.variants[0]}: {ratio:.2f}")


if __name__ == "__main__":
    main()
