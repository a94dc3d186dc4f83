"""Baseline MLPs: the ReLU MLP (optionally with dropout) and the Top-K MLP.

ReLU MLP: Linear(d, n, bias) → ReLU → Dropout(p) → Linear(n, C, output_bias).
Top-K MLP: the same with the Top-K activation (default `linear_decay_mask`, k = 10) and
none of the SDM constraints (inputs not normalised, signed weights, biases on).
`bias` switches the hidden layer's bias, `output_bias` the output layer's (the reference's
output-bias ablation turns off only the latter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sdmcl.errors import ConfigError
from sdmcl.models.base import ModelConfig
from sdmcl.models.sdmlp import check_topk_fields
from sdmcl.models.topk import GabaCounting, KApproach, TopK
from sdmcl.registry import register_model


@dataclass
class ReLUMLPConfig(ModelConfig):
    name: str = "relu_mlp"
    neurons: int = 1000
    dropout: float = 0.0  # probability of zeroing a hidden unit in training
    bias: bool = True  # hidden-layer bias
    output_bias: bool = True  # output-layer bias

    def check(self) -> None:
        if self.neurons < 1:
            raise ConfigError(f"model.neurons: must be >= 1, got {self.neurons}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class TopKMLPConfig(ModelConfig):
    name: str = "topk_mlp"
    neurons: int = 1000
    k: int = 10
    k_approach: KApproach = "linear_decay_mask"
    k_max: int | None = None
    k_transition_epochs: int = 200
    gaba_switch_activations: int = 5_000_000
    gaba_counting: GabaCounting = "training"  # k_approach gaba_switch: training samples only | reference
    dropout: float = 0.0
    bias: bool = True  # hidden-layer bias
    output_bias: bool = True  # output-layer bias

    def check(self) -> None:
        check_topk_fields(self)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")


class MLP(nn.Module):
    """One hidden layer; `activation` is ReLU or a TopK module."""

    def __init__(self, input_dim: int, neurons: int, num_classes: int, activation: nn.Module, dropout: float, bias: bool,
                 output_bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, neurons, bias=bias)
        self.activation = activation
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc2 = nn.Linear(neurons, num_classes, bias=output_bias)
        # training samples each unit was active for since the engine last read it, and the
        # sum of its activations over them (the reference's dead-neuron statistic)
        self.register_buffer("activity_window", torch.zeros(neurons, dtype=torch.int64))
        self.register_buffer("activation_window", torch.zeros(neurons, dtype=torch.float64))
        self.optional_buffers = ("activation_window",)  # older checkpoints lack it: it then starts at zero

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        a = self.activation(self.fc1(x))
        if self.training:
            d = a.detach()
            self.activity_window += (d > 0).sum(0)
            self.activation_window += d.sum(0)
        return a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.hidden(x)))

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.hidden(x)
        return self.fc2(self.dropout(a)), a

    def on_epoch_start(self, epoch: int) -> None:
        if isinstance(self.activation, TopK):
            self.activation.epoch = epoch

    def reset_head(self, num_classes: int) -> None:
        old = self.fc2
        self.fc2 = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)


@register_model("relu_mlp", ReLUMLPConfig, "ReLU MLP baseline (optional dropout)")
def build_relu(cfg: ReLUMLPConfig, input_dim: int, num_classes: int) -> MLP:
    return MLP(input_dim, cfg.neurons, num_classes, nn.ReLU(), cfg.dropout, cfg.bias, cfg.output_bias)


@register_model("topk_mlp", TopKMLPConfig, "Top-K MLP baseline: Top-K activation, no SDM constraints")
def build_topk(cfg: TopKMLPConfig, input_dim: int, num_classes: int) -> MLP:
    act = TopK(cfg.neurons, cfg.k, cfg.k_approach, cfg.k_max, cfg.k_transition_epochs, cfg.gaba_switch_activations,
               cfg.gaba_counting)
    return MLP(input_dim, cfg.neurons, num_classes, act, cfg.dropout, cfg.bias, cfg.output_bias)
