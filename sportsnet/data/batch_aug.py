"""Training augmentation for a whole uint8 batch at once, on the training device.

:class:`BatchRandomResizedCrop` draws a crop per image exactly as ``torchvision``'s
``RandomResizedCrop.get_params`` does (area fraction from ``scale``, log-uniform aspect ratio, ten
tries, then the centre crop of the clamped ratio), flips per image, and resamples every crop to
``size x size`` in one ``torchvision.ops.roi_align`` call (bilinear, averaging ``ceil(crop/size)``
samples per output pixel when shrinking, so large crops are not aliased), then normalises.

The crop distribution is torchvision's; the resampling is not bit-identical to its antialiased
resize. That is why ``train_vgg19.py`` keeps the per-image transforms (on the decoded-image cache,
exact) and this is measured in ``benchmarks/bench_data.py`` as the GPU-oriented path.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .transforms import IMAGENET_MEAN, IMAGENET_STD


class BatchRandomResizedCrop:
    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, tries: int = 10):
        if size <= 0 or not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1] or not 0 <= hflip <= 1:
            raise ValueError(f"bad arguments: size={size}, scale={scale}, ratio={ratio}, hflip={hflip} "
                             f"(expected size > 0, 0 < scale[0] <= scale[1], 0 < ratio[0] <= ratio[1], 0 <= hflip <= 1)")
        self.size, self.scale, self.ratio, self.hflip, self.tries = size, scale, ratio, hflip, tries
        self.mean, self.std = tuple(mean), tuple(std)

    def boxes(self, batch: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, 4)`` crops ``(x0, y0, x1, y1)`` in pixels (integers), drawn per image."""
        area = height * width
        n = (batch, self.tries)
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, generator=generator,
                                                                                       dtype=torch.float64))
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64))
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((batch,), -1))
        # Centre crop of the clamped ratio where no try fits (torchvision's fallback).
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        rows = torch.arange(batch)
        pick = first.clamp(min=0)
        cw = torch.where(first >= 0, w[rows, pick], torch.tensor(float(fw), dtype=torch.float64))
        ch = torch.where(first >= 0, h[rows, pick], torch.tensor(float(fh), dtype=torch.float64))
        u = torch.rand((batch, 2), generator=generator, dtype=torch.float64)
        x0 = torch.where(first >= 0, torch.floor(u[:, 0] * (width - cw + 1)), torch.tensor((width - fw) // 2.0,
                                                                                          dtype=torch.float64))
        y0 = torch.where(first >= 0, torch.floor(u[:, 1] * (height - ch + 1)), torch.tensor((height - fh) // 2.0,
                                                                                           dtype=torch.float64))
        return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 (or float in [0, 255]) ``(B, C, H, W)`` -> normalised float32 ``(B, C, size, size)``."""
        from torchvision.ops import roi_align

        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        b, c, height, width = images.shape
        boxes = self.boxes(b, height, width, generator).to(images.device, torch.float32)
        rois = torch.cat([torch.arange(b, device=images.device, dtype=torch.float32)[:, None], boxes], dim=1)
        out = roi_align(images.float(), rois, output_size=(self.size, self.size), spatial_scale=1.0,
                        sampling_ratio=0, aligned=True)
        flip = torch.rand(b, generator=generator) < self.hflip
        if flip.any():
            idx = flip.nonzero().squeeze(1).to(images.device)
            out[idx] = out[idx].flip(-1)
        mean = torch.tensor(self.mean, device=out.device).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, device=out.device).view(1, -1, 1, 1) * 255.0
        return out.sub_(mean).div_(std)
