"""Elastic Weight Consolidation (Kirkpatrick et al. 2017), per-task ("memory") or online.

At the end of each task the diagonal Fisher F is estimated on a few minibatches of that
task's training data (model in eval mode):

    F = (1/N) Σ_{batches b} (∇_θ Σ_{i∈b} CE(β·logits_i, target_i))²

over B = `fisher_batches` batches of S = `fisher_batch_size` samples (fewer if the task is
smaller), with N chosen by `normalization`:
- `mean` (default): N = the number of samples used (B·S when the task has that many);
- `reference`: N = (B − 1)·S whatever the task size, as the reference code did (it
  configured 5 batches of 512, divided by 5·512, and its loop `if i > 5: break` used 6).
  Its F is then 6/5 of the mean on tasks of ≥ 3,072 samples, and 1,000/2,560 of it on
  Split CIFAR-100's 1,000-image tasks (2 batches used, divided by 2,560).

and a target chosen by `fisher`:
- `reference`: the model's own argmax prediction (what the paper's authors did);
- `empirical`: the true label (the "empirical Fisher");
- `expected`: a label sampled from softmax(β·logits) (an unbiased one-sample estimate of
  the true Fisher; seeded per task, so reruns and resumes draw the same labels).

`memory` mode keeps (F_t, θ_t) for every past task; penalty λ Σ_t Σ F_t (θ − θ_t)².
`online` mode (Schwarz et al. 2018) keeps one F ← γF + F_t and θ* ← θ_t;
penalty λ Σ F (θ − θ*)². No factor ½, as in the reference.

Reference settings: λ = 200, β = 0.005 (MNIST); λ = 100, β = 0.08 (CIFAR embeddings);
6 batches of 512, `normalization: reference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from sdmcl.errors import ConfigError
from sdmcl.registry import register_regularizer
from sdmcl.regularizers.base import EvalMode, check_fields, Regularizer, RegularizerConfig, quadratic_penalty, snapshot, task_batches, trainable


@dataclass
class EWCConfig(RegularizerConfig):
    name: str = "ewc"
    lam: float = 200.0
    beta: float = 0.005  # softmax temperature of the Fisher's log-likelihood
    fisher: Literal["reference", "empirical", "expected"] = "reference"
    mode: Literal["memory", "online"] = "memory"
    gamma: float = 1.0  # online mode: decay of the running Fisher
    fisher_batches: int = 6
    fisher_batch_size: int = 512
    normalization: Literal["mean", "reference"] = "mean"  # divide by the samples used | by (fisher_batches − 1)·fisher_batch_size

    def check(self) -> None:
        check_fields(self, positive=("beta",), at_least_one=("fisher_batches", "fisher_batch_size"))
        if self.normalization == "reference" and self.fisher_batches < 2:
            raise ConfigError("regularizer.fisher_batches: normalization 'reference' divides by (fisher_batches − 1)·fisher_batch_size, "
                              f"so it needs fisher_batches >= 2, got {self.fisher_batches} (the reference used 6)")
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"regularizer.gamma: must be in [0, 1], got {self.gamma}")


def fisher_diagonal(model, batches, beta: float, estimator: str, seed: int, divisor: float | None = None) -> list[torch.Tensor]:
    """The sum over `batches` of the squared batch gradients, divided by `divisor` (default:
    the number of samples used)."""
    params = [p for _, p in trainable(model)]
    fisher = [torch.zeros_like(p) for p in params]
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    n = 0
    with EvalMode(model):
        for x, y in batches:
            logits = model(x)
            log_probs = F.log_softmax(beta * logits, dim=1)
            if estimator == "reference":
                target = logits.argmax(1)
            elif estimator == "empirical":
                target = y
            else:
                target = torch.multinomial(log_probs.detach().exp(), 1, generator=gen).squeeze(1)
            loss = F.nll_loss(log_probs, target, reduction="sum")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f += g**2
            n += len(y)
    return [f / (n if divisor is None else divisor) for f in fisher]


class EWC(Regularizer):
    def __init__(self, cfg: EWCConfig, model):
        super().__init__(cfg, model)
        self.fishers: list[list[torch.Tensor]] = []  # memory: one per task; online: one
        self.anchors: list[list[torch.Tensor]] = []

    def on_task_end(self, model, task) -> None:
        cfg = self.cfg
        batches = task_batches(task, cfg.fisher_batches, cfg.fisher_batch_size, ("ewc", task.index))
        divisor = (cfg.fisher_batches - 1) * cfg.fisher_batch_size if cfg.normalization == "reference" else None
        fisher = fisher_diagonal(model, batches, cfg.beta, cfg.fisher, seed=task.index, divisor=divisor)
        if cfg.mode == "online" and self.fishers:
            self.fishers = [[cfg.gamma * old + new for old, new in zip(self.fishers[0], fisher)]]
            self.anchors = [snapshot(model)]
        else:
            self.fishers.append(fisher)
            self.anchors.append(snapshot(model))

    def penalty(self, model):
        if not self.fishers:
            return 0.0
        params = [p for _, p in trainable(model)]
        total = sum(quadratic_penalty(params, a, f) for a, f in zip(self.anchors, self.fishers))
        return self.cfg.lam * total

    def state_dict(self) -> dict:
        return {"fishers": self.fishers, "anchors": self.anchors}

    def load_state_dict(self, state: dict) -> None:
        self.fishers = state.get("fishers", [])
        self.anchors = state.get("anchors", [])


@register_regularizer("ewc", EWCConfig, "EWC: per-task (memory) or online Fisher penalty")
def build(cfg: EWCConfig, model) -> EWC:
    return EWC(cfg, model)
