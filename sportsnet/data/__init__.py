"""Datasets and transforms: files on disk -> (image tensor, label) samples.

Readers: :class:`Sports100`, :class:`LogicalRhythm`, :class:`Captions`; the offline synthetic set
:func:`make_synthetic_sports`; transforms :func:`build_transforms`; subsets :func:`few_shot_subset`,
:func:`fraction_subset`, :func:`stratified_split`.
"""
from .captions import Captions
from .classnames import SPORTS100_CLASSES
from .images import IMAGE_EXTENSIONS, ImageListDataset, Skipped, UnreadableImageError, load_rgb, summarize_skipped
from .logical_rhythm import LogicalRhythm
from .sports100 import Sports100
from .subsets import LabeledSubset, few_shot_indices, few_shot_subset, fraction_subset, stratified_split
from .synthetic import SYNTHETIC_SETS, make_synthetic_sports, read_boxes, synthetic_set
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, denormalize

__all__ = [
    "Captions", "IMAGE_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD", "ImageListDataset", "LabeledSubset",
    "LogicalRhythm", "SPORTS100_CLASSES", "Skipped", "Sports100", "UnreadableImageError", "build_transforms",
    "denormalize", "few_shot_indices", "few_shot_subset", "fraction_subset", "load_rgb", "make_synthetic_sports", "SYNTHETIC_SETS", "synthetic_set",
    "read_boxes", "stratified_split", "summarize_skipped",
]
