"""How far a correct ``fused_gradcam`` may be from the exact maps: a bound derived from the arithmetic,
not a tolerance measured on one machine.

The kernels accumulate in float32 (float64 for float64 inputs) and may sum in any order, with or
without FMA contraction (the CUDA compiler contracts ``a * b + c``; the CPU builds differ by ISA). The
classic bound for a sum of n terms in any order, |computed - exact| <= (n - 1) u sum |terms| with u
the unit roundoff, applied to the channel weights (sums over h*w positions) and then to the map (a sum
over K channels), with a few roundings more for Grad-CAM++'s alpha, the bilinear blend and the
normalisation. Inputs are exact in the accumulation type (every dtype converts exactly), so the exact
maps come from float64.
"""
from __future__ import annotations

import torch

from sportsnet.ops.reference import GRADCAM_PP_EPS, gradcam_reference


def _weights_and_errors(A: torch.Tensor, G: torch.Tensor, method: str, eps: float, u: float):
    """Exact channel weights (B, K) and bounds on their computed values' errors."""
    hw = A.shape[2] * A.shape[3]
    g_hw = (hw + 8) * u
    sum_a = A.sum((2, 3))
    if method == "gradcam":
        return G.mean((2, 3)), g_hw * G.abs().mean((2, 3))
    if method == "xgradcam":
        den = sum_a + eps
        w = (A * G).sum((2, 3)) / den
        return w, g_hw * ((A * G).abs().sum((2, 3)) + w.abs() * A.abs().sum((2, 3))) / den.abs()
    # gradcam++: alpha depends on sum(A), itself computed with relative error g_hw.
    s = sum_a[:, :, None, None]
    den = 2 * G * G + s * G ** 3 + GRADCAM_PP_EPS
    terms = torch.where(G != 0, G * G / den, torch.zeros_like(G)) * G.relu()
    relative = 8 * u + g_hw * (s * G ** 3).abs() / den.abs()
    return terms.sum((2, 3)), g_hw * terms.sum((2, 3)) + (terms * relative).sum((2, 3))


def error_bound(A: torch.Tensor, G: torch.Tensor, size, method: str, normalize: bool = True,
                eps: float = 1e-7) -> torch.Tensor:
    """Per map, the largest |op - exact| a correct kernel can give, shape (B,)."""
    acc = torch.float64 if A.dtype == torch.float64 else torch.float32
    u = torch.finfo(acc).eps / 2
    A, G = A.detach().double().cpu(), G.detach().double().cpu()
    K = A.shape[1]
    g_k = (K + 4) * u
    if method in ("gradcam", "gradcam++", "xgradcam"):
        w, dw = _weights_and_errors(A, G, method, eps, u)
        raw_error = ((w.abs() * g_k + dw)[:, :, None, None] * A.abs()).sum(1)
        terms = (w[:, :, None, None] * A).abs().sum(1)
    else:
        terms = ((G if method == "hirescam" else G.relu()) * A).abs().sum(1)
        raw_error = g_k * terms
    # The bilinear blend is a convex combination (its own roundings: a few u of the magnitude).
    error = raw_error.amax((1, 2)) + 8 * u * terms.amax((1, 2))
    if not normalize:
        return error
    exact = gradcam_reference(A, G, size, method=method, normalize=False, eps=eps)
    span = exact.amax((1, 2)) - exact.amin((1, 2))
    # A constant exact map (all zeros after the ReLU, say) normalises to zeros: the op must give them too.
    return torch.where(span > 0, 2 * error / span.clamp_min(torch.finfo(torch.float64).tiny) + 8 * u, 8 * u)


def assert_within_bound(got: torch.Tensor, A: torch.Tensor, G: torch.Tensor, size, method: str,
                        normalize: bool = True, eps: float = 1e-7, where: str = "") -> None:
    """Every map of ``got`` within :func:`error_bound` of the exact (float64) maps."""
    exact = gradcam_reference(A.detach().double().cpu(), G.detach().double().cpu(), size, method=method,
                              normalize=normalize, eps=eps)
    bound = error_bound(A, G, size, method, normalize, eps)
    assert got.shape == exact.shape, f"{where}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    diff = (got.detach().cpu().double() - exact).abs().flatten(1).amax(1)
    bad = ~(diff <= bound)  # NaN fails too
    assert not bad.any(), (f"{where}: maps {bad.nonzero().flatten().tolist()} differ by "
                           f"{diff[bad].tolist()} > bound {bound[bad].tolist()}")

