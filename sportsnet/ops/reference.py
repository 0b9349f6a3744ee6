"""The CAM epilogues in plain PyTorch: the test oracles for the compiled ops, and their fallbacks.

Kept short and literal; the formulas are stated in csrc/fused_gradcam.h and in the docstring below.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "gradcam-elementwise")
#: Grad-CAM++ alpha denominator constant (pytorch-grad-cam's), independent of ``eps``.
GRADCAM_PP_EPS = 1e-6
#: A resized map with max - min <= this * max(|min|, |max|) is rounding noise: it normalises to zeros.
FLAT_TOLERANCE = 1e-5
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_inputs(activations: torch.Tensor, gradients: torch.Tensor, size: Sequence[int], method: str,
                 eps: float, op: str = "fused_gradcam") -> tuple[int, int]:
    """Validate the operator's arguments (both backends); return ``(H, W)``."""
    if not isinstance(activations, torch.Tensor) or not isinstance(gradients, torch.Tensor):
        raise TypeError(f"{op}: activations and gradients must be tensors, got "
                        f"{type(activations).__name__} and {type(gradients).__name__}")
    for name, t in (("activations", activations), ("gradients", gradients)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be 4-D (B, K, h, w), got shape {tuple(t.shape)}")
    if activations.shape != gradients.shape:
        raise ValueError(f"{op}: activations {tuple(activations.shape)} and gradients "
                         f"{tuple(gradients.shape)} must have the same shape")
    if activations.device != gradients.device:
        raise ValueError(f"{op}: activations ({activations.device}) and gradients ({gradients.device}) "
                         f"must be on the same device")
    if activations.dtype not in _DTYPES or gradients.dtype not in _DTYPES:
        raise TypeError(f"{op}: activations and gradients must be float32, float16, bfloat16 or float64, "
                        f"got {activations.dtype} and {gradients.dtype}")
    if activations.dtype != gradients.dtype:
        raise TypeError(f"{op}: activations ({activations.dtype}) and gradients ({gradients.dtype}) must "
                        f"have the same dtype")
    if method not in METHODS:
        raise ValueError(f"{op}: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    try:
        H, W = (int(s) for s in size)
        ok = H > 0 and W > 0 and all(int(s) == s for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{op}: size must be two positive integers (H, W), got {size!r}")
    if activations.shape[2] == 0 or activations.shape[3] == 0:
        raise ValueError(f"{op}: the activation maps are empty: shape {tuple(activations.shape)}")
    if not (eps >= 0 and eps != float("inf")):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps!r}")
    return H, W


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (accumulation is at least float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gradcam_reference(activations: torch.Tensor, gradients: torch.Tensor, size: Sequence[int], *,
                      method: str = "gradcam", normalize: bool = True, eps: float = 1e-7,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM-family maps from ``(B, K, h, w)`` activations A and gradients G, resized to ``size``.

    Channel weights (sums over the h x w positions): ``gradcam`` w = mean(G); ``gradcam++``
    w = sum(alpha ReLU(G)), alpha = G^2 / (2 G^2 + sum(A) G^3 + 1e-6), 0 where G = 0; ``xgradcam``
    w = sum(A G) / (sum(A) + eps). Map: ReLU(sum_k w_k A_k); ``hirescam`` ReLU(sum_k G_k A_k);
    ``layercam`` ReLU(sum_k ReLU(G_k) A_k); ``gradcam-elementwise`` (pytorch-grad-cam's
    GradCAMElementWise) ReLU(sum_k ReLU(G_k A_k)). Then bilinear resizing (align_corners=False) and, if
    ``normalize``, per map (x - min) / (max - min + eps * max(|min|, |max|)), near-constant maps giving
    zeros. The normalisation's eps is relative to the map's magnitude, so a map and the same map times
    any positive scale (logits times a temperature) normalise alike, however small; ``xgradcam``'s weight
    denominator uses ``eps`` as an absolute constant, as pytorch-grad-cam does.
    Returns ``(B, H, W)`` float32 (float64 for float64 inputs).

    Non-finite values are never hidden: NaN and inf go through every step as IEEE arithmetic takes
    them (so a raw map holds them where they arise), and a normalised map whose unresized map holds
    any NaN or inf is NaN everywhere (e.g. ``xgradcam`` with ``eps=0`` and an all-zero activation
    channel: 0/0 weights; or an inf gradient after an fp16 overflow). The compiled op does the same.
    """
    H, W = check_inputs(activations, gradients, size, method, eps)
    acc = output_dtype(activations.dtype)
    A, G = activations.to(acc), gradients.to(acc)
    weights = channel_weights(A, G, method, eps)
    cam = channel_terms(A, G, method, eps).sum(dim=1) if weights is None else torch.einsum("bk,bkhw->bhw", weights, A)
    return _epilogue(cam, (H, W), normalize, eps, out, "fused_gradcam")


def gradcampp_weights(A: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, g3: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s ``(B, K)`` channel weights sum(alpha ReLU(g1)), alpha = g2 / (2 g2 + sum(A) g3 + 1e-6), 0
    where g2 = 0, from the gradient's first three powers (G, G^2, G^3; SmoothGrad-CAM++ passes their means
    over noisy samples)."""
    alpha = g2 / (2 * g2 + A.sum(dim=(2, 3), keepdim=True) * g3 + GRADCAM_PP_EPS)
    alpha = torch.where(g2 != 0, alpha, torch.zeros_like(alpha))
    return (alpha * g1.relu()).sum(dim=(2, 3))


def channel_weights(A: torch.Tensor, G: torch.Tensor, method: str, eps: float = 1e-7) -> torch.Tensor | None:
    """``(B, K)``: the channel weights w_k of the channel-weighted methods; None for ``hirescam``,
    ``layercam`` and ``gradcam-elementwise``, whose terms are element-wise."""
    if method == "gradcam":
        return G.mean(dim=(2, 3))
    if method == "gradcam++":
        return gradcampp_weights(A, G, G * G, G * G * G)
    if method == "xgradcam":
        return (A * G).sum(dim=(2, 3)) / (A.sum(dim=(2, 3)) + eps)
    if method in ("hirescam", "layercam", "gradcam-elementwise"):
        return None
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")


def channel_terms(A: torch.Tensor, G: torch.Tensor, method: str, eps: float = 1e-7) -> torch.Tensor:
    """``(B, K, h, w)``: what each channel adds to the raw map of ``method`` (their sum over K, after a
    ReLU, is the map): w_k A_k for the channel-weighted methods, G A (``hirescam``), ReLU(G) A
    (``layercam``), ReLU(G A) (``gradcam-elementwise``). The weighted activations that pytorch-grad-cam's
    ``eigen_smooth`` projects."""
    weights = channel_weights(A, G, method, eps)
    if weights is not None:
        return weights[:, :, None, None] * A
    if method == "hirescam":
        return G * A
    if method == "layercam":
        return G.relu() * A
    return (G * A).relu()  # gradcam-elementwise


def _epilogue(cam: torch.Tensor, size: tuple[int, int], normalize: bool, eps: float,
              out: torch.Tensor | None, op: str) -> torch.Tensor:
    """ReLU, bilinear resizing, per-map normalisation (NaN for a map with a non-finite value), out=."""
    H, W = size
    cam = cam.relu()
    finite = torch.isfinite(cam).all(dim=(1, 2))[:, None, None]  # per map, before resizing
    cam = F.interpolate(cam[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    if normalize and cam.numel():
        lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
        magnitude = torch.maximum(lo.abs(), hi.abs())
        flat = (hi - lo) <= FLAT_TOLERANCE * magnitude
        cam = torch.where(flat, torch.zeros_like(cam), (cam - lo) / (hi - lo + eps * magnitude))
        cam = torch.where(finite, cam, torch.full_like(cam, float("nan")))
    if out is None:
        return cam
    if out.shape != cam.shape or out.dtype != cam.dtype or out.device != cam.device:
        raise ValueError(f"{op}: out must be a {cam.dtype} tensor of shape {tuple(cam.shape)} on "
                         f"{cam.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    return out.copy_(cam)


def check_weighted_inputs(activations: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None,
                          size: Sequence[int], eps: float) -> tuple[int, int]:
    """Validate ``fused_weighted_cam``'s arguments (both backends); return ``(H, W)``."""
    if not isinstance(activations, torch.Tensor) or not isinstance(weights, torch.Tensor):
        raise TypeError(f"fused_weighted_cam: activations and weights must be tensors, got "
                        f"{type(activations).__name__} and {type(weights).__name__}")
    if activations.dim() != 4:
        raise ValueError(f"fused_weighted_cam: activations must be 4-D (B, K, h, w), got shape "
                         f"{tuple(activations.shape)}")
    B, K = activations.shape[:2]
    if weights.shape != (B, K):
        raise ValueError(f"fused_weighted_cam: weights must have shape (B, K) = ({B}, {K}) for activations "
                         f"{tuple(activations.shape)}, got {tuple(weights.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (B,)):
        raise ValueError(f"fused_weighted_cam: bias must be None or a tensor of shape (B,) = ({B},), got "
                         f"{tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__}")
    for name, t in (("weights", weights), ("bias", bias)):
        if t is not None and t.device != activations.device:
            raise ValueError(f"fused_weighted_cam: {name} ({t.device}) and activations ({activations.device}) "
                             f"must be on the same device")
    if activations.dtype not in _DTYPES:
        raise TypeError(f"fused_weighted_cam: activations must be float32, float16, bfloat16 or float64, got "
                        f"{activations.dtype}")
    acc = output_dtype(activations.dtype)
    for name, t in (("weights", weights), ("bias", bias)):
        if t is not None and t.dtype != acc:
            raise TypeError(f"fused_weighted_cam: {name} must be {acc} (the accumulation type of "
                            f"{activations.dtype} activations), got {t.dtype}")
    return check_inputs(activations, activations, size, "gradcam", eps, op="fused_weighted_cam")


def weighted_cam_reference(activations: torch.Tensor, weights: torch.Tensor, size: Sequence[int], *,
                           bias: torch.Tensor | None = None, normalize: bool = True, eps: float = 1e-7,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """CAM maps from given channel weights: ``ReLU(sum_k weights[b, k] A[b, k] + bias[b])``, then the
    same resizing, normalisation and non-finite contract as :func:`gradcam_reference`.

    For the methods whose map is a weighted channel sum with weights from elsewhere: CAM (the
    classifier's weights), Score-CAM and its variants (scores of masked inputs), Ablation-CAM (score
    drops), Eigen-CAM (the first principal direction, with ``bias`` = minus the projected mean).
    ``weights`` (and ``bias``) are float32, or float64 for float64 activations.
    """
    H, W = check_weighted_inputs(activations, weights, bias, size, eps)
    acc = output_dtype(activations.dtype)
    cam = torch.einsum("bk,bkhw->bhw", weights, activations.to(acc))
    if bias is not None:
        cam = cam + bias[:, None, None]
    return _epilogue(cam, (H, W), normalize, eps, out, "fused_weighted_cam")
