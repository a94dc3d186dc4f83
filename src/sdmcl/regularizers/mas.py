"""Memory Aware Synapses (Aljundi et al. 2018), online.

At the end of each task: Ω += (1/B) Σ_{batches} |∇_θ mean(logits²)| over B = `batches`
minibatches of `batch_size` training samples of that task (model in eval mode), and the
anchor θ* becomes the current weights. Penalty λ Σ Ω (θ − θ*)².
Reference settings: λ = 0.5 (MNIST), 10 (CIFAR embeddings). (The reference divides its
sum over 6 batches by the number of batches in the whole task, not by 6.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdmcl.registry import register_regularizer
from sdmcl.regularizers.base import EvalMode, check_fields, Regularizer, RegularizerConfig, snapshot, task_batches, trainable


@dataclass
class MASConfig(RegularizerConfig):
    name: str = "mas"
    lam: float = 0.5
    batches: int = 6
    batch_size: int = 512

    def check(self) -> None:
        check_fields(self, at_least_one=("batches", "batch_size"))


def mas_importance(model, batches) -> list[torch.Tensor]:
    params = [p for _, p in trainable(model)]
    total = [torch.zeros_like(p) for p in params]
    with EvalMode(model):
        for x, _ in batches:
            grads = torch.autograd.grad(model(x).pow(2).mean(), params, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t += g.abs()
    return [t / max(len(batches), 1) for t in total]


class MAS(Regularizer):
    def __init__(self, cfg: MASConfig, model):
        super().__init__(cfg, model)
        self.importance: list[torch.Tensor] | None = None
        self.anchor: list[torch.Tensor] | None = None

    def on_task_end(self, model, task) -> None:
        new = mas_importance(model, task_batches(task, self.cfg.batches, self.cfg.batch_size, ("mas", task.index)))
        self.importance = new if self.importance is None else [a + b for a, b in zip(self.importance, new)]
        self.anchor = snapshot(model)

    def quadratic_terms(self):
        return [] if self.importance is None else [(self.importance, self.anchor)]

    def state_dict(self) -> dict:
        return {"importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.importance = state.get("importance")
        self.anchor = state.get("anchor")


@register_regularizer("mas", MASConfig, "MAS: online importance from output-norm gradients")
def build(cfg: MASConfig, model) -> MAS:
    return MAS(cfg, model)
