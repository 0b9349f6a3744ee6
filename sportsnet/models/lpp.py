"""LP++ (Huang, Shakeri, Dolz, Boudiaf, Bahig and Ben Ayed, "LP++: A Surprisingly Strong Linear Probe for Few-Shot
CLIP", CVPR 2024), written out on frozen, unit-norm CLIP image features.

The class scores mix a visual linear classifier with the text embeddings, with one blending weight per class:
``logits_k(f) = f . w_k + b_k + alpha_k * (f . t_k)``. ``w`` starts at the visual prototypes (the class means of the
few-shot features), ``b`` at zero and ``alpha`` at CLIP's logit scale, so before training LP++ is the zero-shot
classifier plus the prototypes' scores. Training is block-coordinate descent on the full-batch cross-entropy: a
step on ``(w, b)``, then one on ``alpha``, each of size ``1 / L`` for the block's Lipschitz constant, which has a
closed form (:func:`lipschitz_constants`), so there is no learning rate to tune. The official code adds heavy-ball
momentum (0.9) to the ``(w, b)`` steps; so do we by default. With ``momentum=0`` every step minimises a quadratic
upper bound of the loss (majorize-minimize), so the loss never increases.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def lipschitz_constants(feats: torch.Tensor, text_classifier: torch.Tensor) -> tuple[float, float]:
    """``(L_wb, L_alpha)``: Lipschitz constants of the mean cross-entropy's gradient in LP++'s two blocks.

    The Hessian of softmax cross-entropy in the logits, ``diag(p) - p p^T``, is at most ``I / 2`` (Böhning's bound).
    For ``(w, b)`` the logits are linear in ``x = [f, 1]``, so the Hessian is at most ``lambda_max(X^T X) / (2N)``;
    for ``alpha`` the logit ``k`` is ``alpha_k g_k`` with ``g = f . t_k``, so it is at most
    ``max_k sum_i g_ik^2 / (2N)``.
    """
    n = feats.shape[0]
    x = torch.cat([feats.double(), feats.new_ones(n, 1, dtype=torch.float64)], dim=1)
    l_wb = torch.linalg.eigvalsh(x.T @ x)[-1].item() / (2 * n)
    g = feats.double() @ text_classifier.double()
    l_alpha = g.pow(2).sum(0).max().item() / (2 * n)
    return l_wb, l_alpha


class LPPlusPlus(nn.Module):
    """LP++'s classifier on unit-norm ``(B, D)`` features.

    Args:
        text_classifier: ``(D, C)`` unit-norm class text embeddings (the zero-shot classifier's columns).
        feats: ``(N, D)`` few-shot features; labels: ``(N,)`` their classes (every class at least once).
        alpha: the blending weights' starting value (CLIP's logit scale: the zero-shot classifier's scale).
    """

    def __init__(self, text_classifier: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, alpha: float = 100.0):
        super().__init__()
        D, C = text_classifier.shape
        if feats.dim() != 2 or feats.shape[1] != D or labels.shape != (feats.shape[0],):
            raise ValueError(f"feats {tuple(feats.shape)} and labels {tuple(labels.shape)} do not fit a ({D}, {C}) "
                             f"text classifier")
        counts = torch.bincount(labels.long(), minlength=C)
        if len(counts) > C or (counts == 0).any():
            raise ValueError(f"every one of the {C} classes needs a feature; counts per class: {counts.tolist()}")
        means = torch.zeros(C, D, device=feats.device).index_add_(0, labels.long(), feats.float())
        means /= counts[:, None].float()
        self.register_buffer("text_classifier", text_classifier.float().to(feats.device))
        self.weight = nn.Parameter(means)
        self.bias = nn.Parameter(torch.zeros(C, device=feats.device))
        self.alpha = nn.Parameter(torch.full((C,), float(alpha), device=feats.device))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.weight.T + self.bias + self.alpha * (feats @ self.text_classifier)


def fit_lpp(model: LPPlusPlus, feats: torch.Tensor, labels: torch.Tensor, *, steps: int = 300, momentum: float = 0.9,
            val: tuple[torch.Tensor, torch.Tensor] | None = None, eval_every: int = 10,
            on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model`` in place: ``steps`` full-batch iterations, each a ``(w, b)`` step of size ``1 / L_wb`` (with
    ``momentum``) then an ``alpha`` step of size ``1 / L_alpha`` (:func:`lipschitz_constants`).

    Returns ``{"losses": the loss before each iteration and at the end, "step_sizes": (1/L_wb, 1/L_alpha),
    "val_acc", "best_step"}``. With ``val`` the state with the best validation accuracy (checked every
    ``eval_every`` iterations and at the end) is kept; without it, the last. ``on_step(step, loss)`` sees each
    iteration's loss (TensorBoard curves)."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum={momentum} must be in [0, 1)")
    labels = labels.long()
    l_wb, l_alpha = lipschitz_constants(feats, model.text_classifier)
    lr_wb, lr_alpha = 1.0 / l_wb, 1.0 / l_alpha
    opt_wb = torch.optim.SGD([model.weight, model.bias], lr=lr_wb, momentum=momentum)
    opt_alpha = torch.optim.SGD([model.alpha], lr=lr_alpha)
    losses: list[float] = []
    best = (-1.0, None, 0)

    def loss_fn() -> torch.Tensor:
        return F.cross_entropy(model(feats), labels)

    def evaluate(step: int):
        nonlocal best
        with torch.no_grad():
            acc = (model(val[0]).argmax(1) == val[1]).float().mean().item()
        if acc > best[0]:
            best = (acc, copy.deepcopy(model.state_dict()), step)

    model.train()
    for step in range(steps):
        for opt in (opt_wb, opt_alpha):
            loss = loss_fn()
            if opt is opt_wb:
                losses.append(loss.item())
                if on_step is not None:
                    on_step(step, losses[-1])
            opt_wb.zero_grad(set_to_none=True)
            opt_alpha.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if val is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            evaluate(step + 1)
    with torch.no_grad():
        losses.append(loss_fn().item())
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return {"losses": losses, "step_sizes": (lr_wb, lr_alpha), "val_acc": best[0] if val is not None else None,
            "best_step": best[2] if val is not None else steps}
