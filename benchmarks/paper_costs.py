"""Expected CPU cost of the paper's experiment files.

    python benchmarks/paper_costs.py                 # estimate from a measured workload (below)
    python benchmarks/paper_costs.py --measure       # time every model shape on this machine instead

The estimate: a training step of these one-hidden-layer models is two matrix products, so the
cost per training sample grows as neurons × (inputs + classes). It is scaled from the workload of
docs/speed.md (SDMLP, 1,000 neurons, 784 inputs, 10 classes: 0.747 s per 12,000-image epoch,
62 µs per sample, measured with 2 threads on the 2-core machine this was written on). With
`--measure`, each distinct (model, neurons, inputs, classes, regularizer, optimizer) is timed by
a short run of the real engine on synthetic data of that shape (median of `--repeats`) — on an
unloaded machine; on a shared one the seconds drift with the load. The cost of a file is the sum
over the runs it selects of epochs × training samples × that cost; evaluation is left out (a few
per cent with evaluation every 10 epochs). Image models (ConvMixer, ConvSDM) are not costed.

The GPU column is not a measurement (no GPU was available where this was written): it counts the
optimizer steps of the selected runs and assumes `--gpu-ms-per-step` (default 0.5 ms), the order of
a launch-bound step of these small models at batch 128; time `sdmcl run` on your card and scale.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SPEED_MD_US_PER_SAMPLE = 62.25  # docs/speed.md: engine 0.747 s per epoch of 12,000 images
SPEED_MD_SHAPE = 1000 * (784 + 10)  # its neurons × (inputs + classes)

# training samples, input size, classes of the data each file points at
DATA = {
    ("embeddings", "data/ConvMixerEmbeddings/CIFAR10"): (50_000, 256, 10),
    ("embeddings", "data/ConvMixerEmbeddings/CIFAR100"): (50_000, 256, 100),
    ("embeddings", "data/ConvMixerEmbeddings/ImageNet32"): (1_281_167, 256, 1000),
    ("imagenet32", "data/ImageNet32"): (1_281_167, 3072, 1000),
    ("cifar10", None): (50_000, 3072, 10),
    ("mnist", None): (60_000, 784, 10),
    ("fashion-mnist", None): (60_000, 784, 10),
    ("embeddings", "data/embeddings/fashion-mnist-efficientnet-lite0-64"): (60_000, 1280, 10),
    ("embeddings", "data/embeddings/digits-efficientnet-lite0-64"): (1_438, 1280, 10),
    ("digits", None): (1_438, 64, 10),
}


def shape_key(cfg) -> tuple:
    m = cfg.model
    reg = cfg.regularizer.name
    return (m.name, getattr(m, "neurons", getattr(m, "kenyon_cells", 0)), reg, cfg.optim.name)


def measure(key: tuple, dim: int, classes: int, threads: int, repeats: int) -> float:
    """Median training seconds per sample of this model on synthetic data of this shape."""
    from sdmcl.config import parse_config
    from sdmcl.train.engine import run

    name, neurons, reg, opt = key
    samples = 128 * 24 if neurons <= 2000 else 128 * 8
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        x = rng.random((samples, dim), dtype=np.float32)
        y = np.arange(samples) % classes
        np.savez(Path(tmp) / "data.npz", train_x=x, train_y=y, test_x=x[:256], test_y=y[:256], num_classes=classes)
        model = {"name": name, "neurons": neurons} if name != "fly" else {"name": "fly", "kenyon_cells": neurons}
        if name == "sdmlp":
            model["gaba_switch_activations"] = 1000
        raw = {"name": "cost", "data": {"source": "embeddings", "path": str(Path(tmp) / "data.npz")},
               "benchmark": {"joint": True}, "model": model, "regularizer": {"name": reg},
               "train": {"epochs_per_task": 3, "eval_every": 0, "threads": threads},
               "output": {"dir": str(Path(tmp) / "runs"), "plots": False, "progress": False}}
        if name != "fly":
            raw["optim"] = {"name": opt, "lr": 0.01}
        times = []
        for r in range(repeats):
            raw["seed"] = r
            _, summary = run(parse_config(raw), progress=False, log=lambda m: None)
            times.append(summary["seconds_per_epoch"] / samples)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="experiment files (default: all in experiments/)")
    ap.add_argument("--measure", action="store_true", help="time every model shape here instead of estimating")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--gpu-ms-per-step", type=float, default=0.5, help="assumed GPU step time for the GPU column")
    ap.add_argument("--json", help="also write the measurements and costs here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from sdmcl.stages import load_plan

    files = [Path(f) for f in args.files] or sorted((ROOT / "experiments").glob("*.yaml"))
    per_sample: dict[tuple, float] = {}

    def cost(key, dim, classes) -> float:
        if (key, dim, classes) not in per_sample:
            if args.measure:
                per_sample[(key, dim, classes)] = measure(key, dim, classes, args.threads, args.repeats)
                print(f"  measured {key} d={dim} C={classes}: {1e6 * per_sample[(key, dim, classes)]:.2f} µs/sample", flush=True)
            else:
                neurons = key[1] if key[0] != "fly" else 0  # the FlyModel's one pass per task is negligible
                per_sample[(key, dim, classes)] = SPEED_MD_US_PER_SAMPLE * 1e-6 * neurons * (dim + classes) / SPEED_MD_SHAPE
        return per_sample[(key, dim, classes)]

    rows = []
    for path in files:
        try:
            plan = load_plan(path)
        except Exception as e:  # e.g. a file whose models this build lacks
            rows.append((path.stem, None, f"not costed ({type(e).__name__})"))
            continue
        total, runs, steps, unknown = 0.0, 0, 0, set()
        for r in plan.select():
            data = DATA.get((r.cfg.data.source, r.cfg.data.path))
            if data is None:
                unknown.add(r.cfg.data.source)
                continue
            n, dim, classes = data
            key = shape_key(r.cfg)
            if r.cfg.model.name in ("convmixer", "convsdm", "dendrites", "nispa"):
                unknown.add(r.cfg.model.name)
                continue
            total += r.cfg.train.epochs_per_task * n * cost(key, dim, classes)
            tasks = 1 if r.cfg.benchmark.joint else (r.cfg.benchmark.num_tasks or classes // r.cfg.benchmark.classes_per_task)
            steps += r.cfg.train.epochs_per_task * tasks * -(-n // tasks // r.cfg.train.batch_size)
            runs += 1
        note = f"; not costed: {', '.join(sorted(unknown))}" if unknown else ""
        gpu = steps * args.gpu_ms_per_step / 1000 / 3600
        rows.append((path.stem, total, f"{runs} runs{note}"))
        print(f"{path.stem}: {total / 3600:.1f} CPU hours, GPU ~{gpu:.2f} h at {args.gpu_ms_per_step} ms/step "
              f"({runs} runs, {steps:,} steps{note})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": args.measure,
                                               "per_sample_us": {repr(k): 1e6 * v for k, v in per_sample.items()},
                                               "hours": {name: (t / 3600 if t is not None else None) for name, t, _ in rows}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
