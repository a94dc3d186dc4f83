"""Seconds per training epoch of this checkout's engine against another version of
`train/engine.py`, paired epoch by epoch in one process (did a change slow the SDMLP path?).

    git show main:src/sdmcl/train/engine.py > /tmp/engine_other.py
    .venv/bin/python benchmarks/engine_ab.py /tmp/engine_other.py [--epochs 20]

Workload: the first task of Split Fashion-MNIST (12,000 images), SDMLP 1,000 neurons, k 10,
GABA T = 500,000, SGD lr 0.05, batch 128, one thread; `Engine.train_epoch` only (no
evaluation). The two engines alternate (ABAB, then BABA) on the same epochs, each with its
own model from the same seed; the first pair is warm-up. Prints the median seconds per epoch
of each, the median of the paired ratios, and whether both ended with identical weights.
The other file must import against this checkout's other modules.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from paired import alternate_epochs  # benchmarks/paired.py, beside this script
from sdmcl.config import parse_config
from sdmcl.train import engine as this
from sdmcl.train.rundir import RunDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("other", help="path of the other engine.py")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("engine_other", args.other)
    other = importlib.util.module_from_spec(spec)
    sys.modules["engine_other"] = other  # dataclasses look their module up
    spec.loader.exec_module(other)
    cfg = parse_config({
        "data": {"source": "fashion-mnist"},
        "model": {"name": "sdmlp", "neurons": 1000, "k": 10, "gaba_switch_activations": 500000},
        "optim": {"name": "sgd", "lr": 0.05}, "train": {"threads": 1, "batch_size": 128},
        "benchmark": {"num_tasks": 1}, "output": {"progress": False, "plots": False},
    })
    tmp = Path(tempfile.mkdtemp())
    engines = {}
    for name, module in (("other", other), ("this", this)):
        prepared = module.prepare(cfg)
        engine = module.Engine(prepared, RunDir(tmp / name), progress=False, log=lambda s: None)
        this.call_hook(engine.model, "apply_constraints")
        engines[name] = engine
    times = alternate_epochs({"other": engines["other"], "this": engines["this"]}, args.epochs)
    ratios = [b / a for a, b in zip(times["other"][1:], times["this"][1:])]
    a, b = engines["other"].model.state_dict(), engines["this"].model.state_dict()
    print(f"median s/epoch: other {statistics.median(times['other'][1:]):.3f}, this {statistics.median(times['this'][1:]):.3f}; "
          f"median paired ratio this/other {statistics.median(ratios):.3f} over {len(ratios)} pairs; "
          f"identical weights: {a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)}")


if __name__ == "__main__":
    main()
