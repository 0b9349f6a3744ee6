"""Guided backpropagation (Springenberg et al., 2015) and Guided Grad-CAM (Selvaraju et al., 2017).

Guided backpropagation: the gradient of the target's logit with respect to the image, where every
``nn.ReLU`` module also zeroes negative incoming gradients. Done with temporary forward hooks that put
an identity with that backward rule after each ReLU module, removed in a ``finally``: the model is not
modified (pytorch-grad-cam swaps its ReLU modules for new, not-in-place ones, and leaves them so).
Functional ReLUs (``F.relu`` inside a ``forward``) are not modules and keep their plain backward, as
in pytorch-grad-cam.

Guided Grad-CAM's map: the Grad-CAM map (any gradient method) times the guided gradient's magnitude
summed over the colour channels, then ReLU, resizing and normalisation as every map (the fused op).
Guided backpropagation's own map (:class:`GuidedBackprop`, the saliency map Adebayo et al.'s sanity checks
found nearly unchanged by randomising the model): that magnitude alone, normalised.
``guided_backprop`` gives the raw (B, 3, H, W) gradients for pictures in colour.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import fused_weighted_cam
from .explainer import CamExplainer, GradientWeightedCAM, check_op_method


class _GuidedReLU(torch.autograd.Function):
    """Identity on a ReLU's output; backward passes positive gradients where the output is positive."""

    @staticmethod
    def forward(ctx, out):
        ctx.save_for_backward(out)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        out, = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


def guided_backprop(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``(B, K, C, H, W)``: guided gradients of each target class (``classes`` (B, K)) with respect to the
    images. The model's parameters are not touched (gradients with respect to the images only)."""
    x = images.detach().requires_grad_(True)
    handles = [m.register_forward_hook(lambda m, i, o: _GuidedReLU.apply(o))
               for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.enable_grad():
            out = model(x)
            K = classes.shape[1]
            return torch.stack([torch.autograd.grad(out.gather(1, classes[:, k:k + 1]).sum(), x,
                                                    retain_graph=k < K - 1)[0] for k in range(K)], dim=1)
    finally:
        for h in handles:
            h.remove()


def guided_saliency(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, size) -> torch.Tensor:
    """``(B, K, H, W)`` at ``size``: the guided gradients' magnitude summed over the colour channels."""
    saliency = guided_backprop(model, images, classes).abs().sum(2).float()  # (B, K, H, W)
    if tuple(saliency.shape[-2:]) != tuple(size):
        saliency = nn.functional.interpolate(saliency, size=size, mode="bilinear", align_corners=False)
    return saliency


def normalised(maps: torch.Tensor, size) -> torch.Tensor:
    """``(B, K, H, W)`` maps through the fused epilogue (ReLU, normalisation) as every method's."""
    B, K = maps.shape[:2]
    return fused_weighted_cam(maps.flatten(0, 1)[:, None], torch.ones(B * K, 1, device=maps.device), size
                              ).view(B, K, *size)


class GuidedBackprop(CamExplainer):
    """Guided backpropagation as a map (module docstring); the target layer is ignored."""

    name, aliases = "guided-backprop", ("GuidedBackpropReLUModel",)
    uses_target_layers = False

    def _maps(self, images, logits, classes, acts, size):
        return normalised(guided_saliency(self.model, images, classes, size), size)


class GuidedGradCAM(GradientWeightedCAM):
    """Guided Grad-CAM; ``method`` picks the Grad-CAM map (default ``gradcam``, one of
    ``sportsnet.ops.METHODS``)."""

    name = "guided-gradcam"

    def __init__(self, model, target_layer=None, *, method: str = "gradcam", **options):
        super().__init__(model, target_layer, **options)
        self.op_method = check_op_method(method, "GuidedGradCAM")

    def _maps(self, images, logits, classes, acts, size):
        cams = super()._maps(images, logits, classes, acts, size)
        return normalised(cams * guided_saliency(self.model, images, classes, size), size)
