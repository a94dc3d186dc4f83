"""The Top-K activation of the SDMLP and the Top-K MLP, with its k schedules.

Input h (B × n); r = relu(h); v_j = j-th largest entry of a row of r (detached: no
gradient flows through the threshold). Approaches (SPEC §2):

- `mask`: keep the k largest entries of r, zero the rest.
- `subtract`: relu(r − v_k); leaves k−1 neurons active, as the reference does.
- `linear_decay_mask` / `linear_decay_subtract`: as above, with k decaying linearly per
  epoch from k_max (default n) to k over `k_transition_epochs`.
- `gaba_switch` (the paper's default): relu(r − g ⊙ v_{k+1}) with g_i =
  clip(−1 + 2 c_i / T, −1, 1), where c_i counts the training samples for which neuron i
  was active and T = `gaba_switch_activations`. At g = −1 every positive input excites
  its neuron (no dead neurons early); once all g = +1 the layer is exact Top-K.
  The counters are model state (a buffer: checkpointed, restored, and kept when a
  pretrained model starts a continual run).

GABA counting (`gaba_counting`): `training` (the default) counts training samples only,
so test data never changes the model. `reference` also counts in the evaluation passes
the reference made through the Top-K layer (its validation on the seen tasks' test sets,
its EWC/MAS importance passes): the engine runs those passes inside
`reference_counting_passes(model)`, and only there does an evaluation pass count.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

KApproach = Literal["mask", "subtract", "linear_decay_mask", "linear_decay_subtract", "gaba_switch"]
K_APPROACHES: tuple[str, ...] = KApproach.__args__
GabaCounting = Literal["training", "reference"]


def linear_decay_k(epoch: int, k_max: int, k_min: int, transition_epochs: int) -> int:
    """k after `epoch` epochs: k_max − (k_max − k_min)·epoch/transition, floored at k_min."""
    if transition_epochs <= 0:
        return k_min
    k = k_max - (k_max - k_min) * epoch / transition_epochs
    return int(min(k_max, max(k, k_min)))


def active_counts(a: torch.Tensor) -> torch.Tensor:
    """Samples of the batch each neuron is active for (a > 0), as int64. `a` is a relu output
    (≥ 0), so sign(a) ∈ {0, 1} and its float sum is exact below 2²⁴ samples; on CPU this is
    ~3× faster than summing a boolean mask."""
    return a.detach().sign().sum(0).long()


def gaba_response(counters: torch.Tensor, switch_activations: int) -> torch.Tensor:
    """g = clip(−1 + 2c/T, −1, 1): −1 (excite) for a silent neuron, +1 (inhibit) after T activations."""
    return (counters.to(torch.float32) * (2.0 / switch_activations) - 1.0).clamp_(-1.0, 1.0)


class TopK(nn.Module):
    def __init__(
        self,
        neurons: int,
        k: int,
        approach: str = "gaba_switch",
        k_max: int | None = None,
        k_transition_epochs: int = 200,
        gaba_switch_activations: int = 5_000_000,
        gaba_counting: str = "training",
    ):
        super().__init__()
        if approach not in K_APPROACHES:
            raise ValueError(f"unknown k approach {approach!r}")
        self.neurons = neurons
        self.k = k
        self.approach = approach
        self.k_max = neurons if k_max is None else k_max
        self.k_transition_epochs = k_transition_epochs
        self.gaba_switch_activations = gaba_switch_activations
        # "reference": evaluation passes count too, inside reference_counting_passes()
        self.counts_reference_passes = approach == "gaba_switch" and gaba_counting == "reference"
        self.counting_eval_pass = False  # set only by reference_counting_passes()
        self.epoch = 0  # set by the model's on_epoch_start hook; drives the linear decay
        # in training: samples of the last batch each neuron was active for (the GABA
        # counters add them; the model reuses them instead of counting again)
        self.batch_active_counts: torch.Tensor | None = None
        if approach == "gaba_switch":
            self.register_buffer("gaba_counters", torch.zeros(neurons, dtype=torch.int64))

    def current_k(self) -> int:
        if self.approach.startswith("linear_decay"):
            return linear_decay_k(self.epoch, self.k_max, self.k, self.k_transition_epochs)
        return self.k

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.activate(torch.relu(h))

    def activate(self, r: torch.Tensor) -> torch.Tensor:
        """The activation from r = relu(h) ≥ 0 (callers that already hold relu(h) skip a pass)."""
        out = self._activate(r, self.current_k())
        if self.training:
            self.batch_active_counts = active_counts(out)
            if self.approach == "gaba_switch":
                self.gaba_counters += self.batch_active_counts
        elif self.counting_eval_pass:
            self.gaba_counters += active_counts(out)
        return out

    def _activate(self, r: torch.Tensor, k: int) -> torch.Tensor:
        if self.approach == "gaba_switch":
            v_k1 = torch.topk(r.detach(), k + 1, dim=1, sorted=True).values[:, -1:]
            g = gaba_response(self.gaba_counters, self.gaba_switch_activations)
            # relu(r − v ⊙ g) in one fused op (addcmul) instead of a product and a difference
            return torch.addcmul(r, v_k1, g, value=-1.0).relu_()
        if k >= r.shape[1]:
            return r
        if self.approach.endswith("mask"):
            vals, idx = torch.topk(r, k, dim=1, sorted=False)
            return torch.zeros_like(r).scatter(1, idx, vals)
        v_k = torch.topk(r.detach(), k, dim=1, sorted=True).values[:, -1:]
        return (r - v_k).relu_()

    def extra_repr(self) -> str:
        return f"neurons={self.neurons}, k={self.k}, approach={self.approach}"


def counts_reference_passes(model: nn.Module) -> bool:
    """True when some Top-K layer of `model` counts evaluation passes (gaba_counting: reference)."""
    return any(isinstance(m, TopK) and m.counts_reference_passes for m in model.modules())


@contextmanager
def reference_counting_passes(model: nn.Module):
    """Within this block, the GABA counters of every Top-K layer of `model` with
    gaba_counting `reference` also count evaluation-mode forward passes (the reference
    counted in every forward pass of its Top-K layer). A no-op for other models."""
    layers = [m for m in model.modules() if isinstance(m, TopK) and m.counts_reference_passes]
    for m in layers:
        m.counting_eval_pass = True
    try:
        yield
    finally:
        for m in layers:
            m.counting_eval_pass = False
