"""Ablation-CAM (Desai and Ramaswamy, 2020): a channel's weight is the relative drop of the target
class's logit when that channel of the target layer's output is set to zero,
``w_k = (y - y_k) / y``; map ReLU(sum_k w_k A_k) through :func:`sportsnet.ops.fused_weighted_cam`.

Only the network after the target layer runs for the ablated variants (:mod:`sportsnet.cam.split`):
the layers before it ran once, in the call's first forward. A channel that is zero everywhere
already is not run: zeroing it changes nothing, so its drop is 0 by definition.

A channel is zeroed where its map reads it, through the layer's layout (:mod:`sportsnet.cam.layouts`):
in a channels-last stage, the last axis; in a token sequence, the patch tokens (prefix tokens such as a
class token are not part of the map and keep their values); through ``reshape=``, the elements it
selects (:func:`sportsnet.cam.layouts.ablation_index`).

Precision: ``precision="auto"`` is float32 on every device. A drop is the difference of two nearly
equal logits (one channel of hundreds removed); bfloat16's 8-bit mantissa rounds a logit by about 0.4%,
as much as a typical drop, so under bf16 autocast the weights are mostly rounding. (Measured on
torchvision's VGG11 with random weights at 128 px, features.19: maps within 2e-7 of pytorch-grad-cam's
in float32; see docs/explanations.md for bf16.) The rest of the network is small, so float32 costs little.

Definition (where pytorch-grad-cam differs): an ablated channel is set to 0, as in the paper.
pytorch-grad-cam sets it to 0 only when the layer's minimum is 0 (after a ReLU), and otherwise to
``min - 1e7``; on post-ReLU layers, the usual targets, the two agree.
"""
from __future__ import annotations

import torch

from ..ops import fused_weighted_cam
from .explainer import average_layers
from .gradient_free import GradientFreeCAM
from .layouts import ablation_index
from .split import rest_of_model, split_after


class AblationCAM(GradientFreeCAM):
    """Ablation-CAM; arguments as :class:`GradientFreeCAM`."""

    name = "ablationcam"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splits: dict[str, tuple] = {}  # layer name -> split_after's (rest, why)

    def auto_precision(self, device: torch.device) -> str:
        """float32 everywhere: the drops are differences of nearly equal logits (module docstring)."""
        return "fp32"

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        original = logits.float().gather(1, classes)  # (B, K)
        per_layer = []
        for (name, module), act in zip(self.layers, acts):
            A = self.maps_view(act, name)
            drops = self.score_drops(images, (name, module), act, A, classes, original)
            weights = drops / original[:, None, :]
            A = A.float()
            per_layer.append(torch.stack([fused_weighted_cam(A, weights[:, :, k].contiguous(), size)
                                          for k in range(K)], dim=1))
        return average_layers(per_layer)

    def score_drops(self, images, layer, act, A, classes, original) -> torch.Tensor:
        """``(B, C, K)``: original logit minus the logit with channel c of the layer's output zeroed
        (``act``: the layer's output; ``A``: it as ``(B, C, h, w)`` maps)."""
        B, C = A.shape[:2]
        name = layer[0]
        if name not in self._splits:  # traced once per explainer and layer, not once per call
            self._splits[name] = split_after(self.model, name)
        bdim = self.layouts[name].batch_dim
        rest = rest_of_model(self.model, layer, images, self._splits[name], batch_dim=bdim)
        drops = torch.zeros(B, C, classes.shape[1], device=images.device)
        live = A.flatten(2).ne(0).any(2)  # (B, C): channels with something to ablate
        index = ablation_index(self.layouts[name], act.narrow(bdim, 0, 1), name, self._image_hw)  # (C, h*w)
        batch = self.batch_size_for(images.device)
        for b in range(B):
            single = act.narrow(bdim, b, 1)
            other_dims = [s for i, s in enumerate(single.shape) if i != bdim]
            channels = live[b].nonzero().flatten()
            for start in range(0, channels.numel(), batch):
                c = channels[start:start + batch]
                n = c.numel()
                flat = single.reshape(1, -1).repeat(n, 1)  # (n, numel): one copy per ablated channel
                flat[torch.arange(n, device=c.device)[:, None], index[c]] = 0
                variants = flat.view(n, *other_dims).movedim(0, bdim)  # the layer's layout, batch n
                out = self._forward(lambda v: rest(b, v), variants, images=False)
                drops[b, c] = original[b] - out[:, classes[b]]
        return drops
