"""Normalisation statistics and the eval resize ratio, shared by the per-image and the batch transforms.

Both :mod:`sportsnet.data.transforms` and :mod:`sportsnet.data.batch_aug` import from here (and
``transforms`` imports ``batch_aug``), so neither module needs the other's import to finish first.
The names stay importable from ``sportsnet.data.transforms`` as before.
"""
from __future__ import annotations

from typing import Sequence

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
