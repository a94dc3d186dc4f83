"""Seconds per training epoch of this checkout's sdmcl against the sdmcl of another git
revision, paired epoch by epoch in one process (did a change anywhere slow a path down?).

    .venv/bin/python benchmarks/package_ab.py main [--epochs 20] [--neurons 1000]
        [--gaba 500000] [--set model.topk_search=exact ...]

The other revision's `src/sdmcl` is exported (`git archive`) into a temporary directory as
the package `sdmcl_ref` (its absolute imports renamed), so both versions run in this
process, each with its own registries. Workload: the first task of Split Fashion-MNIST
(12,000 images), SDMLP with k = 10, SGD lr 0.05, batch 128, clipping at 1.0, one thread;
`Engine.train_epoch` only (no evaluation). Both engines train their own model from the
same seed, alternating ABAB then BABA; the first pair is warm-up. Prints the median
seconds per epoch of each and the median of the paired ratios (this / other).
(`engine_ab.py` swaps only train/engine.py; this swaps the whole package: models,
regularizers, optimizer helpers.)
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from paired import alternate_epochs  # benchmarks/paired.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def export(rev: str, dest: Path) -> None:
    """`src/sdmcl` of `rev` as the package `dest/sdmcl_ref` (absolute imports renamed)."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src/sdmcl"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    pkg = dest / "sdmcl_ref"
    (dest / "src" / "sdmcl").rename(pkg)
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\b(from|import) sdmcl(\.|\b)", lambda m: f"{m.group(1)} sdmcl_ref{m.group(2)}", text)
        path.write_text(text)


def build(pkg, raw: dict, root: Path, name: str):
    cfg = pkg.config.parse_config(raw)
    prepared = pkg.train.engine.prepare(cfg)
    engine = pkg.train.engine.Engine(prepared, pkg.train.rundir.RunDir(root / name), progress=False, log=lambda s: None)
    pkg.train.engine.call_hook(engine.model, "apply_constraints")
    return engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="git revision to compare with (e.g. main, HEAD~3)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--neurons", type=int, default=1000)
    ap.add_argument("--gaba", type=int, default=500_000)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for both (a key the other revision lacks is an error there)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="sdmcl-ab-"))
    export(args.rev, tmp)
    sys.path.insert(0, str(tmp))
    packages = {}
    for name in ("sdmcl_ref", "sdmcl"):
        pkg = importlib.import_module(name)
        for sub in ("config", "train.engine", "train.rundir"):
            importlib.import_module(f"{name}.{sub}")
        packages["other" if name == "sdmcl_ref" else "this"] = pkg
    raw = {"data": {"source": "fashion-mnist"},
           "model": {"name": "sdmlp", "neurons": args.neurons, "k": 10, "gaba_switch_activations": args.gaba},
           "optim": {"name": "sgd", "lr": 0.05, "grad_clip": 1.0}, "train": {"threads": 1, "batch_size": 128},
           "benchmark": {"num_tasks": 1}, "output": {"progress": False, "plots": False}}
    for item in args.sets:
        key, value = item.split("=", 1)
        section, field = key.split(".", 1)
        raw.setdefault(section, {})[field] = packages["this"].config.parse_override(item)[1]
    engines = {name: build(pkg, raw, tmp, name) for name, pkg in packages.items()}
    times = alternate_epochs({"other": engines["other"], "this": engines["this"]}, args.epochs)
    other, this = times["other"][1:], times["this"][1:]
    same = all(torch.equal(a, b) for a, b in zip(engines["other"].model.state_dict().values(),
                                                   engines["this"].model.state_dict().values()))
    print(f"{args.rev}: {statistics.median(other):.3f} s/epoch   this checkout: {statistics.median(this):.3f} s/epoch   "
          f"this/{args.rev} (median of {len(this)} paired epochs): {statistics.median(t / o for t, o in zip(this, other)):.3f}   "
          f"identical weights at the end: {same}")


if __name__ == "__main__":
    main()
