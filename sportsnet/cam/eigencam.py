"""Eigen-CAM (Muhammad and Yeasin, 2020) and Eigen-Grad-CAM: the target layer's output (Eigen-CAM) or
its product with the target's gradient (Eigen-Grad-CAM), seen per image as h*w points in C dimensions,
centred, projected on its first principal direction v:

    map = ReLU(sum_k v_k (X_k - mean(X_k))) = ReLU(sum_k v_k X_k + bias),  bias = -sum_k v_k mean(X_k)

which is :func:`sportsnet.ops.fused_weighted_cam` with weights v and that bias. One batched SVD per
layer. Eigen-CAM ignores the class: every target gets the same map (it needs no gradients and no
forward beyond the first).

Definition (where pytorch-grad-cam differs): an SVD's direction has no sign. We orient v so that the
projection's largest magnitude is positive (the sign correction of Seg-Eigen-CAM, Chung and Ying 2025,
which pytorch-grad-cam ships as ``get_2d_projection_with_sign_correction``); pytorch-grad-cam's
EigenCAM keeps whatever sign LAPACK returns.
"""
from __future__ import annotations

import torch

from ..ops import fused_weighted_cam
from .explainer import GradCAM, average_layers
from .gradient_free import GradientFreeCAM


def principal_projection(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights (B, C), bias (B,))`` of the centred projection of ``X`` (B, C, h, w) on its first
    principal direction, oriented so the projection's largest magnitude is positive."""
    X = X.float()
    points = X.flatten(2).transpose(1, 2)  # (B, h*w, C)
    mean = points.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(points - mean, full_matrices=False)
    v = vh[:, 0, :]  # (B, C)
    projection = ((points - mean) @ v[:, :, None])[:, :, 0]  # (B, h*w)
    flip = projection.amax(1) < -projection.amin(1)
    v = torch.where(flip[:, None], -v, v)
    return v.contiguous(), -(mean[:, 0, :] * v).sum(1)


class EigenCAM(GradientFreeCAM):
    """Eigen-CAM; arguments as :class:`GradientFreeCAM` (its batch options are unused: no extra forwards)."""

    name = "eigencam"

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        per_layer = []
        for name, act in zip(self.target_layers, acts):
            A = self.maps_view(act, name, B)
            weights, bias = principal_projection(A)
            per_layer.append(fused_weighted_cam(A.float(), weights, size, bias=bias))
        return average_layers(per_layer)[:, None].expand(B, K, *size).contiguous()


class EigenGradCAM(GradCAM):
    """Eigen-Grad-CAM: the principal projection of activations x gradients, per target."""

    def __init__(self, model, target_layer=None, size=None):
        super().__init__(model, target_layer, "gradcam", size)
        self.name = "eigengradcam"

    def _from_gradients(self, A, G, size):
        X = A.float() * G.float()
        weights, bias = principal_projection(X)
        return fused_weighted_cam(X, weights, size, bias=bias)
