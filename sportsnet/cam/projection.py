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
    centred = points - mean
    v = first_right_singular_vector(centred)  # (B, C)
    with torch.autocast(X.device.type, enabled=False):
        projection = (centred @ v[:, :, None])[:, :, 0]  # (B, h*w)
    flip = projection.amax(1) < -projection.amin(1)
    v = torch.where(flip[:, None], -v, v)
    return v.contiguous(), -(mean[:, 0, :] * v).sum(1)


def first_right_singular_vector(M: torch.Tensor) -> torch.Tensor:
    """``(B, C)``: the right singular vector of each ``(n, C)`` matrix's largest singular value (sign
    arbitrary), from the eigendecomposition of the smaller of its two Gram matrices, which unlike a thin
    SVD computes no other singular vectors. A zero
    matrix gives a zero vector (its projection is zero either way)."""
    n, C = M.shape[1:]
    with torch.autocast(M.device.type, enabled=False):  # the products in M's dtype, not an autocast one
        if n < C:  # u from the (n, n) Gram matrix, then v = M^T u / |M^T u|
            u = torch.linalg.eigh(M @ M.transpose(1, 2))[1][:, :, -1]
            v = (M.transpose(1, 2) @ u[:, :, None])[:, :, 0]
            return v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        return torch.linalg.eigh(M.transpose(1, 2) @ M)[1][:, :, -1]
