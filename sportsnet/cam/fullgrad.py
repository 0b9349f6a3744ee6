"""FullGrad (Srinivas and Fleuret, 2019): the whole network's gradients at once, not one layer's.

    map = sum over bias layers l, channels c of  s(|b_lc * dy/dz_lc|)  +  sum over colours of s(|x * dy/dx|)

where z_l is the output of each ``nn.Conv2d`` or ``nn.BatchNorm2d`` with a bias (a BatchNorm's
effective bias in eval mode: beta - mean * gamma / sqrt(var + eps)), and s scales each (image,
channel) map to [0, 1] at its own resolution, then resizes it to the image's size; the total is then
normalised as every map. This is pytorch-grad-cam's FullGrad; the target layer is ignored, as there.

Each layer's sum of scaled channels is one weighted channel sum with a bias, weights 1/(max - min +
1e-7) and bias -sum(min * weight), so it goes through :func:`sportsnet.ops.fused_weighted_cam` (resized
once per layer, not once per channel).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import fused_weighted_cam
from .explainer import GradientWeightedCAM

SCALE_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image: (x - min) / (max - min + 1e-7)


def bias_of(layer: nn.Module) -> torch.Tensor:
    """The bias a layer adds to each output channel (a BatchNorm's effective one in eval mode)."""
    if isinstance(layer, nn.BatchNorm2d):
        return (layer.bias - layer.running_mean * layer.weight / torch.sqrt(layer.running_var + layer.eps)).detach()
    return layer.bias.detach()


def scaled_channel_sum(X: torch.Tensor, size) -> torch.Tensor:
    """``(B, H, W)``: sum over channels of each (image, channel) map of ``X`` (B, C, h, w) scaled to [0, 1]
    by its own min and max, resized to ``size``."""
    X = X.float()
    lo, hi = X.amin((2, 3)), X.amax((2, 3))
    weights = 1.0 / (hi - lo + SCALE_EPS)
    return fused_weighted_cam(X, weights, size, bias=-(lo * weights).sum(1), normalize=False)


class FullGrad(GradientWeightedCAM):
    """FullGrad; ``target_layer`` is ignored (every bias layer counts)."""

    name = "fullgrad"
    uses_target_layers = False

    def __init__(self, model, target_layer=None, **options):
        super().__init__(model, target_layer, **options)
        self.bias_layers = [m for m in model.modules() if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None]

    def _maps(self, images, logits, classes, acts, size):
        outputs: list[torch.Tensor] = []

        def keep(module, inputs, output):
            outputs.append(output)
            return output.clone()  # an in-place op after the layer must not change what we differentiate

        x = images.detach().requires_grad_(True)
        handles = [m.register_forward_hook(keep) for m in self.bias_layers]
        try:
            out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        biases = [bias_of(m).float() for m in self.bias_layers]
        B, K = classes.shape
        maps = torch.empty(B, K, *size, dtype=torch.float32, device=images.device)
        for k in range(K):
            grads = torch.autograd.grad(out.gather(1, classes[:, k:k + 1]).sum(), [x, *outputs],
                                        retain_graph=k < K - 1)
            total = scaled_channel_sum((grads[0] * x).abs(), size)
            for bias, g in zip(biases, grads[1:]):
                total = total + scaled_channel_sum((bias[None, :, None, None] * g).abs(), size)
            maps[:, k] = fused_weighted_cam(total[:, None], torch.ones(B, 1, device=total.device), size)
        return maps
