"""CAM (Zhou et al., 2016), the original class activation map, for networks whose head is global
average pooling then one linear layer: the target class's row of that layer's weight matrix weighs the
target layer's channels, ``map = ReLU(sum_k W[c, k] A_k)``, through
:func:`sportsnet.ops.fused_weighted_cam`. No gradients and no extra forward. Models with another head
(our VGG19's hidden layers, open_clip's attention pooling) are refused with a clear error: for them
the weights mean nothing. The check is numerical: the call's logits must equal the linear layer applied
to the target layer's average over positions.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import fused_weighted_cam
from .explainer import CamExplainer, TargetLayers, average_layers
from .hooks import resolve_layer


class CAM(CamExplainer):
    """Args (besides :class:`CamExplainer`'s):
        fc_layer: the linear layer after the global average pool (a module or a dotted name); default:
            the model's last ``nn.Linear``.
    """

    name = "cam"
    needs_gradients = False  # the classifier's weights; no backward and no extra forward

    def __init__(self, model: nn.Module, target_layer: TargetLayers = None, *, fc_layer: str | nn.Module | None = None,
                 **options):
        super().__init__(model, target_layer, **options)
        if fc_layer is None:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(f"CAM needs the linear layer after a global average pool; "
                                 f"{type(model).__name__} has no nn.Linear")
            fc_layer = linears[-1]
        self.fc_name, self.fc = resolve_layer(model, fc_layer)
        if not isinstance(self.fc, nn.Linear):
            raise ValueError(f"fc_layer {self.fc_name!r} is a {type(self.fc).__name__}, not an nn.Linear")

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        per_layer = []
        for name, act in zip(self.target_layers, acts):
            A = self.maps_view(act, name)
            if A.shape[1] != self.fc.in_features:
                raise ValueError(f"CAM: layer {name!r} has {A.shape[1]} channels but {self.fc_name!r} takes "
                                 f"{self.fc.in_features} features; CAM needs a head of global average pooling "
                                 f"and one linear layer")
            pooled = self.fc(A.float().mean((2, 3)).to(self.fc.weight.dtype)).float()
            if pooled.shape != logits.shape or not torch.allclose(pooled, logits.float(), rtol=1e-3,
                                                                  atol=1e-3 * float(logits.abs().max()) + 1e-6):
                raise ValueError(f"CAM: the model's logits are not {self.fc_name!r} applied to the average of layer "
                                 f"{name!r} over its positions; CAM needs a head of global average pooling and one "
                                 f"linear layer right after the target layer")
            weight = self.fc.weight.detach().float()  # (classes, C)
            per_layer.append(torch.stack([fused_weighted_cam(A.float(), weight[classes[:, k]], size)
                                          for k in range(K)], dim=1))
        return average_layers(per_layer)
