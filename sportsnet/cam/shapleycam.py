"""ShapleyCAM (Cai, 2025): Grad-CAM's channel weights corrected by second-order information, from a
Shapley-value reading of CAM methods:

    w_k = mean over positions of (G - 0.5 H A)_k,   map = ReLU(sum_k w_k A_k)

where G is the target's gradient at the target layer and H A the Hessian-vector product of the
target with the activations themselves (one double backward). Through layers that are piecewise
linear in the activation (ReLU, max-pool, linear heads), H A is 0 and ShapleyCAM is Grad-CAM; it
differs where the rest of the network curves (attention, GELU, softmax). As pytorch-grad-cam's
ShapleyCAM, with the target's logit as the score. Attention runs on PyTorch's math kernel during the
call: the fused ones have no double backward.
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .explainer import GradientWeightedCAM, average_layers


class ShapleyCAM(GradientWeightedCAM):
    """ShapleyCAM; arguments as :class:`CamExplainer`."""

    name = "shapleycam"

    def _explain(self, images, targets, top_k):
        # The fused attention kernels (flash, memory-efficient) have no double backward: attention runs on
        # the math kernel for this method's call (open_clip's towers use scaled_dot_product_attention).
        with sdpa_kernel([SDPBackend.MATH]):
            return super()._explain(images, targets, top_k)

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        maps = torch.empty(B, K, *size, dtype=torch.float32, device=images.device)
        for k in range(K):
            grads = torch.autograd.grad(self._score(logits, classes[:, k]).sum(), acts, create_graph=True)
            # Per layer, H A = d(G . A)/dA at fixed A; a gradient with no graph: the rest is linear, H A = 0.
            hvps = [torch.autograd.grad(g, a, grad_outputs=a.detach(), retain_graph=True, allow_unused=True)[0]
                    if g.requires_grad else None for a, g in zip(acts, grads)]
            per_layer = []
            for n, a, g, hvp in zip(self.target_layers, acts, grads, hvps):
                corrected = g.detach() if hvp is None else g.detach() - 0.5 * hvp.detach()
                # Grad-CAM's weights (the mean over positions) of the corrected gradient.
                per_layer.append(self._from_gradients(self.maps_view(a.detach(), n), self.maps_view(corrected, n),
                                                      size))
            maps[:, k] = average_layers(per_layer)
        return maps
