"""Gaussian discriminant analysis on frozen CLIP image features (GDA: Wang et al., "A Hard-to-Beat Baseline for
Training-free CLIP-based Adaptation", ICLR 2024), written out.

The few-shot features of each class are modelled as Gaussians with their own means and one shared covariance; the
Bayes classifier of that model is linear and has a closed form (:func:`gda_classifier`, what scikit-learn's
``LinearDiscriminantAnalysis(solver="lsqr")`` computes). :class:`GDA` adds its logits, weighted by ``alpha``, to
CLIP's zero-shot ones. With K shots per class and D feature dimensions the covariance is singular whenever K * C
<= D: ``shrinkage`` pulls it towards a multiple of the identity (scikit-learn's formula). By default it is the
GDA paper's estimator, whose precision is ``D * pinv(scatter + trace(S) * I)`` (``S``: the unbiased covariance of
the centred features): that is shrinkage ``D / (N - 1 + D)`` of N features, up to a scale the blend's ``alpha``
absorbs. The paper fits on several augmented views of each shot (``N > C`` even at one shot).
"""
from __future__ import annotations

import torch
from torch import nn


def paper_shrinkage(num_features: int, dim: int) -> float:
    """The shrinkage equivalent to the GDA paper's covariance estimator for ``num_features`` features of ``dim``."""
    return dim / (num_features - 1 + dim)


def gda_classifier(feats: torch.Tensor, labels: torch.Tensor, num_classes: int, shrinkage: float = 0.0,
                   priors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form linear classifier of Gaussian discriminant analysis: ``(weight (C, D), bias (C,))`` with
    ``logits = feats @ weight.T + bias``.

    ``mu_k`` are the class means; ``S`` the pooled within-class covariance (``1/N`` of the centred features'
    outer products); ``Sigma = (1 - shrinkage) * S + shrinkage * trace(S) / D * I``; ``weight_k = Sigma^-1 mu_k``;
    ``bias_k = -mu_k . weight_k / 2 + log(prior_k)`` (``priors``: the classes' frequencies unless given).
    Computed in float64 (a least-squares solve, the minimum-norm solution where ``Sigma`` is singular); returned
    in the features' dtype.
    """
    if feats.dim() != 2:
        raise ValueError(f"feats must be (N, D), got {tuple(feats.shape)}")
    if labels.shape != (feats.shape[0],):
        raise ValueError(f"labels {tuple(labels.shape)} must be (N,) for feats {tuple(feats.shape)}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage={shrinkage} must be in [0, 1]")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values from {int(labels.min())} to "
                         f"{int(labels.max())}")
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} have no features: every class needs at least one shot")
    x = feats.double()
    means = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    means /= counts[:, None].to(x.dtype)
    centred = x - means[labels]
    cov = centred.T @ centred / x.shape[0]
    if not torch.count_nonzero(centred):
        raise ValueError("one shot per class: the within-class covariance is zero, so GDA has nothing to whiten "
                         "with; it needs two or more shots of some class")
    if shrinkage:
        eye = torch.eye(cov.shape[0], dtype=x.dtype, device=x.device)
        cov = (1 - shrinkage) * cov + shrinkage * torch.diagonal(cov).mean() * eye
    weight = torch.linalg.lstsq(cov.cpu(), means.T.cpu(), driver="gelsd").solution.T.to(x.device)
    if priors is None:
        priors = counts.to(x.dtype) / x.shape[0]
    elif priors.shape != (num_classes,) or (priors <= 0).any():
        raise ValueError(f"priors must be ({num_classes},) positive numbers, got {priors}")
    bias = -0.5 * (means * weight).sum(dim=1) + torch.log(priors.to(x))
    return weight.to(feats.dtype), bias.to(feats.dtype)


class GDA(nn.Module):
    """Zero-shot logits plus ``alpha`` times the GDA classifier's, on unit-norm ``(B, D)`` features.

    Args:
        text_classifier: ``(D, C)`` zero-shot classifier; logit_scale: CLIP's scale for it.
        feats: ``(N, D)`` few-shot features; labels: ``(N,)`` their classes.
        alpha: weight of the GDA logits (0: exactly zero-shot); shrinkage: :func:`gda_classifier`'s (None: the
            paper's, :func:`paper_shrinkage`).
    Training-free: everything is fitted in the constructor.
    """

    def __init__(self, text_classifier: torch.Tensor, logit_scale: float, feats: torch.Tensor, labels: torch.Tensor,
                 alpha: float = 1.0, shrinkage: float | None = None):
        super().__init__()
        D, C = text_classifier.shape
        if feats.dim() != 2 or feats.shape[1] != D:
            raise ValueError(f"feats {tuple(feats.shape)} do not fit a ({D}, {C}) text classifier")
        if shrinkage is None:
            shrinkage = paper_shrinkage(feats.shape[0], D)
        weight, bias = gda_classifier(feats.float(), labels, C, shrinkage)
        self.register_buffer("text_classifier", text_classifier.float())
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.logit_scale, self.alpha = float(logit_scale), float(alpha)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        zero_shot = self.logit_scale * feats @ self.text_classifier
        if self.alpha == 0:
            return zero_shot
        return zero_shot + self.alpha * (feats @ self.weight.T + self.bias)
