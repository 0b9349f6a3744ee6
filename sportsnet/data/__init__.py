"""Datasets and transforms: files on disk -> (image tensor, label) samples.

Readers: :class:`Sports100`, :class:`LogicalRhythm`, :class:`Captions`; the offline synthetic set
:func:`make_synthetic_sports` (with its off-centre evaluation split, :data:`OFFCENTRE_SPLIT`); transforms
:func:`build_transforms`; subsets :func:`few_shot_subset`, :func:`fraction_subset`, :func:`stratified_split`,
:func:`stratified_sample_indices`.
"""
from .captions import Captions
from .classnames import SPORTS100_CLASSES
from .images import IMAGE_EXTENSIONS, ImageListDataset, Skipped, UnreadableImageError, load_rgb, summarize_skipped
from .logical_rhythm import LogicalRhythm
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .sports100 import OFFCENTRE_SPLIT, Sports100
from .subsets import (
    LabeledSubset,
    few_shot_indices,
    few_shot_subset,
    fraction_subset,
    stratified_sample_indices,
    stratified_split,
)
from .synthetic import SYNTHETIC_SETS, make_synthetic_sports, read_boxes, synthetic_set


def __getattr__(name: str):
    """The transforms on first use: they import torchvision, which imports torch._dynamo (seconds), and the
    readers and the synthetic set (make_synthetic.py) need neither."""
    if name in ("build_transforms", "denormalize"):
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Captions", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "ImageListDataset", "LabeledSubset",
    "LogicalRhythm", "OFFCENTRE_SPLIT", "SPORTS100_CLASSES", "SYNTHETIC_SETS", "Skipped", "Sports100",
    "UnreadableImageError", "build_transforms", "denormalize", "few_shot_indices", "few_shot_subset",
    "fraction_subset", "load_rgb", "make_synthetic_sports", "read_boxes", "stratified_sample_indices",
    "stratified_split", "summarize_skipped", "synthetic_set",
]
