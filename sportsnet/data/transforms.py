"""Train and eval transforms on ``torchvision.transforms.v2``.

Image statistics belong to the model family: ImageNet's for VGG (the default here), CLIP's taken
from the model (``model.visual.image_mean`` / ``image_std`` for open_clip) and passed in.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Eval resizes the shorter side to size * 256/224 and centre-crops, as the ImageNet references do.
EVAL_RESIZE_RATIO = 256 / 224


def grayscale_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float], tuple[float]]:
    """One-channel statistics for the seeds' grayscale stem.

    The stem's kernel is the *sum* of the pretrained RGB kernels, so the gray input should be
    normalised like each RGB channel on average: the mean of the per-channel statistics.
    """
    return (sum(mean) / len(mean),), (sum(std) / len(std),)


def check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
    """RGB normalisation statistics: three of each, positive std."""
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 (RGB) values, got mean={tuple(mean)} std={tuple(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std={tuple(std)} must be positive")


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
    shorter side to ``round(size * resize_ratio)`` (ImageNet's 256/224 by default), centre crop. ``grayscale=True`` yields one channel
    normalised with :func:`grayscale_stats`.
    """
    if size <= 0:
        raise ValueError(f"size={size} must be a positive number of pixels")
    if resize_ratio < 1:
        raise ValueError(f"resize_ratio={resize_ratio} must be >= 1 (resize to at least the crop size)")
    check_stats(mean, std)
    if batched:
        from .batch_aug import BatchRandomResizedCrop, BatchResizeCenterCrop

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
