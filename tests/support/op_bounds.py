"""How far a correct ``fused_gradcam`` (or ``fused_weighted_cam``) may be from the exact maps: a bound
derived from the arithmetic, not a tolerance measured on one machine.

The kernels accumulate in float32 (float64 for float64 inputs) and may sum in any order, with or
without FMA contraction (the CUDA compiler contracts ``a * b + c``; the CPU builds differ by ISA). The
classic bound for a sum of n terms in any order, |computed - exact| <= (n - 1) u sum |terms| with u
the unit roundoff, applied to the channel weights (sums over h*w positions) and then to the map (a sum
over K channels), with a few roundings more for Grad-CAM++'s alpha, the bilinear blend and the
normalisation, and the interpolation weights (computed in the accumulation type, so off by a few u
times the input size). Inputs are exact in the accumulation type (every dtype converts exactly), so the exact
maps come from float64. For ``fused_weighted_cam`` the weights are given (exact): the map is a sum of
K terms w_k a_k plus the bias, held to (K + 4) u times the sum of their magnitudes, as the map sums of
the weighted methods are.
"""
from __future__ import annotations

import torch

from sportsnet.ops.reference import GRADCAM_PP_EPS, gradcam_reference, weighted_cam_reference


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
        if method == "hirescam":
            products = G * A
        elif method == "layercam":
            products = G.relu() * A
        else:  # gradcam-elementwise: ReLU(G A) (the ReLU is exact; the product has one rounding, as hirescam's)
            products = (G * A).relu()
        terms = products.abs().sum(1)
        raw_error = g_k * terms
    exact = gradcam_reference(A, G, size, method=method, normalize=False, eps=eps) if normalize else None
    return _finish(raw_error, terms, exact, normalize, u)


def _finish(raw_error: torch.Tensor, terms: torch.Tensor, exact_raw: torch.Tensor | None, normalize: bool,
            u: float) -> torch.Tensor:
    """From the unresized maps' error bounds and term magnitudes (B, h, w) to the bound per map (B,)."""
    h, w = terms.shape[1:]
    magnitude = terms.amax((1, 2))  # >= |map| everywhere
    # The bilinear blend is a convex combination (its own roundings: a few u of the magnitude), with
    # interpolation weights computed in the accumulation type: src = scale * (dst + 0.5) - 0.5 has an
    # absolute error up to (3 in_size + 2) u (the rounded scale, product and difference, |src| < in_size),
    # and a weight's error moves a blend by that times the difference of two map values (<= 2 magnitude),
    # once per axis. (It matters where the channel sum's own bound is small: K = 1, or HiResCAM.)
    error = raw_error.amax((1, 2)) + (8 + 2 * (3 * (h + w) + 4)) * u * magnitude
    if not normalize:
        return error
    span = exact_raw.amax((1, 2)) - exact_raw.amin((1, 2))
    # A constant exact map (all zeros after the ReLU, say): the computed map is that constant plus rounding
    # noise up to `error`, and the scale-invariant normalisation (a relative eps) stretches noise to [0, 1], so
    # nothing tighter than 1 holds; without noise (error 0) the op must give the normalised constant, zeros.
    flat = torch.where(error > 0, torch.ones_like(error), torch.zeros_like(error)) + 8 * u
    return torch.where(span > 0, 2 * error / span.clamp_min(torch.finfo(torch.float64).tiny) + 8 * u, flat)


def weighted_error_bound(A: torch.Tensor, weights: torch.Tensor, size, bias: torch.Tensor | None = None,
                         normalize: bool = True, eps: float = 1e-7) -> torch.Tensor:
    """Per map, the largest |fused_weighted_cam - exact| a correct kernel can give, shape (B,): the map
    sum_k w_k a_k + bias (K + 1 terms, the weights exact) in any order, (K + 4) u sum |terms|."""
    acc = torch.float64 if A.dtype == torch.float64 else torch.float32
    u = torch.finfo(acc).eps / 2
    A, w = A.detach().double().cpu(), weights.detach().double().cpu()
    K = A.shape[1]
    terms = (w[:, :, None, None] * A).abs().sum(1)
    if bias is not None:
        terms = terms + bias.detach().double().cpu().abs()[:, None, None]
    raw_error = (K + 4) * u * terms
    exact = _exact_weighted(A, w, bias, size, False, eps) if normalize else None
    return _finish(raw_error, terms, exact, normalize, u)


def _exact_weighted(A, weights, bias, size, normalize, eps):
    bias = None if bias is None else bias.detach().double().cpu()
    return weighted_cam_reference(A.detach().double().cpu(), weights.detach().double().cpu(), size, bias=bias,
                                  normalize=normalize, eps=eps)


def _assert_close_to_exact(got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor, where: str) -> None:
    assert got.shape == exact.shape, f"{where}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    diff = (got.detach().cpu().double() - exact).abs().flatten(1).amax(1)
    bad = ~(diff <= bound)  # NaN fails too
    assert not bad.any(), (f"{where}: maps {bad.nonzero().flatten().tolist()} differ by "
                           f"{diff[bad].tolist()} > bound {bound[bad].tolist()}")


def assert_within_bound(got: torch.Tensor, A: torch.Tensor, G: torch.Tensor, size, method: str,
                        normalize: bool = True, eps: float = 1e-7, where: str = "") -> None:
    """Every map of ``got`` within :func:`error_bound` of the exact (float64) maps."""
    exact = gradcam_reference(A.detach().double().cpu(), G.detach().double().cpu(), size, method=method,
                              normalize=normalize, eps=eps)
    _assert_close_to_exact(got, exact, error_bound(A, G, size, method, normalize, eps), where)


def assert_weighted_within_bound(got: torch.Tensor, A: torch.Tensor, weights: torch.Tensor, size,
                                 bias: torch.Tensor | None = None, normalize: bool = True, eps: float = 1e-7,
                                 where: str = "") -> None:
    """Every map of a ``fused_weighted_cam`` result within :func:`weighted_error_bound` of the exact maps."""
    exact = _exact_weighted(A, weights, bias, size, normalize, eps)
    _assert_close_to_exact(got, exact, weighted_error_bound(A, weights, size, bias, normalize, eps), where)

