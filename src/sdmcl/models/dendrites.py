"""Active Dendrites network (Iyer et al. 2022, "Avoiding catastrophe: active dendrites
enable multi-task learning in dynamic environments"), our own implementation.

Each hidden unit i of a layer has a sparse feedforward weight row and S dendritic segments
u_{i,s} (vectors over the context). For an input x with context c:
    y_i = (w_i · x + b_i) · σ(d_i),   d_i = u_{i,s*} · c,
    s* = argmax_s |u_{i,s} · c|  (`abs_max` gating) or argmax_s u_{i,s} · c (`max`),
then k-winners-take-all keeps the `kw_percent_on` largest units of the layer. A dense
linear head maps the last hidden layer to all classes (one shared head).

Information the model gets (no task labels at test time):
- training: the task boundaries — at each task start the mean training input of the new
  task is stored as that task's prototype, and every training sample uses it as context;
- test: each input uses the stored prototype nearest to it (Euclidean) as its context.
Feedforward weights have a fixed random sparsity (`weight_sparsity`, kept by zeroing the
masked weights after every step and their gradients before it). Reference training
settings (SPEC): Adam, lr 5e-4, batch 256 — set them in the experiment config.
Not implemented from Numenta's code: k-WTA boosting, their sparse-weight init rescaling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from sdmcl.errors import ConfigError
from sdmcl.models.base import ModelConfig
from sdmcl.registry import register_model


@dataclass
class DendritesConfig(ModelConfig):
    name: str = "dendrites"
    hidden_sizes: list[int] = field(default_factory=lambda: [2048, 2048])
    num_segments: int = 10
    kw_percent_on: float = 0.05
    weight_sparsity: float = 0.5  # fraction of feedforward weights fixed at 0
    dendrite_weight_sparsity: float = 0.0
    dendritic_gate: Literal["abs_max", "max"] = "abs_max"
    max_contexts: int = 100  # prototypes stored (one per task)
    mask_seed: int | None = None  # None: drawn from the run seed

    def check(self) -> None:
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"model.hidden_sizes: needs at least one layer of >= 1 unit, got {self.hidden_sizes}")
        if self.num_segments < 1:
            raise ConfigError(f"model.num_segments: must be >= 1, got {self.num_segments}")
        if not 0 < self.kw_percent_on <= 1:
            raise ConfigError(f"model.kw_percent_on: must be in (0, 1], got {self.kw_percent_on}")
        for key in ("weight_sparsity", "dendrite_weight_sparsity"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"model.{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.max_contexts < 1:
            raise ConfigError(f"model.max_contexts: must be >= 1, got {self.max_contexts}")


def select_segment(responses: torch.Tensor, gate: str) -> torch.Tensor:
    """responses (..., S) → the response of the selected segment (...)."""
    if gate == "max":
        return responses.max(dim=-1).values
    idx = responses.abs().argmax(dim=-1, keepdim=True)
    return responses.gather(-1, idx).squeeze(-1)


def k_winners(y: torch.Tensor, k: int) -> torch.Tensor:
    vals, idx = torch.topk(y, k, dim=1, sorted=False)
    return torch.zeros_like(y).scatter(1, idx, vals)


class DendriticLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int, context_dim: int, cfg: DendritesConfig, gen: torch.Generator):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.segments = nn.Parameter(torch.empty(d_out, cfg.num_segments, context_dim).uniform_(-0.01, 0.01, generator=gen))
        self.register_buffer("weight_mask", (torch.rand(d_out, d_in, generator=gen) >= cfg.weight_sparsity).float())
        self.register_buffer("segment_mask", (torch.rand(d_out, cfg.num_segments, context_dim, generator=gen) >= cfg.dendrite_weight_sparsity).float())
        self.k = max(1, round(cfg.kw_percent_on * d_out))
        self.gate = cfg.dendritic_gate

    def forward(self, x: torch.Tensor, contexts: torch.Tensor, context_ids: torch.Tensor) -> torch.Tensor:
        # segment responses depend only on the context: compute them once per stored context
        responses = torch.einsum("osc,tc->tos", self.segments, contexts)  # (contexts, units, S)
        gates = torch.sigmoid(select_segment(responses, self.gate))  # (contexts, units)
        return k_winners(self.linear(x) * gates[context_ids], self.k)

    @torch.no_grad()
    def apply_masks(self) -> None:
        self.linear.weight.mul_(self.weight_mask)
        self.segments.mul_(self.segment_mask)

    def mask_grads(self) -> None:
        if self.linear.weight.grad is not None:
            self.linear.weight.grad.mul_(self.weight_mask)
        if self.segments.grad is not None:
            self.segments.grad.mul_(self.segment_mask)


class ActiveDendrites(nn.Module):
    def __init__(self, cfg: DendritesConfig, input_dim: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        seed = cfg.mask_seed if cfg.mask_seed is not None else int(torch.randint(2**62, ()))
        gen = torch.Generator().manual_seed(seed)
        sizes = [input_dim] + list(cfg.hidden_sizes)
        self.layers = nn.ModuleList(DendriticLayer(a, b, input_dim, cfg, gen) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_classes)
        self.register_buffer("prototypes", torch.zeros(cfg.max_contexts, input_dim))
        self.register_buffer("num_prototypes", torch.zeros((), dtype=torch.long))
        self.register_buffer("current_context", torch.zeros((), dtype=torch.long))
        self.apply_constraints()

    def on_task_start(self, task) -> None:
        n = int(self.num_prototypes)
        if n >= self.cfg.max_contexts:
            raise ConfigError(f"model.max_contexts: {self.cfg.max_contexts} prototypes are stored already; raise it")
        self.prototypes[n] = task.train_x.mean(0)
        self.current_context.fill_(n)
        self.num_prototypes.fill_(n + 1)

    def context_ids(self, x: torch.Tensor) -> torch.Tensor:
        n = max(int(self.num_prototypes), 1)
        if self.training:
            return self.current_context.expand(len(x))
        return torch.cdist(x, self.prototypes[:n]).argmin(dim=1)

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        contexts = self.prototypes[: max(int(self.num_prototypes), 1)]
        ids = self.context_ids(x)
        h = x
        for layer in self.layers:
            h = layer(h, contexts, ids)
        return self.head(h), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(x)[0]

    def apply_constraints(self) -> None:
        for layer in self.layers:
            layer.apply_masks()

    def before_step(self) -> None:
        for layer in self.layers:
            layer.mask_grads()


@register_model("dendrites", DendritesConfig, "Active Dendrites: context-gated dendritic segments, k-WTA, sparse weights")
def build(cfg: DendritesConfig, input_dim: int, num_classes: int) -> ActiveDendrites:
    return ActiveDendrites(cfg, input_dim, num_classes)
