"""Score-CAM (Wang et al., 2020): each channel of the target layer, upsampled and scaled to [0, 1],
masks the image; the channel's weight is the softmax over channels of the target class's logit for
its masked image. Gradient-free: one forward per (image, channel) pair, in large batches.

Definitions (where the libraries differ): each channel is scaled to [0, 1] by its own min and max at
the layer's resolution, then upsampled bilinearly with ``align_corners=False`` (torchcam's order;
pytorch-grad-cam upsamples first, with ``align_corners=True``, which gives the same masks when the
layer has the image's resolution). A constant channel scales to a zero mask, so every such channel
masks every image to the same all-zero image: its logits are computed once per call, not once per
channel. Maps: :func:`sportsnet.ops.fused_weighted_cam`.

Two variants average each channel's logit over several masked images before the softmax:
- SS-CAM (Wang et al., 2020, "smoothed"): ``num_samples`` masks with Gaussian noise (``std``) added at
  the image's resolution (as torchcam does); the noise comes from a generator seeded with ``seed``, so
  a call is reproducible. Constant channels are not shared (their noisy masks differ).
- IS-CAM (Naidu et al., 2020, "integrated"): the mask scaled by the cumulative coefficients
  sum_{j<=i} j/N, i = 1..N (torchcam's schedule).
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
    #: Noise added to the masks (SS-CAM); 0: none. ``seed`` seeds it.
    std = 0.0
    seed = 0

    def default_batch_size(self, device: torch.device) -> int:
        """Each forward runs the whole model on an image-sized input. On a CPU, batches whose activations
        stay in cache run faster (VGG19 forwards of 224 px images, channels-last float32, on a 2-core AMD
        EPYC: faster in batches of 8 than of 32 with AVX-512, no slower capped at AVX2;
        benchmarks/bench_methods.py times the method as a whole). A GPU wants large batches."""
        return 8 if device.type == "cpu" else 128

    def scales(self) -> list[float]:
        """The factors each channel's mask is used at; the logits are averaged over them."""
        return [1.0]

    def _maps(self, images, logits, classes, acts, size):
        B, K = classes.shape
        per_layer = []
        for name, act in zip(self.target_layers, acts):
            A = self.maps_view(act, name).float()
            weights = torch.softmax(self.channel_scores(images, A, classes), dim=1)  # over channels
            per_layer.append(torch.stack([fused_weighted_cam(A, weights[:, :, k].contiguous(), size)
                                          for k in range(K)], dim=1))
        return average_layers(per_layer)

    def channel_scores(self, images: torch.Tensor, A: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """``(B, C, K)``: the logit of each target class for the image masked by each channel, averaged
        over :meth:`scales` (and the noise samples)."""
        B, C = A.shape[:2]
        K = classes.shape[1]
        masks, constant = channel_masks(A)
        if self.std > 0:
            constant = torch.zeros_like(constant)  # noisy masks are never zero
        scales = self.scales()
        scores = torch.zeros(B, C, K, device=images.device)
        if constant.any():  # one all-zero image stands for every constant channel of every image, at any scale
            zero_logits = self._forward(self.model, torch.zeros_like(images[:1]))[0]
            scores[constant] = zero_logits[classes][:, None, :].expand(B, C, K)[constant]
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        pairs = (~constant).nonzero()  # (n, 2): (image, channel) pairs that need forwards
        batch = self.batch_size_for(images.device)
        for start in range(0, pairs.shape[0], batch):
            b, c = pairs[start:start + batch].unbind(1)
            up = F.interpolate(masks[b, c][:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
            total = torch.zeros(b.numel(), K, device=images.device)
            for scale in scales:
                mask = up * scale
                if self.std > 0:
                    mask = mask + self.std * torch.randn(mask.shape, generator=generator, device=mask.device)
                total += self._forward(self.model, images[b] * mask.to(images.dtype)).gather(1, classes[b])
            scores[b, c] = total / len(scales)
        return scores


class SSCAM(ScoreCAM):
    """SS-CAM: Score-CAM with ``num_samples`` noisy masks per channel (noise ``std``, seeded by ``seed``)."""

    name = "sscam"

    def __init__(self, model, target_layer=None, *, num_samples: int = 35, std: float = 2.0, seed: int = 0,
                 **options):
        super().__init__(model, target_layer, **options)
        if not isinstance(num_samples, int) or num_samples < 1 or not std >= 0:
            raise ValueError(f"SSCAM: num_samples={num_samples!r} must be a positive integer and std={std!r} >= 0")
        self.num_samples, self.std, self.seed = num_samples, float(std), seed

    def scales(self):
        return [1.0] * self.num_samples


class ISCAM(ScoreCAM):
    """IS-CAM: Score-CAM averaged over masks scaled by the cumulative coefficients of ``num_samples`` steps."""

    name = "iscam"

    def __init__(self, model, target_layer=None, *, num_samples: int = 10, **options):
        super().__init__(model, target_layer, **options)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"ISCAM: num_samples={num_samples!r} must be a positive integer")
        self.num_samples = num_samples

    def scales(self):
        steps = torch.arange(1, self.num_samples + 1, dtype=torch.float64) / self.num_samples
        return steps.cumsum(0).tolist()
