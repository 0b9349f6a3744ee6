"""Score-CAM (Wang et al., 2020): each channel of the target layer, upsampled and scaled to [0, 1],
masks the image; the channel's weight is the softmax over channels of the target class's logit for
its masked image. Gradient-free: one forward per (image, channel) pair, in large batches.

Definitions (where the libraries differ): each channel is scaled to [0, 1] by its own min and max at
the layer's resolution, then upsampled bilinearly with ``align_corners=False`` (torchcam's order;
pytorch-grad-cam upsamples first, with ``align_corners=True``, which gives the same masks when the
layer has the image's resolution). A constant channel scales to a zero mask, so every such channel
masks every image to the same all-zero image: its logits are computed once per call, not once per
channel. Maps: :func:`sportsnet.ops.fused_weighted_cam`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import fused_weighted_cam
from .explainer import average_layers
from .gradient_free import GradientFreeCAM


def channel_masks(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masks, constant)``: ``(B, C, h, w)`` channels scaled to [0, 1] by their own range, and which
    channels are constant (their masks are zero)."""
    lo, hi = A.amin((2, 3), keepdim=True), A.amax((2, 3), keepdim=True)
    span = hi - lo
    constant = (span == 0)[:, :, 0, 0]
    return torch.where(span > 0, (A - lo) / span.clamp_min(torch.finfo(A.dtype).tiny), torch.zeros_like(A)), constant


class ScoreCAM(GradientFreeCAM):
    """Score-CAM; arguments as :class:`GradientFreeCAM`."""

    name = "scorecam"

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        per_layer = []
        for name, act in zip(self.target_layers, acts):
            A = self.maps_view(act, name, B).float()
            weights = torch.softmax(self.channel_scores(images, A, classes), dim=1)  # over channels
            per_layer.append(torch.stack([fused_weighted_cam(A, weights[:, :, k].contiguous(), size)
                                          for k in range(K)], dim=1))
        return average_layers(per_layer)

    def channel_scores(self, images: torch.Tensor, A: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``(B, C, K)``: the logit of each target class for the image masked by each channel."""
        B, C = A.shape[:2]
        K = classes.shape[1]
        masks, constant = channel_masks(A)
        scores = torch.empty(B, C, K, device=images.device)
        if constant.any():  # one all-zero image stands for every constant channel of every image
            zero_logits = self._forward(self.model, torch.zeros_like(images[:1]))[0]
            scores[constant] = zero_logits[classes][:, None, :].expand(B, C, K)[constant]
        pairs = (~constant).nonzero()  # (n, 2): (image, channel) pairs that need a forward
        for start in range(0, pairs.shape[0], self.batch_size):
            b, c = pairs[start:start + self.batch_size].unbind(1)
            up = F.interpolate(masks[b, c][:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
            out = self._forward(self.model, images[b] * up.to(images.dtype))
            scores[b, c] = out.gather(1, classes[b])
        return scores
