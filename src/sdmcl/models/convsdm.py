"""ConvSDM: a ConvMixer trunk with the SDMLP as its head, trained jointly (the paper's
end-to-end model on pixels).

    logits = SDMLP(ConvMixerTrunk(x))

The trunk is `models/convmixer.py`'s (default 2 blocks, as the reference); the head is the
`models/sdmlp.py` SDMLP on the hdim-dimensional pooled features, with every SDMLP key
(neurons, k, k_approach, GABA switch, l2_norm, positive_weights, biases). Its constraints
and GABA counters act on the head only; `constrain_trunk: true` also clamps every trunk
parameter to ≥ 0 when `positive_weights` is on, as the reference did (it clamped all
parameters of the model). The defaults are the reference's ConvSDM settings: depth 2,
signed weights (positive_weights false), L2-normalised addresses, no biases, GABA switch
T = 500,000. `head: relu` swaps the SDMLP for the reference's ReLU replacement,
Linear(hdim, neurons, bias) → ReLU → Linear(neurons, C, bias).

Under mixed precision the trunk runs in autocast and the head in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sdmcl.models.convmixer import ConvMixerTrunk, ConvTrunkConfig, image_shape
from sdmcl.models.mlp import MLP
from sdmcl.models.sdmlp import SDMLP, SDMLPConfig, check_topk_fields
from sdmcl.registry import register_model


@dataclass
class ConvSDMConfig(SDMLPConfig, ConvTrunkConfig):
    name: str = "convsdm"
    depth: int = 2
    positive_weights: bool = False
    gaba_switch_activations: int = 500_000
    head: Literal["sdmlp", "relu"] = "sdmlp"
    constrain_trunk: bool = False  # with positive_weights: clamp the trunk's parameters ≥ 0 too (the reference)

    def check(self) -> None:
        self.check_trunk()
        check_topk_fields(self)


class ConvSDM(nn.Module):
    supports_mixed_precision = True

    def __init__(self, cfg: ConvSDMConfig, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.trunk = ConvMixerTrunk(cfg, input_shape)
        if cfg.head == "sdmlp":
            self.head = SDMLP(cfg, cfg.hdim, num_classes)
        else:
            self.head = MLP(cfg.hdim, cfg.neurons, num_classes, nn.ReLU(), 0.0, bias=True)
        self._clamp_trunk = cfg.constrain_trunk and cfg.positive_weights and cfg.head == "sdmlp"
        self.apply_constraints()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features after global average pooling, before the head: (B, hdim)."""
        return self.trunk(x)

    def _head_call(self, fn, features: torch.Tensor):
        if torch.is_autocast_enabled(features.device.type):
            with torch.autocast(features.device.type, enabled=False):
                return fn(features.float())
        return fn(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._head_call(self.head, self.trunk(x))

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self._head_call(self.head.hidden, self.trunk(x))

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._head_call(self.head.forward_with_hidden, self.trunk(x))

    @property
    def activity_window(self) -> torch.Tensor:
        return self.head.activity_window

    # ---- engine hooks, passed to the head where it has them (models/base.py)

    @torch.no_grad()
    def apply_constraints(self) -> None:
        if hasattr(self.head, "apply_constraints"):
            self.head.apply_constraints()
        if self._clamp_trunk:
            for p in self.trunk.parameters():
                p.clamp_(min=0)

    def before_step(self) -> None:
        if hasattr(self.head, "before_step"):
            self.head.before_step()

    def set_row_sparse_updates(self, enabled: bool, all_rows_move: bool = False) -> None:
        if hasattr(self.head, "set_row_sparse_updates"):
            self.head.set_row_sparse_updates(enabled, all_rows_move=all_rows_move)

    def on_epoch_start(self, epoch: int) -> None:
        self.head.on_epoch_start(epoch)

    def neuron_stats(self) -> dict:
        return self.head.neuron_stats() if hasattr(self.head, "neuron_stats") else {}

    def reset_head(self, num_classes: int) -> None:
        self.head.reset_head(num_classes)


@register_model("convsdm", ConvSDMConfig, "ConvSDM: ConvMixer trunk + SDMLP head trained jointly (GABA, constraints on the head)")
def build(cfg: ConvSDMConfig, input_dim: int, num_classes: int, input_shape: tuple[int, ...] = ()) -> ConvSDM:
    return ConvSDM(cfg, image_shape(cfg, input_shape), num_classes)
