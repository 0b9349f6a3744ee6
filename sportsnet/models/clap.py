"""CLAP, the class-adaptive linear probe (Silva-Rodríguez, Hajimiri, Ben Ayed and Dolz, "A Closer Look at the
Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024), and the zero-shot-initialised linear probe it
builds on (ZS-LP), written out on frozen CLIP image features.

ZS-LP (:class:`ZeroShotLinearProbe`) is a cosine classifier whose class prototypes start at the zero-shot text
embeddings: ``logits = scale * normalize(f) @ normalize(P)^T``, so untrained it *is* the zero-shot classifier.
CLAP trains it with cross-entropy plus a penalty that keeps each prototype near its zero-shot embedding,
``mean_k lambda_k * ||p_k - t_k||^2``, where ``lambda_k`` is the zero-shot classifier's mean probability of the
right class on class ``k``'s support features (:func:`clap_multipliers`): a class the zero-shot classifier
already gets right stays near it, one it gets wrong may move. Every hyper-parameter is fixed (the paper's: SGD,
learning rate 0.1, momentum 0.9, batch 256, 300 epochs, cosine decay), so nothing needs a validation split;
``lambdas=None`` trains plain ZS-LP.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class ZeroShotLinearProbe(nn.Module):
    """Cosine classifier over ``(B, D)`` features with prototypes ``(C, D)`` starting at ``text_classifier.T``."""

    def __init__(self, text_classifier: torch.Tensor, logit_scale: float):
        super().__init__()
        self.register_buffer("anchors", text_classifier.T.float().clone())
        self.prototypes = nn.Parameter(self.anchors.clone())
        self.logit_scale = float(logit_scale)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(feats, dim=-1) @ F.normalize(self.prototypes, dim=-1).T

    def penalty(self, lambdas: torch.Tensor) -> torch.Tensor:
        """CLAP's constraint term ``mean_k lambda_k * ||p_k - t_k||^2``."""
        return (lambdas * (self.prototypes - self.anchors).pow(2).sum(dim=1)).mean()


def clap_multipliers(zero_shot_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(C,)``: for each class, the zero-shot classifier's mean softmax probability of that class on its support
    features (every class needs at least one)."""
    C = zero_shot_logits.shape[1]
    labels = labels.long()
    counts = torch.bincount(labels, minlength=C)
    if len(counts) > C or (counts == 0).any():
        raise ValueError(f"every one of the {C} classes needs a support feature; counts per class: {counts.tolist()}")
    right = zero_shot_logits.float().softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
    return torch.zeros(C, device=right.device).index_add_(0, labels, right) / counts.float()


def fit_clap(head: ZeroShotLinearProbe, feats: torch.Tensor, labels: torch.Tensor, *,
             lambdas: torch.Tensor | None = None, epochs: int = 300, lr: float = 0.1, momentum: float = 0.9,
             batch_size: int = 256, seed: int = 0, val: tuple[torch.Tensor, torch.Tensor] | None = None,
             on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train ``head`` in place (SGD with momentum, cosine decay over ``epochs`` passes of shuffled mini-batches).
    ``lambdas``: CLAP's multipliers (:func:`clap_multipliers`); None: ZS-LP, cross-entropy alone.

    With ``val`` the state with the best validation accuracy (after each epoch) is kept, the validation-tuned
    variant the paper argues against; without it, the last. Returns ``{"val_acc", "best_epoch", "steps"}``."""
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    if lambdas is not None and lambdas.shape != (head.prototypes.shape[0],):
        raise ValueError(f"lambdas {tuple(lambdas.shape)} must be one per class ({head.prototypes.shape[0]},)")
    labels = labels.long()
    g = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(feats) / batch_size)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch)
    best = (-1.0, None, 0)
    step = 0
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(feats), generator=g)
        for i in range(0, len(feats), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            if lambdas is not None:
                loss = loss + head.penalty(lambdas)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if on_step is not None:
                on_step(step, loss.item())
            step += 1
        if val is not None:
            with torch.no_grad():
                acc = (head(val[0]).argmax(1) == val[1]).float().mean().item()
            if acc > best[0]:
                best = (acc, copy.deepcopy(head.state_dict()), epoch)
    if best[1] is not None:
        head.load_state_dict(best[1])
    head.eval()
    return {"val_acc": best[0] if val is not None else None, "best_epoch": best[2] if val is not None else epochs,
            "steps": step}
