"""The small interface every continual-learning regularizer implements.

The engine calls, per task: `on_task_start(model, task)`; per step: the loss gets
`+ penalty(model)`, then after backward `before_step(model, logits, y)` (before clipping
and the optimizer step), after the optimizer step and the model constraints
`after_step(model)`; at the end of a task `on_task_end(model, task)`. All state the future
of a run depends on is returned by `state_dict()` and restored by `load_state_dict()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RegularizerConfig:
    name: str = "none"

    def check(self) -> None:
        """Raise `ConfigError` naming the key when a value is impossible."""


def check_fields(cfg, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ("lam",), at_least_one: tuple[str, ...] = ()) -> None:
    """Shared range checks of regularizer configs; the message names the dotted key."""
    from sdmcl.errors import ConfigError

    for key in non_negative:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"regularizer.{key}: must be >= 0, got {getattr(cfg, key)}")
    for key in positive:
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"regularizer.{key}: must be > 0, got {getattr(cfg, key)}")
    for key in at_least_one:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"regularizer.{key}: must be >= 1, got {getattr(cfg, key)}")


class Regularizer:
    # True: the engine keeps the training graph alive after backward (for `before_step`)
    needs_logits_graph = False

    def __init__(self, cfg: RegularizerConfig, model: torch.nn.Module):
        self.cfg = cfg

    def on_task_start(self, model: torch.nn.Module, task) -> None:
        pass

    def penalty(self, model: torch.nn.Module) -> torch.Tensor | float:
        return 0.0

    def before_step(self, model: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor) -> None:
        pass

    def after_step(self, model: torch.nn.Module) -> None:
        pass

    def on_task_end(self, model: torch.nn.Module, task) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters a regularizer anchors, by name (stable across checkpoints)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for _, p in trainable(model)]


def quadratic_penalty(params: list[torch.Tensor], anchors: list[torch.Tensor], importance: list[torch.Tensor]) -> torch.Tensor:
    """Σ Ω (θ − θ*)² over all parameter tensors."""
    total = params[0].new_zeros(())
    for p, a, w in zip(params, anchors, importance):
        total = total + (w * (p - a) ** 2).sum()
    return total


def task_batches(task, batches: int, batch_size: int, seed_parts: tuple) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `batches` minibatches of a seeded permutation of the task's training data
    (deterministic: seeded from `seed_parts`, so a resumed run draws the same ones)."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(":".join(map(str, seed_parts)).encode()).digest()[:8], "little") >> 1
    gen = torch.Generator(device=task.train_x.device).manual_seed(seed)
    perm = torch.randperm(len(task.train_y), generator=gen, device=task.train_x.device)
    out = []
    for b in range(batches):
        idx = perm[b * batch_size : (b + 1) * batch_size]
        if len(idx) == 0:
            break
        out.append((task.train_x.index_select(0, idx), task.train_y.index_select(0, idx)))
    return out


class EvalMode:
    """Context: model in eval mode (no dropout, no GABA counting), previous mode restored."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was_training)
