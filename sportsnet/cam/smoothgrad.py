"""SmoothGrad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with its gradient terms averaged over
``num_samples`` copies of the image with Gaussian noise (``std``, seeded by ``seed``):

    D1, D2, D3 = mean over samples of G, G^2, G^3   (G: the target's gradient at the target layer)
    alpha = D2 / (2 D2 + sum(A) D3 + 1e-6)  (0 where D2 = 0),   w_k = sum(alpha ReLU(D1))
    map = ReLU(sum_k w_k A_k)  with A the noise-free image's activations

through :func:`sportsnet.ops.fused_weighted_cam`. With one sample and no noise it is our Grad-CAM++.

Definitions (where torchcam's SmoothGradCAMpp differs): like our Grad-CAM++ (and pytorch-grad-cam's),
sum(A) multiplies D3 at each position, where torchcam sums A * D3 over the positions; and the ReLU is of
the averaged gradient, where torchcam uses the last sample's gradient.
"""
from __future__ import annotations

import torch

from ..ops import fused_weighted_cam
from ..ops.reference import gradcampp_weights
from .explainer import GradientWeightedCAM, average_layers
from .hooks import ActivationCapture


class SmoothGradCAMpp(GradientWeightedCAM):
    """Args (besides :class:`CamExplainer`'s): ``num_samples`` noisy copies (default 4), noise ``std``
    (default 0.3, in the input's units), ``seed`` of the noise."""

    name, op_method = "smoothgradcam++", "gradcam++"

    def __init__(self, model, target_layer=None, *, num_samples: int = 4, std: float = 0.3, seed: int = 0, **options):
        super().__init__(model, target_layer, **options)
        if not isinstance(num_samples, int) or num_samples < 1 or not std >= 0:
            raise ValueError(f"SmoothGradCAMpp: num_samples={num_samples!r} must be a positive integer and "
                             f"std={std!r} >= 0")
        self.num_samples, self.std, self.seed = num_samples, float(std), seed

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        views = [self.maps_view(a.detach(), n).float() for n, a in zip(self.target_layers, acts)]
        moments = [[torch.zeros(3, *v.shape, device=v.device) for v in views] for _ in range(K)]
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        for _ in range(self.num_samples):
            noisy = images + self.std * torch.randn(images.shape, generator=generator, device=images.device,
                                                    dtype=images.dtype)
            capture = ActivationCapture(self.layers)
            try:
                out = self.model(noisy)
            finally:
                capture.remove()
            sample_acts = [capture.outputs[n] for n in self.target_layers]
            capture.clear()
            for k in range(K):
                grads = torch.autograd.grad(out.gather(1, classes[:, k:k + 1]).sum(), sample_acts,
                                            retain_graph=k < K - 1)
                for m, n, g in zip(moments[k], self.target_layers, grads):
                    g = self.maps_view(g, n).float()
                    m[0] += g
                    m[1] += g * g
                    m[2] += g * g * g
        maps = torch.empty(B, K, *size, dtype=torch.float32, device=images.device)
        for k in range(K):
            per_layer = []
            for A, m in zip(views, moments[k]):
                per_layer.append(fused_weighted_cam(A, gradcampp_weights(A, *(m / self.num_samples)), size))
            maps[:, k] = average_layers(per_layer)
        return maps
