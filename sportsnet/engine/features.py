"""Training on frozen features: extract once, cache on disk, fit small heads in seconds.

Model-agnostic: an encoder is any callable from images to ``(B, D)`` features; a head is any module
from features to logits.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..hardware import autocast
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import to_device

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(encoder: Callable[[torch.Tensor], torch.Tensor], loader: Iterable, *, device: torch.device,
                     precision: str = "fp32", channels_last: bool = False, progress: bool = True,
                     desc: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, D)`` float32 features and ``(N,)`` labels on the CPU, in loader order."""
    feats, labels = [], []
    total = len(loader) if hasattr(loader, "__len__") else None
    for images, target in tqdm(loader, total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        with autocast(device, precision):
            f = encoder(to_device(images, device, channels_last))
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(target).long().cpu())
    if not feats:
        raise ValueError("the loader yielded no batches: nothing to encode")
    return torch.cat(feats), torch.cat(labels)


class FeatureCache:
    """Features on disk under ``directory``, one file per key (hashed), written atomically and read
    with ``weights_only=True``. The key must name everything the features depend on (model, weights,
    data files and their modification times, transform)."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None

    def path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"

    def get(self, key: str,
            compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.path(key)
        if path is not None and path.is_file():
            saved = load_checkpoint(path)
            if saved.get("key") == key:
                log.info("features from cache %s", path)
                return saved["features"], saved["labels"]
        feats, labels = compute()
        if path is not None:
            save_checkpoint(path, {"key": key, "features": feats, "labels": labels})
        return feats, labels


@torch.no_grad()
def head_accuracy(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, batch_size: int = 4096) -> float:
    head.eval()
    correct = 0
    for i in range(0, len(feats), batch_size):
        correct += (head(feats[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum().item()
    return correct / max(1, len(feats))


def train_head(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, *, steps: int = 300, lr: float = 1e-3,
               weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0,
               val: tuple[torch.Tensor, torch.Tensor] | None = None, eval_every: int = 25,
               on_step: Callable[[int, float], None] | None = None) -> dict:
    """Fit ``head`` on features with AdamW + cosine schedule for ``steps`` mini-batches (seeded).

    With ``val``, the state with the best validation accuracy is kept (checked every ``eval_every``
    steps and at the end). ``on_step(step, loss)`` sees every step's training loss (TensorBoard curves). Returns
    ``{"val_acc": best or None, "steps": steps}``.
    """
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(head).__name__} has no trainable parameters")
    if len(feats) == 0:
        raise ValueError("no training features")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    best_acc, best_state = -1.0, None
    bs = min(batch_size, len(feats))
    order = torch.randperm(len(feats), generator=g)
    cursor = 0
    for step in range(1, steps + 1):
        if cursor + bs > len(order):
            order, cursor = torch.randperm(len(feats), generator=g), 0
        idx = order[cursor:cursor + bs]
        cursor += bs
        head.train()
        loss = F.cross_entropy(head(feats[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, loss.item())
        if val is not None and (step % eval_every == 0 or step == steps):
            acc = head_accuracy(head, *val)
            if acc > best_acc:
                best_acc, best_state = acc, copy.deepcopy(head.state_dict())
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return {"val_acc": best_acc if val is not None else None, "steps": steps}


def fit_logistic(linear: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, *, l2: float = 1e-4,
                 max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS (the classic CLIP linear-probe protocol):
    minimises cross-entropy + ``l2 * ||W||^2`` starting from ``linear``'s weights; no learning rate
    to tune, and insensitive to the features' scale. Returns ``linear`` (fitted in place)."""
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-9, history_size=20)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(linear(feats), labels) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    linear.train()
    opt.step(closure)
    linear.eval()
    return linear
