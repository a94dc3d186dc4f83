"""NISPA (Gurbuz & Dovrolis, ICML 2022): Neuro-Inspired Stability-Plasticity Adaptation
in sparse networks; our own, simplified implementation.

A sparse MLP of fixed connection density. Every hidden unit is *plastic* until it becomes
*stable*. Each task is trained in phases of `phase_epochs` epochs; after each phase:
1. Select stable units, per hidden layer: rank the plastic units by their mean activation
   on the task's training data and add them, most active first, until the stable units
   hold a fraction a_f of the layer's total activation; a_f = min(1, a_f_start +
   phase · a_f_step) grows with the phases of a task.
2. Freeze the incoming connections of stable units (their gradients are zeroed).
3. Drop the connections from plastic units to stable units (changes of plastic units
   must not disturb what stable units compute), and regrow as many new connections at
   random positions that end in plastic units, initialised to 0 — density stays fixed.
The output layer is dense and shared by all classes (class-incremental, single head).
`multi_head: true` masks the logits to the current task's classes during training (the
paper's task-incremental setting; at test time there are no task labels, so the head is
still single). Simplifications against the paper: a fixed a_f schedule instead of the
accuracy-driven stopping of phases, and zero-initialised regrown connections.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from torch import nn

from sdmcl.errors import ConfigError
from sdmcl.models.base import ModelConfig
from sdmcl.registry import register_model


@dataclass
class NISPAConfig(ModelConfig):
    name: str = "nispa"
    hidden_sizes: list[int] = field(default_factory=lambda: [1000, 1000])
    density: float = 0.1  # fraction of possible connections present in each hidden layer
    phase_epochs: int = 5
    a_f_start: float = 0.5
    a_f_step: float = 0.1
    activation_samples: int = 2048  # training samples used to rank units
    multi_head: bool = False
    mask_seed: int | None = None  # None: drawn from the run seed

    def check(self) -> None:
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ConfigError(f"model.hidden_sizes: needs at least one layer of >= 1 unit, got {self.hidden_sizes}")
        if not 0 < self.density <= 1:
            raise ConfigError(f"model.density: must be in (0, 1], got {self.density}")
        if self.phase_epochs < 1:
            raise ConfigError(f"model.phase_epochs: must be >= 1, got {self.phase_epochs}")
        for key in ("a_f_start", "a_f_step"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"model.{key}: must be in [0, 1], got {getattr(self, key)}")


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


class NISPA(nn.Module):
    def __init__(self, cfg: NISPAConfig, input_dim: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        sizes = [input_dim] + list(cfg.hidden_sizes)
        self.mask_seed = cfg.mask_seed if cfg.mask_seed is not None else int(torch.randint(2**62, ()))
        gen = torch.Generator().manual_seed(_seed(self.mask_seed, "init"))
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(sizes[-1], num_classes)
        for i, layer in enumerate(self.hidden_layers):
            self.register_buffer(f"mask{i}", (torch.rand(layer.weight.shape, generator=gen) < cfg.density).float())
            self.register_buffer(f"stable{i}", torch.zeros(layer.out_features, dtype=torch.bool))
            with torch.no_grad():  # keep the pre-activation scale of a dense layer despite the sparsity
                layer.weight.mul_(cfg.density ** -0.5)
        self.register_buffer("task_epochs", torch.zeros((), dtype=torch.long))  # epochs begun in this task
        self.register_buffer("task_index", torch.zeros((), dtype=torch.long))
        self.register_buffer("task_classes", torch.zeros(num_classes, dtype=torch.bool))
        self._task = None
        self.apply_constraints()

    def masks(self) -> list[torch.Tensor]:
        return [getattr(self, f"mask{i}") for i in range(len(self.hidden_layers))]

    def stables(self) -> list[torch.Tensor]:
        return [getattr(self, f"stable{i}") for i in range(len(self.hidden_layers))]

    def layer_activations(self, x: torch.Tensor):
        acts = []
        for layer in self.hidden_layers:
            x = torch.relu(layer(x))
            acts.append(x)
        logits = self.head(x)
        if self.cfg.multi_head and self.training:
            logits = logits.masked_fill(~self.task_classes, float("-inf"))
        return logits, acts

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, acts = self.layer_activations(x)
        return logits, torch.cat(acts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_activations(x)[0]

    @torch.no_grad()
    def apply_constraints(self) -> None:
        for layer, mask in zip(self.hidden_layers, self.masks()):
            layer.weight.mul_(mask)

    def before_step(self) -> None:
        for layer, mask, stable in zip(self.hidden_layers, self.masks(), self.stables()):
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(mask).masked_fill_(stable[:, None], 0.0)
            if layer.bias.grad is not None:
                layer.bias.grad.masked_fill_(stable, 0.0)

    def on_task_start(self, task) -> None:
        self._task = task
        self.task_epochs.zero_()
        self.task_index.fill_(task.index)
        self.task_classes.zero_()
        self.task_classes[list(task.classes)] = True

    def on_task_resume(self, task) -> None:
        self._task = task

    def on_epoch_start(self, epoch: int) -> None:
        done = int(self.task_epochs)
        if done > 0 and done % self.cfg.phase_epochs == 0 and self._task is not None:
            self.end_phase(done // self.cfg.phase_epochs)
        self.task_epochs += 1

    def on_task_end(self, task) -> None:
        done = int(self.task_epochs)
        self.end_phase(done // self.cfg.phase_epochs + 1)

    @torch.no_grad()
    def end_phase(self, phase: int) -> None:
        cfg = self.cfg
        a_f = min(1.0, cfg.a_f_start + (phase - 1) * cfg.a_f_step)
        x = self._task.train_x[: cfg.activation_samples]
        was_training = self.training
        self.eval()
        acts = [a.mean(0) for a in self.layer_activations(x)[1]]
        self.train(was_training)
        gen = torch.Generator(device=x.device).manual_seed(_seed(self.mask_seed, int(self.task_index), phase))
        for i, (layer, mask, stable, act) in enumerate(zip(self.hidden_layers, self.masks(), self.stables(), acts)):
            total = float(act.sum())
            if total <= 0:
                continue
            held = float(act[stable].sum())
            order = torch.argsort(act.masked_fill(stable, -1.0), descending=True)
            for unit in order.tolist():
                if held >= a_f * total or bool(stable[unit]) or float(act[unit]) <= 0:
                    break
                stable[unit] = True
                held += float(act[unit])
            if i == 0:
                continue  # inputs of the first layer are pixels: nothing plastic to cut off
            plastic_in = ~self.stables()[i - 1]
            drop = mask.bool() & stable[:, None] & plastic_in[None, :]
            n_drop = int(drop.sum())
            if n_drop == 0:
                continue
            mask[drop] = 0.0
            layer.weight[drop] = 0.0
            free = (mask == 0) & ~stable[:, None]
            free[drop] = False  # do not regrow what was just cut
            candidates = free.flatten().nonzero().squeeze(1)
            pick = candidates[torch.randperm(len(candidates), generator=gen, device=x.device)[:n_drop]]
            mask.view(-1)[pick] = 1.0  # weights there are 0: regrown connections start at 0


@register_model("nispa", NISPAConfig, "NISPA: sparse MLP with stable/plastic units and connection rewiring")
def build(cfg: NISPAConfig, input_dim: int, num_classes: int) -> NISPA:
    return NISPA(cfg, input_dim, num_classes)
