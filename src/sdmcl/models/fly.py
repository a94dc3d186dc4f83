"""FlyModel (Shen, Dasgupta & Navlakha 2021), as the paper's authors ran it.

No gradients. For an input x (per-sample min-max scaled to [0, 1]):
    kc = relu(R x)                R: fixed binary (cells × d), each Kenyon cell samples
                                  exactly `n_response` inputs (without replacement)
    θ  = quantile_{0.99}(kc)      per sample (linear interpolation, numpy's default)
    kc ← kc · [kc ≥ θ] / max(kc)  k-winners-take-all (~1% active), scaled by the sample's max
Learning ("partial freezing" associative rule), one pass per task: for each class c of the
task, W[c] ← min(1, W[c] + lr · Σ_{samples of c} kc). Only the true class's weights from
active cells change. Prediction: argmax_c W[c]·kc over the classes learned so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sdmcl.errors import ConfigError
from sdmcl.models.base import ModelConfig
from sdmcl.registry import register_model


@dataclass
class FlyConfig(ModelConfig):
    name: str = "fly"
    kenyon_cells: int = 1000
    n_response: int = 64  # inputs sampled by each Kenyon cell
    lr: float = 0.005
    percentile: float = 99.0  # cells at or above this percentile of a sample's activity stay on
    min_max_scale: bool = True
    projection_seed: int | None = None  # None: drawn from the run seed
    chunk_size: int = 1024  # samples per chunk (memory: chunk × cells floats)

    def check(self) -> None:
        if self.kenyon_cells < 1:
            raise ConfigError(f"model.kenyon_cells: must be >= 1, got {self.kenyon_cells}")
        if self.n_response < 1:
            raise ConfigError(f"model.n_response: must be >= 1, got {self.n_response}")
        if not self.lr > 0:
            raise ConfigError(f"model.lr: must be > 0, got {self.lr}")
        if not 0 < self.percentile < 100:
            raise ConfigError(f"model.percentile: must be in (0, 100), got {self.percentile}")
        if self.chunk_size < 1:
            raise ConfigError(f"model.chunk_size: must be >= 1, got {self.chunk_size}")


def upper_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    """Row-wise q-quantile with numpy's default linear interpolation, from a top-k instead of
    a full sort (only the top (1−q) fraction of each row is needed)."""
    n = a.shape[1]
    pos = q * (n - 1)
    lo = int(pos)
    frac = pos - lo
    top = torch.topk(a, n - lo, dim=1, sorted=True).values  # descending: top[:, n-1-i] = i-th smallest
    v_lo = top[:, -1:]
    v_hi = top[:, -2:-1] if n - lo >= 2 else v_lo
    return v_lo + frac * (v_hi - v_lo)


class FlyModel(nn.Module):
    uses_gradients = False

    def __init__(self, cfg: FlyConfig, input_dim: int, num_classes: int):
        super().__init__()
        if cfg.n_response > input_dim:
            raise ConfigError(f"model.n_response: {cfg.n_response} exceeds the input dimension {input_dim}")
        self.cfg = cfg
        seed = cfg.projection_seed if cfg.projection_seed is not None else int(torch.randint(2**62, ()))
        gen = torch.Generator().manual_seed(seed)
        # each row: n_response distinct input indices (first columns of a random permutation)
        picks = torch.rand(cfg.kenyon_cells, input_dim, generator=gen).argsort(dim=1)[:, : cfg.n_response]
        projection = torch.zeros(cfg.kenyon_cells, input_dim)
        projection.scatter_(1, picks, 1.0)
        self.register_buffer("projection", projection)
        self.register_buffer("weights", torch.zeros(num_classes, cfg.kenyon_cells))
        self.register_buffer("learned", torch.zeros(num_classes, dtype=torch.bool))

    def kenyon_cells(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.min_max_scale:
            lo = x.min(dim=1, keepdim=True).values
            span = (x.max(dim=1, keepdim=True).values - lo).clamp_min(1e-12)
            x = (x - lo) / span
        out = []
        for s in range(0, len(x), self.cfg.chunk_size):
            kc = torch.relu(x[s : s + self.cfg.chunk_size] @ self.projection.T)
            theta = upper_quantile(kc, self.cfg.percentile / 100.0)
            kc = kc * (kc >= theta)
            out.append(kc / kc.max(dim=1, keepdim=True).values.clamp_min(1e-12))
        return torch.cat(out)

    @torch.no_grad()
    def fit_task(self, x: torch.Tensor, y: torch.Tensor) -> None:
        kc = self.kenyon_cells(x)
        sums = torch.zeros_like(self.weights).index_add_(0, y, kc)
        seen = torch.bincount(y, minlength=len(self.learned)) > 0
        self.weights[seen] = (self.weights[seen] + self.cfg.lr * sums[seen]).clamp_(max=1.0)
        self.learned |= seen

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kc = self.kenyon_cells(x)
        logits = (kc @ self.weights.T).masked_fill(~self.learned, float("-inf"))
        return logits, kc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(x)[0]


@register_model("fly", FlyConfig, "FlyModel: random projection, k-WTA Kenyon cells, associative output (no gradients)")
def build(cfg: FlyConfig, input_dim: int, num_classes: int) -> FlyModel:
    return FlyModel(cfg, input_dim, num_classes)


build.uses_gradients = False
