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


def clip_grad_norm_(params, max_norm: float, skip_when_unclipped: bool) -> None:
    """Scale all gradients by min(1, max_norm / (‖g‖₂ + 1e-6)), ‖g‖₂ over all of them — the
    formula of `torch.nn.utils.clip_grad_norm_` — also for sparse (COO) gradients. With
    `skip_when_unclipped` (CPU, where reading the norm costs no device sync) the multiply by
    exactly 1.0, a no-op that still reads and writes every gradient, is skipped."""
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
        return
    total = torch.nn.utils.get_total_norm(flat, norm_type=2.0, foreach=True)
    coef = max_norm / (total + 1e-6)
    if skip_when_unclipped and float(coef) >= 1.0:
        return
    coef = coef.clamp(max=1.0)
    for g in flat:
        g.mul_(coef)
