"""Few-shot heads on frozen CLIP image features (unit-norm ``(B, D)``), written out.

- :class:`LinearProbe`: a linear classifier, optionally starting at the zero-shot classifier.
- :class:`ClipAdapter` (Gao et al., 2021): a bottleneck MLP (reduction 4) whose output is blended
  with the original feature by the residual ratio, then the text classifier as the head.
- :class:`TipAdapter` (Zhang et al., 2022): a key-value cache of the few-shot features; logits are
  the zero-shot ones plus ``alpha * exp(-beta * (1 - f @ keys.T)) @ one_hot(labels)``. Training-free;
  ``learn_keys=True`` makes the keys parameters (Tip-Adapter-F).
- :func:`wise_ft`: WiSE-FT interpolation between the zero-shot and a fine-tuned linear head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def zero_shot_linear(text_classifier: torch.Tensor, logit_scale: float) -> nn.Linear:
    """The zero-shot classifier as an ``nn.Linear`` (weight = scale * W.T, no bias)."""
    D, C = text_classifier.shape
    lin = nn.Linear(D, C)
    with torch.no_grad():
        lin.weight.copy_(logit_scale * text_classifier.T)
        lin.bias.zero_()
    return lin


class LinearProbe(nn.Module):
    """``(B, D)`` features -> ``(B, C)`` logits; starts at the zero-shot head when one is given."""

    def __init__(self, dim: int, num_classes: int, init: nn.Linear | None = None):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)
        if init is not None:
            self.linear.load_state_dict(init.state_dict())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear(feats)


class ClipAdapter(nn.Module):
    """CLIP-Adapter: ``x = ratio * MLP(f) + (1 - ratio) * f``, logits = ``scale * normalize(x) @ W``.
    ``ratio = 0`` is exactly the zero-shot classifier."""

    def __init__(self, text_classifier: torch.Tensor, logit_scale: float, reduction: int = 4, ratio: float = 0.2):
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio={ratio} must be in [0, 1]")
        D = text_classifier.shape[0]
        hidden = max(1, D // reduction)
        self.adapter = nn.Sequential(nn.Linear(D, hidden, bias=False), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, D, bias=False), nn.ReLU(inplace=True))
        self.register_buffer("text_classifier", text_classifier.float())
        self.logit_scale, self.ratio = float(logit_scale), float(ratio)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.ratio * self.adapter(feats) + (1 - self.ratio) * feats
        return self.logit_scale * F.normalize(x, dim=-1) @ self.text_classifier


class TipAdapter(nn.Module):
    """Tip-Adapter(-F): zero-shot logits plus a cache model over the few-shot features.

    Args:
        text_classifier: ``(D, C)``; logit_scale: CLIP's scale for the zero-shot part.
        keys: ``(N, D)`` unit-norm few-shot features; labels: ``(N,)`` their classes.
        alpha: weight of the cache logits (0: zero-shot); beta: sharpness of the affinities.
        learn_keys: Tip-Adapter-F, the keys are trainable (initialised from the cache).
    """

    def __init__(self, text_classifier: torch.Tensor, logit_scale: float, keys: torch.Tensor, labels: torch.Tensor,
                 alpha: float = 1.0, beta: float = 5.5, learn_keys: bool = False):
        super().__init__()
        C = text_classifier.shape[1]
        if keys.dim() != 2 or keys.shape[1] != text_classifier.shape[0] or len(keys) != len(labels):
            raise ValueError(f"keys {tuple(keys.shape)} and labels {tuple(labels.shape)} do not fit a "
                             f"({text_classifier.shape[0]}, {C}) text classifier")
        self.register_buffer("text_classifier", text_classifier.float())
        self.register_buffer("values", F.one_hot(labels.long(), C).float())  # (N, C)
        keys = F.normalize(keys.float(), dim=-1)
        if learn_keys:
            self.keys = nn.Parameter(keys.clone())
        else:
            self.register_buffer("keys", keys)
        self.logit_scale, self.alpha, self.beta = float(logit_scale), float(alpha), float(beta)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        zero_shot = self.logit_scale * feats @ self.text_classifier
        if self.alpha == 0:
            return zero_shot
        affinity = feats @ self.keys.T  # (B, N) cosine similarities
        cache = torch.exp(-self.beta * (1 - affinity)) @ self.values
        return zero_shot + self.alpha * cache


def wise_ft(zero_shot: nn.Linear, finetuned: nn.Linear, alpha: float) -> nn.Linear:
    """WiSE-FT: the head ``(1 - alpha) * zero_shot + alpha * finetuned`` (weights and biases)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    mixed = nn.Linear(finetuned.in_features, finetuned.out_features)
    with torch.no_grad():
        mixed.weight.copy_((1 - alpha) * zero_shot.weight + alpha * finetuned.weight)
        mixed.bias.copy_((1 - alpha) * zero_shot.bias + alpha * finetuned.bias)
    return mixed
