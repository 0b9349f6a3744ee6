"""Train and eval transforms on ``torchvision.transforms.v2``.

Image statistics belong to the model family: ImageNet's for VGG (the default here), CLIP's taken
from the model (``model.visual.image_mean`` / ``image_std`` for open_clip) and passed in. The ImageNet
statistics, :data:`EVAL_RESIZE_RATIO`, :func:`grayscale_stats` and :func:`check_stats` are defined in
:mod:`sportsnet.data.normalization` (shared with :mod:`sportsnet.data.batch_aug`) and importable from here too.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

# One way only: batch_aug takes what it shares with this module from .normalization, never from here.
from .batch_aug import BatchRandomResizedCrop, BatchResizeCenterCrop
from .normalization import EVAL_RESIZE_RATIO, IMAGENET_MEAN, IMAGENET_STD, check_stats, grayscale_stats


def build_transforms(
    train: bool,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    grayscale: bool = False,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    resize_ratio: float = EVAL_RESIZE_RATIO,
    batched: bool = False,
):
    """PIL image (or uint8 tensor) -> normalised float32 ``(C, size, size)`` tensor.

    ``batched=True`` gives the same transforms for a whole uint8 ``(B, 3, H, W)`` batch on its device
    (:class:`~sportsnet.data.batch_aug.BatchRandomResizedCrop` / ``BatchResizeCenterCrop``).

    Train: random resized crop (``scale``) + horizontal flip (probability ``hflip``). Eval: resize the
    shorter side to ``round(size * resize_ratio)`` (ImageNet's 256/224 by default), centre crop.
    ``grayscale=True`` yields one channel normalised with :func:`grayscale_stats`.
    """
    if size <= 0:
        raise ValueError(f"size={size} must be a positive number of pixels")
    if resize_ratio < 1:
        raise ValueError(f"resize_ratio={resize_ratio} must be >= 1 (resize to at least the crop size)")
    check_stats(mean, std)
    if batched:
        if train:
            return BatchRandomResizedCrop(size, scale=scale, hflip=hflip, mean=mean, std=std, grayscale=grayscale,
                                          interpolation=interpolation)
        return BatchResizeCenterCrop(size, resize_ratio=resize_ratio, mean=mean, std=std, grayscale=grayscale,
                                     interpolation=interpolation)
    if train:
        geometry = [
            v2.RandomResizedCrop(size, scale=scale, interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(hflip),
        ]
    else:
        geometry = [
            v2.Resize(round(size * resize_ratio), interpolation=interpolation, antialias=True),
            v2.CenterCrop(size),
        ]
    # Geometry runs on uint8 (cheaper); grayscale after the float conversion, as uint8 would truncate.
    colour = [v2.ToDtype(torch.float32, scale=True)]
    if grayscale:
        mean, std = grayscale_stats(mean, std)
        colour.append(v2.Grayscale(num_output_channels=1))
    return v2.Compose([v2.ToImage(), *geometry, *colour, v2.Normalize(mean=list(mean), std=list(std))])


def denormalize(images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Undo ``Normalize`` on a ``(B, C, H, W)`` batch, giving values in [0, 1] (clamped)."""
    if images.shape[1] == 1 and len(mean) == 3:
        mean, std = grayscale_stats(mean, std)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp_(0, 1)


def eval_box(box: Sequence[float], image_size: tuple[int, int], size: int, resize: int) -> list[float]:
    """A box ``(x0, y0, x1, y1)`` in original pixels -> pixels of the eval transform's output (shorter side
    resized to ``resize``, then a centre crop of ``size``), clipped to the crop. ``image_size`` is ``(w, h)``."""
    w0, h0 = image_size
    scale = resize / min(w0, h0)
    w1, h1 = (resize, int(resize * h0 / w0)) if w0 <= h0 else (int(resize * w0 / h0), resize)
    left, top = int(round((w1 - size) / 2.0)), int(round((h1 - size) / 2.0))
    x0, y0, x1, y1 = box

    def clip(v: float) -> float:
        return min(max(v, 0.0), float(size))

    return [clip(x0 * scale - left), clip(y0 * scale - top), clip(x1 * scale - left), clip(y1 * scale - top)]
