"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017), online.

Per step: g = ∇_θ Σ_batch CE(β·logits, y) — the *unregularized* loss (sum over the batch
and β-scaled logits, as in the reference) — and after the optimizer step and the model's
constraints, w ← w − g ⊙ Δθ (the path integral of the loss decrease each weight caused).
At the end of a task: Ω ← Ω + w / (Δθ_task² + ξ) with Δθ_task the change of θ over the
task and damping ξ = 0.1; w ← 0; anchor θ_prev ← θ. Penalty λ Σ Ω (θ − θ_prev)².
Reference settings: λ = 1500, β = 0.005 (MNIST); λ = 1350, β = 0.02 (CIFAR).

The reference computed g with `backward(retain_graph=True)` into the same `.grad` buffers
as the training loss, so its optimizer step (after clipping the sum) also followed g: it
descended CE + penalty + Σ_batch CE(β·logits). Here g is computed with `torch.autograd.grad`
and the training step uses the training loss only; `reference_gradient_leak: true` adds g
to the training gradients before clipping, reproducing the reference's step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdmcl.registry import register_regularizer
from sdmcl.regularizers.base import Regularizer, check_fields, RegularizerConfig, quadratic_penalty, snapshot, trainable


@dataclass
class SIConfig(RegularizerConfig):
    name: str = "si"
    lam: float = 1500.0
    beta: float = 0.005
    damping: float = 0.1
    reference_gradient_leak: bool = False  # true: the optimizer also follows g, as in the reference

    def check(self) -> None:
        check_fields(self, positive=("beta", "damping"))


class SI(Regularizer):
    needs_logits_graph = True

    def __init__(self, cfg: SIConfig, model):
        super().__init__(cfg, model)
        self.w = [torch.zeros_like(p) for p in snapshot(model)]
        self.importance = [torch.zeros_like(p) for p in self.w]
        self.prev = snapshot(model)  # weights at the start of the current task
        self.tasks_done = 0
        self._grads: list[torch.Tensor] | None = None
        self._before: list[torch.Tensor] | None = None

    def before_step(self, model, logits, y) -> None:
        params = [p for _, p in trainable(model)]
        loss = F.cross_entropy(self.cfg.beta * logits, y, reduction="sum")
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        self._grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        self._before = [p.detach().clone() for p in params]
        if self.cfg.reference_gradient_leak:
            for p, g in zip(params, grads):
                if g is not None:
                    if p.grad is None:
                        p.grad = g.clone()
                    else:
                        p.grad.add_(g)

    def after_step(self, model) -> None:
        if self._grads is None:
            return
        for w, g, p, old in zip(self.w, self._grads, (p for _, p in trainable(model)), self._before):
            w -= g * (p.detach() - old)
        self._grads = self._before = None

    def on_task_end(self, model, task) -> None:
        now = snapshot(model)
        for omega, w, theta, prev in zip(self.importance, self.w, now, self.prev):
            omega += w / ((theta - prev) ** 2 + self.cfg.damping)
            w.zero_()
        self.prev = now
        self.tasks_done += 1

    def penalty(self, model):
        if self.tasks_done == 0:
            return 0.0
        return self.cfg.lam * quadratic_penalty([p for _, p in trainable(model)], self.prev, self.importance)

    def state_dict(self) -> dict:
        return {"w": self.w, "importance": self.importance, "prev": self.prev, "tasks_done": self.tasks_done}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.w, self.importance, self.prev = state["w"], state["importance"], state["prev"]
            self.tasks_done = state["tasks_done"]


@register_regularizer("si", SIConfig, "Synaptic Intelligence: online path-integral importance")
def build(cfg: SIConfig, model) -> SI:
    return SI(cfg, model)
