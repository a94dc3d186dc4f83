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
