"""The centred projection of a layer's positions on their first principal direction: Eigen-CAM's map, and
``eigen_smooth``'s for the gradient methods (:mod:`sportsnet.cam.eigencam` says why the sign is fixed so)."""
from __future__ import annotations

import torch


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
