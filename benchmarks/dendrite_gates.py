"""Gate statistics of finished Active Dendrites runs: how saturated the dendritic gates are
and how much the units opened by different contexts overlap (docs/results.md).

    python benchmarks/dendrite_gates.py RUN_DIR [RUN_DIR ...]

For every dendritic layer: the share of (unit, context) gates σ(d) below 0.01 or above 0.99,
the share of units a context opens (σ > 0.5), and the mean Jaccard index of the open sets
of two contexts (independent random halves would give 1/3). Contexts are the stored
prototypes (per class with `context: true_class`, per task otherwise), scaled as in training.
"""

from __future__ import annotations

import sys

import torch

from sdmcl.config import parse_config
from sdmcl.models.dendrites import select_segment
from sdmcl.registry import MODELS
from sdmcl.train.checkpoint import load_checkpoint


def gate_stats(run_dir: str) -> list[tuple[float, float, float]]:
    ckpt = load_checkpoint(run_dir)
    cfg = parse_config(ckpt["config"])
    model = MODELS["dendrites"].build(cfg.model, ckpt["input_dim"], ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    n = model.prototypes.shape[0] if model.takes_labels else int(model.num_prototypes)
    contexts = model.prototypes[:n] * cfg.model.context_scale
    out = []
    with torch.no_grad():
        for layer in model.layers:
            gates = torch.sigmoid(select_segment(torch.einsum("osc,tc->tos", layer.segments, contexts), layer.gate))
            saturated = float(((gates < 0.01) | (gates > 0.99)).float().mean())
            opened = gates > 0.5
            pairs = [float((opened[a] & opened[b]).sum() / (opened[a] | opened[b]).sum().clamp_min(1))
                     for a in range(n) for b in range(a + 1, n)]
            out.append((saturated, float(opened.float().mean()), sum(pairs) / max(len(pairs), 1)))
    return out


if __name__ == "__main__":
    for run_dir in sys.argv[1:]:
        for i, (sat, opened, jaccard) in enumerate(gate_stats(run_dir)):
            print(f"{run_dir}: layer {i}: saturated {sat:.3f}, opened per context {opened:.2f}, mean Jaccard {jaccard:.2f}")
