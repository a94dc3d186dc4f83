"""L2 to the previous task's weights (identity importance): penalty λ Σ (θ − θ*)², θ* the
weights at the end of the last finished task. Reference: λ = 10 (MNIST), 30 (CIFAR)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdmcl.registry import register_regularizer
from sdmcl.regularizers.base import Regularizer, check_fields, RegularizerConfig, snapshot


@dataclass
class L2Config(RegularizerConfig):
    name: str = "l2"
    lam: float = 10.0

    def check(self) -> None:
        check_fields(self)


class L2(Regularizer):
    def __init__(self, cfg: L2Config, model):
        super().__init__(cfg, model)
        self.anchor: list[torch.Tensor] | None = None

    def on_task_end(self, model, task) -> None:
        self.anchor = snapshot(model)

    def quadratic_terms(self):
        return [] if self.anchor is None else [([1.0] * len(self.anchor), self.anchor)]

    def state_dict(self) -> dict:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.anchor = state.get("anchor")


@register_regularizer("l2", L2Config, "L2 distance to the previous task's weights")
def build(cfg: L2Config, model) -> L2:
    return L2(cfg, model)
