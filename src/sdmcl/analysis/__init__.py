"""`sdmcl analyze NAME [RUNS...]`: the paper's mechanistic claims as figures with their data.

One module per analysis; each reads run directories (what runs wrote) and writes PNG
figures and the CSV data behind them. None imports the training engine.
"""

from __future__ import annotations

import importlib
from pathlib import Path

ANALYSES = {
    "neurons": "dead/alive neurons over time and class entropy per neuron, several runs side by side",
    "stale-momentum": "toy model of a neuron re-activated after silence under SGD/SGDM/Adam/RMSProp, and update sizes inside runs",
    "k-frontier": "pretraining (i.i.d.) accuracy against continual accuracy for each k of a sweep",
    "gaba-timing": "continual accuracy and dead neurons against the GABA switch threshold T",
    "attention": "Top-K / ReLU activation weight against input-address cosine similarity, with the exponential fit and SDM's weighting",
    "receptive-fields": "address rows of the most and least used neurons as images",
}


def run_analysis(name: str, runs: list[str], out: str | None = None, **options) -> str:
    """Run analysis `name` on run directories `runs`; returns the text to print."""
    module = importlib.import_module(f"sdmcl.analysis.{name.replace('-', '_')}")
    return module.analyze(runs, Path(out) if out else Path("analysis") / name, **options)
