"""Optimizers. The paper's point: momentum keeps moving neurons that are no longer active
("stale momentum") and kills them, so SDMLP continual learning uses plain SGD."""

from __future__ import annotations

import math

import numpy as np
import torch

from sdmcl.config import ADAMW_DEFAULT_WEIGHT_DECAY, OptimConfig

OPTIMIZERS = {
    "sgd": "SGD without momentum (the SDMLP's optimizer)",
    "sgdm": "SGD with momentum (optim.momentum, default 0.9)",
    "adam": "Adam",
    "rmsprop": "RMSProp",
    "adamw": "AdamW (decoupled weight decay: optim.weight_decay, default 0.001 as in the reference)",
}


def weight_decay(cfg: OptimConfig) -> float:
    """`optim.weight_decay`, or when it is null the default: 0.001 for AdamW (the reference's
    default for its MLPs), 0 for the other optimizers. (parse_config resolves it already.)"""
    if cfg.weight_decay is not None:
        return cfg.weight_decay
    return ADAMW_DEFAULT_WEIGHT_DECAY if cfg.name == "adamw" else 0.0


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    wd = weight_decay(cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=wd)
    if cfg.name == "sgdm":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=wd)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    raise ValueError(cfg.name)


def plain_sgd(cfg: OptimConfig) -> bool:
    """A step of this optimizer changes a parameter only where its gradient is non-zero."""
    return cfg.name == "sgd" and weight_decay(cfg) == 0


def clip_coefficient(params, max_norm: float) -> torch.Tensor:
    """max_norm / (‖g‖₂ + 1e-6), ‖g‖₂ over all gradients — the factor of
    `torch.nn.utils.clip_grad_norm_` before its clamp at 1 — also for sparse (COO) gradients."""
    flat = []  # the stored entries of every gradient
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            if not p.grad.is_coalesced():
                p.grad = p.grad.coalesce()
            flat.append(p.grad.values())
        else:
            flat.append(p.grad)
    if not flat:
        return torch.tensor(float("inf"))
    return max_norm / (torch.nn.utils.get_total_norm(flat, norm_type=2.0, foreach=True) + 1e-6)


def scale_gradients_(params, factor: torch.Tensor) -> None:
    for p in params:
        if p.grad is not None:
            (p.grad.values() if p.grad.is_sparse else p.grad).mul_(factor)


def plain_sgd_step_(params, lr: float, max_norm: float | None) -> float:
    """p −= lr·c·g for every parameter with a gradient, then drop the gradients; c clips the
    global gradient norm to `max_norm` as `torch.nn.utils.clip_grad_norm_` does
    (c = min(1, max_norm/(‖g‖₂ + 1e-6))). Returns c.

    The same step as `torch.optim.SGD` (no momentum, no weight decay) after clipping, in
    fewer operations: the factor goes into the step size instead of a pass over every
    gradient, and a sparse COO gradient (unique rows, as the SDMLP sends) is added as is.
    Reads the norm on the host: meant for the CPU, where that costs no device sync."""
    grads = [p.grad for p in params if p.grad is not None]
    c = 1.0
    if max_norm is not None and grads:
        squares = 0.0
        for g in grads:
            flat = (g._values() if g.is_sparse else g).reshape(-1)
            squares += float(torch.dot(flat, flat))
        c = min(1.0, max_norm / (math.sqrt(squares) + 1e-6))
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr * c)
                p.grad = None
    return c


# ---------------------------------------------------------------- learning-rate schedules

SCHEDULES = {
    "constant": "the optimizer's lr throughout (the reference); optional linear warm-up (optim.warmup_epochs)",
    "onecycle": "Trockman & Kolter's ConvMixer schedule: linear 0 → lr over the first 40%, → lr/20 at 80%, → 0 at the end",
    "warmup_cosine": "linear warm-up over optim.warmup_epochs, then cosine decay to 0",
}


class LRSchedule:
    """The learning rate as a function of the position in the schedule's span, in epochs.

    The position of a step is the epochs completed in the span plus the fraction of the
    current epoch done after the step (as Trockman & Kolter's ConvMixer training does), so
    it depends only on (task, epoch, step): a resumed run steps with the same rates. The
    span is the whole run (`schedule_span: run`) or each task (`task`, restarting)."""

    def __init__(self, cfg: OptimConfig, epochs_per_task: int, num_tasks: int):
        self.kind = cfg.schedule
        self.base_lr = cfg.lr
        self.warmup = cfg.warmup_epochs
        self.per_task = cfg.schedule_span == "task"
        self.epochs_per_task = epochs_per_task
        self.span = epochs_per_task * (1 if self.per_task else num_tasks)

    def factor(self, t: float) -> float:
        """lr / base lr at position `t` (epochs) of the span."""
        span, warm = self.span, self.warmup
        if self.kind == "onecycle":
            return float(np.interp(t, [0.0, span * 2 / 5, span * 4 / 5, span], [0.0, 1.0, 1 / 20, 0.0]))
        if warm > 0 and t < warm:
            return t / warm
        if self.kind == "warmup_cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (t - warm) / max(span - warm, 1e-12))))
        return 1.0

    def position(self, task_index: int, epoch_in_task: int, epoch_fraction: float) -> float:
        done = epoch_in_task if self.per_task else task_index * self.epochs_per_task + epoch_in_task
        return done + epoch_fraction

    def apply(self, optimizer: torch.optim.Optimizer, task_index: int, epoch_in_task: int, epoch_fraction: float) -> float:
        """Set the rate of every parameter group for the next step; returns it."""
        lr = self.base_lr * self.factor(self.position(task_index, epoch_in_task, epoch_fraction))
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr


def build_schedule(cfg: OptimConfig, epochs_per_task: int, num_tasks: int) -> LRSchedule | None:
    """None when the rate is constant (the default): the engine then never touches it."""
    if cfg.schedule == "constant" and not cfg.warmup_epochs:
        return None
    return LRSchedule(cfg, epochs_per_task, num_tasks)
