"""Active Dendrites network (Iyer et al. 2022, "Avoiding catastrophe: active dendrites
enable multi-task learning in dynamic environments"), our own implementation.

Each hidden unit i of a layer has a sparse feedforward weight row and S dendritic segments
u_{i,s} (vectors over the context). For an input x with context c:
    y_i = (w_i · x + b_i) · σ(d_i),   d_i = u_{i,s*} · c,
    s* = argmax_s |u_{i,s} · c|  (`abs_max` gating) or argmax_s u_{i,s} · c (`max`),
then k-winners-take-all keeps the `kw_percent_on` largest units of the layer. A linear
head maps the last hidden layer to all classes (one shared head).

Contexts (`context`), the information the model gets:
- `nearest_task` (default, label-free): at each task start the mean training input of the
  new task is stored as that task's prototype; training samples use it as context, test
  inputs use the stored prototype nearest to them (Euclidean). No label reaches the model
  at test time; it learns from task boundaries only.
- `true_class` (the reference's protocol): one prototype per class (the class's mean
  training input, stored when its task starts); every sample, in training *and at test
  time*, gets the prototype of its true class as context. The label reaches the model at
  test time: the run is label-informed (`takes_labels`; summary.json `label_informed: true`,
  tables mark it). Classes not yet seen get a zero context.
Prototypes are fed to the segments multiplied by `context_scale` (the reference's MNIST
context vectors were class means of raw [0, 255] pixels while its inputs were scaled to
[0, 1]: `context_scale: 255` reproduces that).

Weights (`init`):
- `torch`: torch's default Linear init; segments U(−0.01, 0.01); each feedforward weight
  is absent with probability `weight_sparsity`; the head is dense.
- `numenta`: Numenta's DendriticMLP (as the reference interface builds it): each unit keeps
  exactly round((1 − s)·fan_in) inputs, weights U(±1/√(input density · (1 − s) · fan_in))
  (input density 1 for the first layer, `kw_percent_on` after a k-WTA layer), segments
  U(±1/√(`context_percent_on` · (1 − dendrite sparsity) · context size)); the head is
  sparse the same way (`weight_sparsity`).
`keep_sparsity: true` keeps absent weights at 0 for the whole run (their gradients are
masked and they are re-zeroed after every step); `false` zeroes them at initialisation
only and lets them train afterwards, as the reference interface does (it never re-zeroes).
Reference training settings: Adam, lr 5e-4, batch 256 — set them in the experiment config.
Not implemented from Numenta's code: k-WTA boosting (off in the reference settings).
"""

from __future__ import annotations

import math
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
    context: Literal["nearest_task", "true_class"] = "nearest_task"
    context_scale: float = 1.0  # prototypes are multiplied by this before reaching the segments
    keep_sparsity: bool = True  # false: absent weights are zeroed at initialisation only (reference)
    init: Literal["torch", "numenta"] = "torch"
    context_percent_on: float = 0.1  # numenta init: assumed density of the context input
    max_contexts: int = 100  # prototypes stored (one per task) with `nearest_task`
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
        if not self.context_scale > 0:
            raise ConfigError(f"model.context_scale: must be > 0, got {self.context_scale}")
        if not 0 < self.context_percent_on <= 1:
            raise ConfigError(f"model.context_percent_on: must be in (0, 1], got {self.context_percent_on}")

    def check_run(self, run_config) -> None:
        if self.context == "true_class" and run_config.regularizer.name != "none":
            raise ConfigError(f"regularizer.name: {run_config.regularizer.name!r} cannot be combined with "
                              "model.context: true_class (the model needs each sample's label); use regularizer: {name: none}")


def select_segment(responses: torch.Tensor, gate: str) -> torch.Tensor:
    """responses (..., S) → the response of the selected segment (...)."""
    if gate == "max":
        return responses.max(dim=-1).values
    idx = responses.abs().argmax(dim=-1, keepdim=True)
    return responses.gather(-1, idx).squeeze(-1)


def k_winners(y: torch.Tensor, k: int) -> torch.Tensor:
    vals, idx = torch.topk(y, k, dim=1, sorted=False)
    return torch.zeros_like(y).scatter(1, idx, vals)


def exact_row_mask(rows: int, cols: int, density: float, gen: torch.Generator) -> torch.Tensor:
    """Each row keeps exactly round(density · cols) randomly chosen entries (Numenta's SparseWeights)."""
    keep = int(round(density * cols))
    order = torch.rand(rows, cols, generator=gen).argsort(dim=1)[:, :keep]
    return torch.zeros(rows, cols).scatter_(1, order, 1.0)


class DendriticLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int, context_dim: int, cfg: DendritesConfig, gen: torch.Generator,
                 input_density: float = 1.0):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.segments = nn.Parameter(torch.empty(d_out, cfg.num_segments, context_dim))
        if cfg.init == "numenta":
            weight_mask = exact_row_mask(d_out, d_in, 1 - cfg.weight_sparsity, gen)
            segment_mask = exact_row_mask(d_out * cfg.num_segments, context_dim, 1 - cfg.dendrite_weight_sparsity,
                                          gen).view(d_out, cfg.num_segments, context_dim)
            bound = 1 / math.sqrt(input_density * (1 - cfg.weight_sparsity) * d_in)
            seg_bound = 1 / math.sqrt(cfg.context_percent_on * (1 - cfg.dendrite_weight_sparsity) * context_dim)
            with torch.no_grad():
                self.linear.weight.uniform_(-bound, bound, generator=gen)
                self.segments.uniform_(-seg_bound, seg_bound, generator=gen)
        else:
            with torch.no_grad():
                self.segments.uniform_(-0.01, 0.01, generator=gen)
            weight_mask = (torch.rand(d_out, d_in, generator=gen) >= cfg.weight_sparsity).float()
            segment_mask = (torch.rand(d_out, cfg.num_segments, context_dim, generator=gen) >= cfg.dendrite_weight_sparsity).float()
        self.register_buffer("weight_mask", weight_mask)
        self.register_buffer("segment_mask", segment_mask)
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
        self.takes_labels = cfg.context == "true_class"  # label-informed: labels reach the model at test time
        seed = cfg.mask_seed if cfg.mask_seed is not None else int(torch.randint(2**62, ()))
        gen = torch.Generator().manual_seed(seed)
        sizes = [input_dim] + list(cfg.hidden_sizes)
        self.layers = nn.ModuleList(
            DendriticLayer(a, b, input_dim, cfg, gen, input_density=1.0 if i == 0 else cfg.kw_percent_on)
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])))
        self.head = nn.Linear(sizes[-1], num_classes)
        if cfg.init == "numenta":
            head_mask = exact_row_mask(num_classes, sizes[-1], 1 - cfg.weight_sparsity, gen)
            bound = 1 / math.sqrt(cfg.kw_percent_on * (1 - cfg.weight_sparsity) * sizes[-1])
            with torch.no_grad():
                self.head.weight.uniform_(-bound, bound, generator=gen)
            self.register_buffer("head_mask", head_mask)
        else:
            self.head_mask = None  # dense head
        if self.takes_labels:
            self.register_buffer("prototypes", torch.zeros(num_classes, input_dim))  # one per class, 0 until seen
        else:
            self.register_buffer("prototypes", torch.zeros(cfg.max_contexts, input_dim))
            self.register_buffer("num_prototypes", torch.zeros((), dtype=torch.long))
            self.register_buffer("current_context", torch.zeros((), dtype=torch.long))
        self.mask_weights()  # the absent weights start at 0 in both modes

    @torch.no_grad()
    def on_task_start(self, task) -> None:
        if self.takes_labels:
            for c in task.classes:
                of_class = task.train_y == c
                if bool(of_class.any()):
                    self.prototypes[c] = task.train_x[of_class].mean(0)
            return
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

    def contexts_for(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(contexts fed to the segments, each sample's row in them)."""
        if self.takes_labels:
            if labels is None:
                raise ValueError("model.context: true_class takes each sample's label: call forward(x, labels=y)")
            return self.prototypes * self.cfg.context_scale, labels
        n = max(int(self.num_prototypes), 1)
        return self.prototypes[:n] * self.cfg.context_scale, self.context_ids(x)

    def forward_with_hidden(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        contexts, ids = self.contexts_for(x, labels)
        h = x
        for layer in self.layers:
            h = layer(h, contexts, ids)
        return self.head(h), h

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_hidden(x, labels)[0]

    @torch.no_grad()
    def mask_weights(self) -> None:
        for layer in self.layers:
            layer.apply_masks()
        if self.head_mask is not None:
            self.head.weight.mul_(self.head_mask)

    def apply_constraints(self) -> None:
        if self.cfg.keep_sparsity:
            self.mask_weights()

    def before_step(self) -> None:
        if not self.cfg.keep_sparsity:
            return
        for layer in self.layers:
            layer.mask_grads()
        if self.head_mask is not None and self.head.weight.grad is not None:
            self.head.weight.grad.mul_(self.head_mask)


@register_model("dendrites", DendritesConfig, "Active Dendrites: context-gated dendritic segments, k-WTA, sparse weights")
def build(cfg: DendritesConfig, input_dim: int, num_classes: int) -> ActiveDendrites:
    return ActiveDendrites(cfg, input_dim, num_classes)
