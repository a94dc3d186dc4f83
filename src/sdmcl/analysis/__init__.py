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
    from sdmcl.errors import OutputError

    module = importlib.import_module(f"sdmcl.analysis.{name.replace('-', '_')}")
    folder = Path(out) if out else Path("analysis") / name
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"--out {folder}: is a file; give a directory for the figures and CSV files")
    try:
        return module.analyze(runs, folder, **options)
    except PermissionError as e:
        raise OutputError(f"{e.filename or folder}: not writable; choose another --out directory") from None
