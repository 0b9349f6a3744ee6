"""Eigen-CAM (Muhammad and Yeasin, 2020), Eigen-Grad-CAM and KPCA-CAM: the target layer's output (Eigen-CAM) or
its product with the target's gradient (Eigen-Grad-CAM), seen per image as h*w points in C dimensions,
centred, projected on its first principal direction v:

    map = ReLU(sum_k v_k (X_k - mean(X_k))) = ReLU(sum_k v_k X_k + bias),  bias = -sum_k v_k mean(X_k)

which is :func:`sportsnet.ops.fused_weighted_cam` with weights v and that bias. One batched eigendecomposition per
layer. Eigen-CAM ignores the class: every target gets the same map (it needs no gradients and no
forward beyond the first).

Definition (where pytorch-grad-cam differs): a principal direction has no sign. We orient v so that the
projection's largest magnitude is positive (the sign correction of Seg-Eigen-CAM, Chung and Ying 2025,
which pytorch-grad-cam ships as ``get_2d_projection_with_sign_correction``); pytorch-grad-cam's
EigenCAM keeps whatever sign LAPACK returns.

KPCA-CAM (Karmani et al., 2024) replaces the linear projection by kernel PCA's first component, as
pytorch-grad-cam's KPCA_CAM does with scikit-learn: a kernel between the centred positions (``sigmoid``
tanh(gamma <x, y> + 1), ``rbf`` exp(-gamma |x - y|^2), ``poly`` (gamma <x, y> + 1)^3, ``linear``;
gamma = 1/C by default), centred in feature space, its top eigenvector scaled by the square root of its
eigenvalue, oriented as scikit-learn does (largest-magnitude entry positive). That map (not a channel
sum) goes through the fused epilogue as one channel of weight 1. One (h*w)^2 kernel per image.
"""
from __future__ import annotations

import torch

from ..ops import fused_weighted_cam
from .explainer import GradientWeightedCAM, average_layers
from .gradient_free import GradientFreeCAM
from .projection import principal_projection


class EigenCAM(GradientFreeCAM):
    """Eigen-CAM; arguments as :class:`GradientFreeCAM` (its batch options are unused: no extra forwards)."""

    name = "eigencam"

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        per_layer = []
        for name, act in zip(self.target_layers, acts):
            A = self.maps_view(act, name)
            weights, bias = principal_projection(A)
            per_layer.append(fused_weighted_cam(A.float(), weights, size, bias=bias))
        return average_layers(per_layer)[:, None].expand(B, K, *size).contiguous()


class EigenGradCAM(GradientWeightedCAM):
    """Eigen-Grad-CAM: the principal projection of activations x gradients, per target."""

    name = "eigengradcam"

    def _from_gradients(self, A, G, size):
        X = A.float() * G.float()
        weights, bias = principal_projection(X)
        return fused_weighted_cam(X, weights, size, bias=bias)


def kernel_projection(X: torch.Tensor, kernel: str = "sigmoid", gamma: float | None = None) -> torch.Tensor:
    """``(B, h, w)``: each image's positions (centred, C features) projected on kernel PCA's first
    component."""
    B, C, h, w = X.shape
    points = X.double().flatten(2).transpose(1, 2)  # (B, n, C)
    points = points - points.mean(1, keepdim=True)
    g = 1.0 / C if gamma is None else gamma
    dots = points @ points.transpose(1, 2)
    if kernel == "sigmoid":
        K = torch.tanh(g * dots + 1)
    elif kernel == "rbf":
        sq = dots.diagonal(dim1=1, dim2=2)
        K = torch.exp(-g * (sq[:, :, None] + sq[:, None, :] - 2 * dots))
    elif kernel == "poly":
        K = (g * dots + 1) ** 3
    elif kernel == "linear":
        K = dots
    else:
        raise ValueError(f"kernel={kernel!r} is not one of sigmoid, rbf, poly, linear")
    n = K.shape[1]
    ones = torch.full((n, n), 1.0 / n, dtype=K.dtype, device=K.device)
    K = K - ones @ K - K @ ones + ones @ K @ ones  # centred in feature space
    values, vectors = torch.linalg.eigh(K)
    top, vector = values[:, -1].clamp_min(0), vectors[:, :, -1]  # (B,), (B, n)
    sign = torch.sign(vector.gather(1, vector.abs().argmax(1, keepdim=True)))
    return (vector * sign * top.sqrt()[:, None]).reshape(B, h, w).float()


class KPCACAM(GradientFreeCAM):
    """KPCA-CAM; ``kernel`` (sigmoid, rbf, poly, linear) and ``gamma`` (default 1/C) as scikit-learn's."""

    name, aliases = "kpcacam", ("KPCA_CAM",)

    def __init__(self, model, target_layer=None, *, kernel: str = "sigmoid", gamma: float | None = None,
                 **options):
        super().__init__(model, target_layer, **options)
        if kernel not in ("sigmoid", "rbf", "poly", "linear"):
            raise ValueError(f"kernel={kernel!r} is not one of sigmoid, rbf, poly, linear")
        self.kernel, self.gamma = kernel, gamma

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        per_layer = []
        for name, act in zip(self.target_layers, acts):
            p = kernel_projection(self.maps_view(act, name).float(), self.kernel, self.gamma)
            per_layer.append(fused_weighted_cam(p[:, None], torch.ones(B, 1, device=p.device), size))
        return average_layers(per_layer)[:, None].expand(B, K, *size).contiguous()
