"""Memory Aware Synapses (Aljundi et al. 2018), online.

At the end of each task: Ω += (1/D) Σ_{batches} |∇_θ mean(logits²)| over B = `batches`
minibatches of `batch_size` training samples of that task (model in eval mode), and the
anchor θ* becomes the current weights. Penalty λ Σ Ω (θ − θ*)². The divisor D is chosen
by `normalization`:
- `mean` (default): D = the number of batches used (B, fewer if the task is smaller);
- `reference`: D = the number of batches of `batch_size` in the whole task, ⌈N/S⌉, as the
  reference code did (it summed 6 batches and divided by its data loader's length: 24 on
  a 12,000-image Split MNIST task, so its Ω is 1/4 of the mean at the same λ).
Reference settings: λ = 0.5 (MNIST), 10 (CIFAR embeddings); 6 batches of 512,
`normalization: reference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from sdmcl.registry import register_regularizer
from sdmcl.regularizers.base import EvalMode, check_fields, Regularizer, RegularizerConfig, quadratic_penalty, snapshot, task_batches, trainable


@dataclass
class MASConfig(RegularizerConfig):
    name: str = "mas"
    lam: float = 0.5
    batches: int = 6
    batch_size: int = 512
    normalization: Literal["mean", "reference"] = "mean"  # divide by the batches used | by the task's number of batches

    def check(self) -> None:
        check_fields(self, at_least_one=("batches", "batch_size"))


def mas_importance(model, batches, divisor: float | None = None) -> list[torch.Tensor]:
    """Σ over `batches` of |∇ mean(logits²)|, divided by `divisor` (default: the number of batches)."""
    params = [p for _, p in trainable(model)]
    total = [torch.zeros_like(p) for p in params]
    with EvalMode(model):
        for x, _ in batches:
            grads = torch.autograd.grad(model(x).pow(2).mean(), params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t += g.abs()
    d = max(len(batches), 1) if divisor is None else divisor
    return [t / d for t in total]


class MAS(Regularizer):
    def __init__(self, cfg: MASConfig, model):
        super().__init__(cfg, model)
        self.importance: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] | None = None

    def on_task_end(self, model, task) -> None:
        batches = task_batches(task, self.cfg.batches, self.cfg.batch_size, ("mas", task.index))
        divisor = math.ceil(len(task.train_y) / self.cfg.batch_size) if self.cfg.normalization == "reference" else None
        new = mas_importance(model, batches, divisor)
        self.importance = new if self.importance is None else [a + b for a, b in zip(self.importance, new)]
        self.anchor = snapshot(model)

    def penalty(self, model):
        if self.importance is None:
            return 0.0
        return self.cfg.lam * quadratic_penalty([p for _, p in trainable(model)], self.anchor, self.importance)

    def state_dict(self) -> dict:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.importance = state.get("importance")
        self.anchor = state.get("anchor")


@register_regularizer("mas", MASConfig, "MAS: online importance from output-norm gradients")
def build(cfg: MASConfig, model) -> MAS:
    return MAS(cfg, model)
