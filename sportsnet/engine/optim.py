"""Optimizers over named parameter groups, and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(groups: dict[str, list[nn.Parameter] | dict[str, Any]], name: str = "adamw", lr: float = 1e-3,
                    weight_decay: float = 1e-4, momentum: float = 0.9, lr_scale: dict[str, float] | None = None,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """One param group per entry of ``groups``, carrying its name (logged per group). An entry is a list
    of parameters, or a dict with ``"params"`` and the group's own settings (e.g. ``"weight_decay": 0.0``).

    ``lr_scale`` multiplies the learning rate of named groups (e.g. ``{"base": 0.1}``); ``betas`` and
    ``eps`` are AdamW's.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is not one of {OPTIMIZERS}")
    if not lr > 0:
        raise ValueError(f"lr={lr} must be > 0")
    scale = lr_scale or {}
    param_groups = []
    for g, entry in groups.items():
        entry = dict(entry) if isinstance(entry, dict) else {"params": entry}
        entry["params"] = list(entry["params"])
        if entry["params"]:
            param_groups.append({"lr": lr * scale.get(g, 1.0), **entry, "name": g})
    if not param_groups:
        raise ValueError("no trainable parameters: every group is empty")
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps`` to each group's lr, then cosine decay to
    ``min_lr_ratio * lr`` at ``total_steps``. Step it once per optimizer step."""
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps} must be >= 1")
    warmup_steps = min(max(0, warmup_steps), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
