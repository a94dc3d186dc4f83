"""Optimizers. The paper's point: momentum keeps moving neurons that are no longer active
("stale momentum") and kills them, so SDMLP continual learning uses plain SGD."""

from __future__ import annotations

import torch

from sdmcl.config import OptimConfig

OPTIMIZERS = {
    "sgd": "SGD without momentum (the SDMLP's optimizer)",
    "sgdm": "SGD with momentum (optim.momentum, default 0.9)",
    "adam": "Adam",
    "rmsprop": "RMSProp",
    "adamw": "AdamW (decoupled weight decay: optim.weight_decay)",
}


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "sgdm":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(cfg.name)


def plain_sgd(cfg: OptimConfig) -> bool:
    """A step of this optimizer changes a parameter only where its gradient is non-zero."""
    return cfg.name == "sgd" and cfg.weight_decay == 0


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
