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


class Regularizer:
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
