"""Ablation-CAM (Desai and Ramaswamy, 2020): a channel's weight is the relative drop of the target
class's logit when that channel of the target layer's output is set to zero,
``w_k = (y - y_k) / y``; map ReLU(sum_k w_k A_k) through :func:`sportsnet.ops.fused_weighted_cam`.

Only the network after the target layer runs for the ablated variants (:mod:`sportsnet.cam.split`):
the layers before it ran once, in the call's first forward. A channel that is zero everywhere
already is not run: zeroing it changes nothing, so its drop is 0 by definition.

Definition (where pytorch-grad-cam differs): an ablated channel is set to 0, as in the paper.
pytorch-grad-cam sets it to 0 only when the layer's minimum is 0 (after a ReLU), and otherwise to
``min - 1e7``; on post-ReLU layers, the usual targets, the two agree.
"""
from __future__ import annotations

import torch

from ..ops import fused_weighted_cam
from .explainer import average_layers
from .gradient_free import GradientFreeCAM
from .split import rest_of_model, split_after


class AblationCAM(GradientFreeCAM):
    """Ablation-CAM; arguments as :class:`GradientFreeCAM`."""

    name = "ablationcam"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splits: dict[str, tuple] = {}  # layer name -> split_after's (rest, why)

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        original = logits.float().gather(1, classes)  # (B, K)
        per_layer = []
        for (name, module), act in zip(self.layers, acts):
            A = self.maps_view(act, name, B)
            drops = self.score_drops(images, (name, module), act, A, classes, original)
            weights = drops / original[:, None, :]
            A = A.float()
            per_layer.append(torch.stack([fused_weighted_cam(A, weights[:, :, k].contiguous(), size)
                                          for k in range(K)], dim=1))
        return average_layers(per_layer)

    def score_drops(self, images, layer, act, A, classes, original) -> torch.Tensor:
        """``(B, C, K)``: original logit minus the logit with channel c of the layer's output zeroed."""
        B, C = A.shape[:2]
        name = layer[0]
        if name not in self._splits:  # traced once per explainer and layer, not once per call
            self._splits[name] = split_after(self.model, name)
        rest = rest_of_model(self.model, layer, images, self._splits[name])
        drops = torch.zeros(B, C, classes.shape[1], device=images.device)
        live = A.flatten(2).ne(0).any(2)  # (B, C): channels with something to ablate
        # The batch dimension of the layer's output: 1 for a sequence-first token tensor (N, B, D).
        batch_first = self.token_layout[name]["batch_first"]
        bdim = 1 if act.dim() == 3 and (batch_first is False or (batch_first is None and act.shape[0] != B)) else 0
        batch = self.batch_size_for(images.device)
        for b in range(B):
            channels = live[b].nonzero().flatten()
            for start in range(0, channels.numel(), batch):
                c = channels[start:start + batch]
                variants = act.narrow(bdim, b, 1).repeat_interleave(c.numel(), dim=bdim)
                view = self.maps_view(variants, name, c.numel())
                view[torch.arange(c.numel(), device=c.device), c] = 0
                out = self._forward(lambda v: rest(b, v), variants, images=False)
                drops[b, c] = original[b] - out[:, classes[b]]
        return drops
