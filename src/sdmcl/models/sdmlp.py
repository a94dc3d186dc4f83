"""SDMLP: the Sparse Distributed Memory MLP of Bricken et al. (ICLR 2023).

Forward for a batch x (B × d):  x ← relu(x) [positive_weights];  x ← x/‖x‖₂ [l2_norm];
h = W₁x (no bias: rows of W₁ are neuron *addresses*);  a = TopK(h);  logits = W₂a (the
*values*). After every optimizer step (and once at start) `apply_constraints` clamps all
weights to ≥ 0 [positive_weights] and rescales each address row to unit L2 norm
[l2_norm]. Each SDM component can be switched off alone for ablations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sdmcl.errors import ConfigError
from sdmcl.models.base import ModelConfig
from sdmcl.models.topk import KApproach, TopK
from sdmcl.registry import register_model


@dataclass
class SDMLPConfig(ModelConfig):
    name: str = "sdmlp"
    neurons: int = 1000
    k: int = 10
    k_approach: KApproach = "gaba_switch"
    gaba_switch_activations: int = 5_000_000  # T: activations for g to go from −1 to +1
    k_max: int | None = None  # start of the linear decay (default: all neurons)
    k_transition_epochs: int = 200
    l2_norm: bool = True  # L2-normalise inputs and address rows
    positive_weights: bool = True  # relu inputs, clamp weights ≥ 0
    bias: bool = False  # hidden-layer bias (ablation)
    output_bias: bool = False  # output-layer bias (ablation)
    sparse_backward: bool = True  # compute address gradients only for neurons active in the batch

    def check(self) -> None:
        check_topk_fields(self)


def check_topk_fields(cfg) -> None:
    if cfg.neurons < 1:
        raise ConfigError(f"model.neurons: must be >= 1, got {cfg.neurons}")
    if not 1 <= cfg.k < cfg.neurons:
        raise ConfigError(f"model.k: must satisfy 1 <= k < neurons ({cfg.neurons}), got {cfg.k}")
    if cfg.gaba_switch_activations < 1:
        raise ConfigError(f"model.gaba_switch_activations: must be >= 1, got {cfg.gaba_switch_activations}")
    if cfg.k_max is not None and not cfg.k <= cfg.k_max <= cfg.neurons:
        raise ConfigError(f"model.k_max: must be in k..neurons ({cfg.k}..{cfg.neurons}), got {cfg.k_max}")
    if cfg.k_transition_epochs < 0:
        raise ConfigError(f"model.k_transition_epochs: must be >= 0, got {cfg.k_transition_epochs}")


class SparseAddressProjection(torch.autograd.Function):
    """h = x Wᵀ whose backward computes ∂L/∂W only for the rows (neurons) active in the batch.

    After the GABA switch only ~k of n neurons are active per input, so most rows of ∂L/∂W
    are exactly zero and need no matmul. `batch` is a dict made for this forward pass: the
    model stores in it `active` (samples per neuron active after Top-K; ∂L/∂h is zero for
    the others because Top-K's relu passes no gradient there) and `row_sparse` (return a
    sparse COO gradient of only those rows); backward then records the `rows` it returned.
    Same values as the dense gradient up to float summation order."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, batch: dict) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.batch = batch
        return x @ weight.T

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        x, weight = ctx.saved_tensors
        batch = ctx.batch
        grad_x = grad_h @ weight if ctx.needs_input_grad[0] else None
        active = batch.get("active")
        rows = (active > 0 if active is not None else (grad_h != 0).any(0)).nonzero().squeeze(1)
        if rows.numel() * 4 > weight.shape[0] * 3:  # most rows non-zero: one dense product is cheaper
            return grad_x, grad_h.T @ x, None
        rows_grad = grad_h.index_select(1, rows).T @ x
        if batch.get("row_sparse"):
            batch["rows"] = rows
            return grad_x, torch.sparse_coo_tensor(rows[None], rows_grad, weight.shape, is_coalesced=True, check_invariants=False), None
        return grad_x, torch.zeros_like(weight).index_copy_(0, rows, rows_grad), None


class SDMLP(nn.Module):
    def __init__(self, cfg: SDMLPConfig, input_dim: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.addresses = nn.Linear(input_dim, cfg.neurons, bias=cfg.bias)
        self.topk = TopK(cfg.neurons, cfg.k, cfg.k_approach, cfg.k_max, cfg.k_transition_epochs, cfg.gaba_switch_activations)
        self.values = nn.Linear(cfg.neurons, num_classes, bias=cfg.output_bias)
        # training samples each neuron was active for since the engine last read it
        self.register_buffer("activity_window", torch.zeros(cfg.neurons, dtype=torch.int64))
        self.row_sparse_updates = False  # set by the engine, see set_row_sparse_updates
        self._last_batch: dict | None = None  # the sparse-backward record of the last training forward
        self.apply_constraints()

    def set_row_sparse_updates(self, enabled: bool) -> None:
        """The engine enables this when an optimizer step changes only the rows with a
        non-zero gradient (plain SGD, no weight decay, no regularizer). The address gradient
        is then a sparse COO tensor of the active rows, and the constraints renormalise only
        those rows: every other address row is bit-for-bit what the last step left."""
        self.row_sparse_updates = enabled

    def before_step(self) -> None:
        g = self.addresses.weight.grad
        if g is not None and g.is_sparse:
            # autograd's accumulation drops the "coalesced" flag of the row-sparse gradient;
            # its rows are unique by construction, so restore the flag instead of paying
            # for a sort and a copy of every value in coalesce()
            g._coalesced_(True)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.positive_weights:
            x = torch.relu(x)
        if self.cfg.l2_norm:
            # clamp: an all-zero input stays zero instead of becoming NaN
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        batch = None
        if self.cfg.sparse_backward and self.addresses.bias is None and torch.is_grad_enabled():
            batch = {"row_sparse": self.row_sparse_updates}
            h = SparseAddressProjection.apply(x, self.addresses.weight, batch)
        else:
            h = self.addresses(x)
        a = self.topk(h)
        if self.training:
            counts = self.topk.batch_active_counts
            self.activity_window += counts
            if batch is not None:
                batch["active"] = counts
                self._last_batch = batch
        return a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(self.hidden(x))

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.hidden(x)
        return self.values(a), a

    @torch.no_grad()
    def apply_constraints(self) -> None:
        # after a row-sparse step only the rows it changed can violate the constraints
        rows = self._last_batch.get("rows") if self._last_batch is not None else None
        self._last_batch = None
        w = self.addresses.weight
        if rows is None:
            self._constrain_addresses(w)
        else:
            w.index_copy_(0, rows, self._constrain_addresses(w.index_select(0, rows)))
        if self.cfg.positive_weights:
            self.values.weight.clamp_(min=0)  # biases (ablation only) stay signed, as in the reference

    def _constrain_addresses(self, w: torch.Tensor) -> torch.Tensor:
        if self.cfg.positive_weights:
            w.clamp_(min=0)
        if self.cfg.l2_norm:
            w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return w

    def on_epoch_start(self, epoch: int) -> None:
        self.topk.epoch = epoch

    def neuron_stats(self) -> dict:
        """Fraction of neurons whose GABA switch is complete (inhibited by the full v_{k+1})."""
        if self.cfg.k_approach != "gaba_switch":
            return {}
        switched = self.topk.gaba_counters >= self.cfg.gaba_switch_activations
        return {"gaba_switched": float(switched.float().mean())}

    def reset_head(self, num_classes: int) -> None:
        old = self.values
        self.values = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
        if self.cfg.positive_weights:  # constrain only the new head: addresses stay bit-identical
            with torch.no_grad():
                self.values.weight.clamp_(min=0)


@register_model("sdmlp", SDMLPConfig, "SDMLP: L2-normalised, non-negative, bias-free Top-K MLP (GABA switch)")
def build(cfg: SDMLPConfig, input_dim: int, num_classes: int) -> SDMLP:
    return SDMLP(cfg, input_dim, num_classes)
