"""SDMLP: the Sparse Distributed Memory MLP of Bricken et al. (ICLR 2023).

Forward for a batch x (B × d):  x ← relu(x) [positive_weights];  x ← x/‖x‖₂ [l2_norm];
h = W₁x (no bias: rows of W₁ are neuron *addresses*);  a = TopK(h);  logits = W₂a (the
*values*). After every optimizer step (and once at start) `apply_constraints` clamps all
weights to ≥ 0 [positive_weights] — the biases of the bias ablations too, as the reference
does, unless `positive_biases` is false — and rescales each address row to unit L2 norm
[l2_norm]. Each SDM component can be switched off alone for ablations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from sdmcl.errors import ConfigError
from sdmcl.models.base import ModelConfig
from sdmcl.models.topk import GabaCounting, KApproach, TopK
from sdmcl.models.topk_search import LowRankSearch, SDMLPSubsetFunction
from sdmcl.registry import register_model


@dataclass
class SDMLPConfig(ModelConfig):
    name: str = "sdmlp"
    neurons: int = 1000
    k: int = 10
    k_approach: KApproach = "gaba_switch"
    gaba_switch_activations: int = 5_000_000  # T: activations for g to go from −1 to +1
    gaba_counting: GabaCounting = "training"  # training samples only | reference: also its evaluation and importance passes
    k_max: int | None = None  # start of the linear decay (default: all neurons)
    k_transition_epochs: int = 200
    l2_norm: bool = True  # L2-normalise inputs and address rows
    positive_weights: bool = True  # relu inputs, clamp weights ≥ 0
    bias: bool = False  # hidden-layer bias (ablation)
    output_bias: bool = False  # output-layer bias (ablation)
    positive_biases: bool = True  # with positive_weights, clamp the biases ≥ 0 too (the reference); false: signed
    sparse_backward: bool = True  # compute address gradients only for neurons active in the batch
    # approximate Top-K for large layers (models/topk_search.py); exact is the reference
    topk_search: Literal["exact", "lowrank"] = "exact"
    search_rank: int = 32  # principal directions of the inputs the prescreen projects on
    search_margin: float | None = 0.05  # candidates: approximate score ≥ (1 − margin)·g·ṽ for some input (null: off)
    search_candidates: int = 0  # also each input's best approximate scores (0: none)
    search_max_union: float = 0.3  # exact path when the batch's candidates exceed this share of neurons
    search_min_neurons: int = 4096  # exact path for smaller layers (their candidates are too many to pay)
    search_recall_every: int = 20  # training steps between recall samples (0: none)
    search_recall_inputs: int = 8  # inputs of a sampled batch compared with the exact layer

    def check(self) -> None:
        check_topk_fields(self)
        if self.topk_search == "lowrank" and (self.bias or self.output_bias):
            raise ConfigError("model.topk_search: 'lowrank' needs a bias-free SDMLP; set model.bias and model.output_bias "
                              "to false, or topk_search: exact")
        # the search keys are checked whatever topk_search is: an impossible value is a mistake either way
        if self.search_rank < 1:
            raise ConfigError(f"model.search_rank: must be >= 1, got {self.search_rank}")
        if self.search_candidates < 0:
            raise ConfigError(f"model.search_candidates: must be >= 0, got {self.search_candidates}")
        if self.search_margin is not None and not 0 <= self.search_margin < 1:
            raise ConfigError(f"model.search_margin: must be in [0, 1) or null, got {self.search_margin}")
        if self.search_margin is None and self.search_candidates == 0:
            raise ConfigError("model.search_margin: null needs model.search_candidates >= 1 (else no neuron is a candidate)")
        if not 0 < self.search_max_union <= 1:
            raise ConfigError(f"model.search_max_union: must be in (0, 1], got {self.search_max_union}")
        for key in ("search_min_neurons", "search_recall_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key}: must be >= 0, got {getattr(self, key)}")
        if self.search_recall_inputs < 1:
            raise ConfigError(f"model.search_recall_inputs: must be >= 1, got {self.search_recall_inputs}")


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


class SDMLPFunction(torch.autograd.Function):
    """logits = W₂ · TopK(W₁x) for the bias-free SDMLP, with a hand-written backward.

    One autograd node instead of one per operation. The backward is exact for every k
    approach: the threshold v is detached, so ∂a/∂h is 1 where a > 0 and h > 0 and 0
    elsewhere (a > 0 with h ≤ 0 happens only while a GABA response is negative), giving
        ∂L/∂W₂ = (∂L/∂z)ᵀ a,   ∂L/∂h = ((∂L/∂z) W₂) ⊙ [a > 0][h > 0],   ∂L/∂W₁ = (∂L/∂h)ᵀ x.
    After the GABA switch only ~k of n neurons are active per input, so most rows of ∂L/∂W₁
    are exactly zero: the backward multiplies only the rows of neurons active in the batch
    (the forward's Top-K counts tell which). `batch` is a dict made for this forward pass:
    with `row_sparse` set the address gradient is a sparse COO tensor of those rows, and
    the backward records them as `rows` (the constraints then touch only them). Same values
    as autograd through the individual operations, up to float summation order."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, addresses: torch.Tensor, values: torch.Tensor, topk: TopK, batch: dict):
        r = (x @ addresses.T).relu_()
        a = topk.activate(r)
        # training samples per neuron active after Top-K (counted in training mode only);
        # without them the backward takes the dense path
        batch["active"] = topk.batch_active_counts if topk.training else None
        if topk.training:  # summed activation per neuron, for the reference's dead-neuron statistic
            batch["activation_sum"] = a.sum(0)
        ctx.batch = batch
        ctx.save_for_backward(x, addresses, values, r, a)
        return a @ values.T

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        x, addresses, values, r, a = ctx.saved_tensors
        batch = ctx.batch
        need_x, need_w1, need_w2 = ctx.needs_input_grad[:3]
        grad_values = grad_logits.T @ a if need_w2 else None
        if not (need_x or need_w1):
            return None, None, grad_values, None, None
        # [a > 0][h > 0]: a, r = relu(h) ≥ 0, so sign(min(a, r)) is that indicator
        grad_h = (grad_logits @ values).mul_(torch.minimum(a, r).sign_())
        active = batch.get("active")
        rows = None if active is None else active.nonzero().squeeze(1)
        if rows is None or rows.numel() * 4 > addresses.shape[0] * 3:  # most rows active: one dense product is cheaper
            return (grad_h @ addresses if need_x else None), (grad_h.T @ x if need_w1 else None), grad_values, None, None
        grad_h = grad_h.index_select(1, rows)
        grad_x = grad_h @ addresses.index_select(0, rows) if need_x else None
        grad_w1 = None
        if need_w1:
            grad_w1 = grad_h.T @ x
            if batch.get("row_sparse"):
                batch["rows"] = rows
                grad_w1 = torch.sparse_coo_tensor(rows[None], grad_w1, addresses.shape, is_coalesced=True, check_invariants=False)
            else:
                grad_w1 = torch.zeros_like(addresses).index_copy_(0, rows, grad_w1)
        return grad_x, grad_w1, grad_values, None, None


class SDMLP(nn.Module):
    def __init__(self, cfg: SDMLPConfig, input_dim: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.addresses = nn.Linear(input_dim, cfg.neurons, bias=cfg.bias)
        self.topk = TopK(cfg.neurons, cfg.k, cfg.k_approach, cfg.k_max, cfg.k_transition_epochs, cfg.gaba_switch_activations,
                         cfg.gaba_counting)
        self.values = nn.Linear(cfg.neurons, num_classes, bias=cfg.output_bias)
        # training samples each neuron was active for since the engine last read it, and
        # the sum of its activations over them (the reference's dead-neuron statistic)
        self.register_buffer("activity_window", torch.zeros(cfg.neurons, dtype=torch.int64))
        self.register_buffer("activation_window", torch.zeros(cfg.neurons, dtype=torch.float64))
        self.optional_buffers = ("activation_window",)  # older checkpoints lack it: it then starts at zero
        self.row_sparse_updates = False  # set by the engine, see set_row_sparse_updates
        self.all_rows_move = False
        self._last_batch: dict | None = None  # the sparse-backward record of the last training forward
        self.search = None
        if cfg.topk_search == "lowrank":
            self.search = LowRankSearch(cfg.neurons, input_dim, cfg.search_rank, cfg.search_margin, cfg.search_candidates,
                                        cfg.search_max_union, cfg.search_min_neurons, cfg.search_recall_every,
                                        cfg.search_recall_inputs)
        self.apply_constraints()

    def set_row_sparse_updates(self, enabled: bool, all_rows_move: bool = False) -> None:
        """The engine enables this when an optimizer step changes only the rows with a
        non-zero gradient (plain SGD, no weight decay, no regularizer). The address gradient
        is then a sparse COO tensor of the active rows, and the constraints renormalise only
        those rows: every other address row is bit-for-bit what the last step left.
        `all_rows_move`: the engine adds a dense term to that gradient before the step (a
        regularizer's closed-form penalty gradient), so the constraints cover every row."""
        self.row_sparse_updates = enabled
        self.all_rows_move = all_rows_move

    def before_step(self) -> None:
        for g in (self.addresses.weight.grad, self.values.weight.grad):
            if g is not None and g.is_sparse:
                # autograd's accumulation drops the "coalesced" flag of the row-sparse gradient;
                # its rows are unique by construction, so restore the flag instead of paying
                # for a sort and a copy of every value in coalesce()
                g._coalesced_(True)

    def prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed per-sample input transform: relu [positive_weights], then L2
        normalisation [l2_norm]. The engine applies it once to each data split and passes
        `prepared=True`; called on raw inputs otherwise."""
        if self.cfg.positive_weights:
            x = torch.relu(x)
        if self.cfg.l2_norm:
            # clamp: an all-zero input stays zero instead of becoming NaN
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return x

    def candidates(self, x: torch.Tensor) -> torch.Tensor | None:
        """The approximate Top-K's candidate neurons for the (prepared) batch, or None: exact."""
        if self.search is None:
            return None
        cols = self.search.select(x, self.addresses.weight, self.topk.responses(), self.topk.current_k())
        if self.training:
            self.search.note_step(cols is not None, 0 if cols is None else len(cols))
        return cols

    def hidden(self, x: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        x = x if prepared else self.prepare_inputs(x)
        cols = self.candidates(x)
        if cols is not None:  # activations of the candidates, zero elsewhere
            w = self.addresses.weight
            a_u = self.topk.activate((x @ w.index_select(0, cols).T).relu_(), cols)
            a = torch.zeros(len(x), w.shape[0], dtype=a_u.dtype, device=a_u.device).index_copy_(1, cols, a_u)
        else:
            # relu in place: the projection is a fresh tensor that its backward does not need
            a = self.topk.activate(self.addresses(x).relu_())
        if self.training:
            self.activity_window += self.topk.batch_active_counts
            self.activation_window += a.detach().sum(0)
        return a

    def forward(self, x: torch.Tensor, prepared: bool = False) -> torch.Tensor:
        x = x if prepared else self.prepare_inputs(x)
        if self.search is not None and torch.is_grad_enabled():
            cols = self.candidates(x)
            if cols is not None:
                return self._forward_candidates(x, cols)
        if self.cfg.sparse_backward and self.addresses.bias is None and self.values.bias is None and torch.is_grad_enabled():
            batch = {"row_sparse": self.row_sparse_updates}
            logits = SDMLPFunction.apply(x, self.addresses.weight, self.values.weight, self.topk, batch)
            if self.training:
                self.activity_window += batch["active"]
                self.activation_window += batch["activation_sum"]
                self._last_batch = batch
            return logits
        return self.values(self.hidden(x, prepared=True))

    def _forward_candidates(self, x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The approximate Top-K step: exact activations of the candidate neurons only."""
        sample = None
        if self.training and self.search.wants_recall_sample():
            with torch.no_grad():  # the exact layer on a few inputs, before this step counts
                xs = x[: self.cfg.search_recall_inputs]
                exact_r = (xs @ self.addresses.weight.T).relu_()
                sample = exact_r, self.topk._activate(exact_r, self.topk.current_k())
        batch = {"row_sparse": self.row_sparse_updates}
        logits = SDMLPSubsetFunction.apply(x, self.addresses.weight, self.values.weight, self.topk, cols, batch)
        r, a = batch.pop("r"), batch.pop("a")
        if sample is not None:
            self.search.note_recall(*sample, cols, a[: len(sample[0])], self.topk.current_k())
        del r
        if self.training:
            self.activity_window += batch["active"]
            self.activation_window.index_add_(0, cols, a.detach().sum(0).to(self.activation_window.dtype))
            self._last_batch = batch
        return logits

    def forward_with_hidden(self, x: torch.Tensor, prepared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.hidden(x, prepared)
        return self.values(a), a

    @torch.no_grad()
    def apply_constraints(self) -> None:
        # after a row-sparse step only the rows it changed can violate the constraints
        rows = self._last_batch.get("rows") if self._last_batch is not None and not self.all_rows_move else None
        self._last_batch = None
        w = self.addresses.weight
        if rows is not None and rows.numel() * 4 < w.shape[0]:
            # few rows changed (a large layer): constrain those rows only, and the columns of
            # the values that the step changed with them
            self._constrain_rows(rows)
            return
        if self.cfg.positive_weights:
            w.clamp_(min=0)  # a no-op on rows the step did not change (they are ≥ 0 already)
        if self.cfg.l2_norm:
            norms = torch.linalg.vector_norm(w, dim=1).clamp_min_(1e-12)  # clamp: an all-zero row stays zero, not NaN
            if rows is not None:
                # divide only the changed rows; the others by exactly 1, so they keep their
                # bits (a re-divided unit row can move by an ulp). Whole-matrix passes are
                # cheaper here than gathering and scattering the changed rows.
                norms = torch.ones_like(norms).index_copy_(0, rows, norms.index_select(0, rows))
            w.div_(norms[:, None])
        if self.cfg.positive_weights:
            self.values.weight.clamp_(min=0)
            if self.cfg.positive_biases:  # the reference clamps every parameter, biases included
                for bias in (self.addresses.bias, self.values.bias):
                    if bias is not None:
                        bias.clamp_(min=0)
        if self.search is not None:
            self.search.refresh(w, rows)

    @torch.no_grad()
    def _constrain_rows(self, rows: torch.Tensor) -> None:
        w = self.addresses.weight
        sub = w.index_select(0, rows)
        if self.cfg.positive_weights:
            sub.clamp_(min=0)
        if self.cfg.l2_norm:
            sub.div_(torch.linalg.vector_norm(sub, dim=1).clamp_min_(1e-12)[:, None])
        w.index_copy_(0, rows, sub)
        if self.cfg.positive_weights:
            v = self.values.weight
            v.index_copy_(1, rows, v.index_select(1, rows).clamp_(min=0))
        if self.search is not None:
            self.search.refresh(w, rows)

    def on_epoch_start(self, epoch: int) -> None:
        self.topk.epoch = epoch
        if self.search is not None:
            self.search.start_epoch()

    def on_task_start(self, task) -> None:
        if self.search is not None:  # the prescreen's principal directions include this task's inputs
            with torch.no_grad():
                self.search.observe(self.prepare_inputs(task.train_x))

    def neuron_stats(self) -> dict:
        """Fraction of neurons whose GABA switch is complete (inhibited by the full v_{k+1});
        with the approximate Top-K its recall and use since the last call."""
        stats = {}
        if self.cfg.k_approach == "gaba_switch":
            switched = self.topk.gaba_counters >= self.cfg.gaba_switch_activations
            stats["gaba_switched"] = float(switched.float().mean())
        if self.search is not None:
            stats.update(self.search.read_stats())
        return stats

    def reset_head(self, num_classes: int) -> None:
        old = self.values
        self.values = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
        if self.cfg.positive_weights:  # constrain only the new head: addresses stay bit-identical
            with torch.no_grad():
                self.values.weight.clamp_(min=0)
                if self.cfg.positive_biases and self.values.bias is not None:
                    self.values.bias.clamp_(min=0)

    @property
    def rectifies_inputs(self) -> bool:
        """True when the forward pass drops the negative part of its inputs (relu)."""
        return self.cfg.positive_weights


@register_model("sdmlp", SDMLPConfig, "SDMLP: L2-normalised, non-negative, bias-free Top-K MLP (GABA switch)")
def build(cfg: SDMLPConfig, input_dim: int, num_classes: int) -> SDMLP:
    return SDMLP(cfg, input_dim, num_classes)
