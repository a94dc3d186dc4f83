"""Warnings about settings that silently spoil a run: printed as one line when detected and
listed under `warnings` in summary.json.

- The GABA switch has not completed by the end of the first task: the k-sparse code the
  SDMLP relies on is not in place, and later tasks overwrite what the first one learnt.
  Fires when a `gaba_switch` model has more than max(3k, k + 5) units active per input
  on the first task's test set at its end. A finished switch leaves k active, a few more
  while the last neurons complete theirs: the Split Fashion-MNIST runs of
  docs/results.md end task 1 with 10.6 (T = 150,000) and 15.2 (T = 200,000) active for
  k = 10, the quickstart 9.8 for k = 5; a switch that has barely started leaves all on.
  (Inputs of tasks not yet trained activate more units; they are not counted here.)
- The input ReLU of a model with non-negative weights (SDMLP `positive_weights`) removes
  more than `RELU_MASS_LIMIT` of the training inputs' L1 mass: signed inputs (embeddings
  that are not non-negative) lose their negative part before the model sees them.
"""

from __future__ import annotations

import torch

from sdmcl.train.callbacks import Callback

GABA_ACTIVE_FACTOR = 3  # warn above max(GABA_ACTIVE_FACTOR·k, k + GABA_ACTIVE_MARGIN) active units per input
GABA_ACTIVE_MARGIN = 5
RELU_MASS_LIMIT = 0.25


def relu_removed_share(tensors) -> float:
    """Σ max(−x, 0) / Σ |x| over the entries of `tensors`: the share of the L1 mass a ReLU
    removes (0 for non-negative inputs; 0 when all inputs are 0)."""
    removed = total = 0.0
    with torch.no_grad():
        for x in tensors:
            removed += float(x.neg().clamp_min(0).sum(dtype=torch.float64))
            total += float(x.abs().sum(dtype=torch.float64))
    return removed / total if total > 0 else 0.0


def gaba_switch_unfinished(model_cfg, active_per_input: float | None) -> bool:
    """More than max(3k, k + 5) units active per input for a gaba_switch model."""
    if getattr(model_cfg, "k_approach", None) != "gaba_switch" or active_per_input is None:
        return False
    k = model_cfg.k
    return active_per_input > max(GABA_ACTIVE_FACTOR * k, k + GABA_ACTIVE_MARGIN)


class PitfallWarnings(Callback):
    name = "pitfalls"

    def on_run_start(self, engine, resumed: bool) -> None:
        if resumed or not getattr(engine.model, "rectifies_inputs", False):
            return
        share = relu_removed_share(t.train_x for t in engine.tasks)
        if share > RELU_MASS_LIMIT:
            engine.warn(f"the model's input ReLU (model.positive_weights) removes {100 * share:.0f}% of the training inputs' "
                        "L1 mass (signed inputs); make the inputs non-negative, or set model.positive_weights: false")

    def on_task_end(self, engine, task, entry: dict) -> None:
        if task.index != 0:
            return
        cfg = engine.cfg.model
        active = entry.get("seen_active_per_input")
        if gaba_switch_unfinished(cfg, active):
            engine.warn(f"the GABA switch has not completed by the end of the first task: {active:.1f} units active per "
                        f"test input of that task (k = {cfg.k}); lower model.gaba_switch_activations (now "
                        f"{cfg.gaba_switch_activations}) or train more epochs per task")
