"""Augmentation of whole uint8 batches on the training device: the same transforms, moved off the workers.

The per-image pipeline of :func:`~sportsnet.data.transforms.build_transforms` decodes, crops, resizes,
converts and normalises every image in a data-loader worker and ships float32 batches (4 bytes a
pixel) between processes. Here the workers (or the main process) only gather uint8 images, and the
batch is transformed where it will be used:

- :class:`BatchRandomResizedCrop` (training): a crop per image drawn by torchvision's algorithm
  (area fraction from ``scale``, log-uniform aspect ratio, ten tries, then the centre crop of the
  clamped ratio), resized by ``torchvision.transforms.v2.functional.resize_image``, the kernel that
  ``v2.RandomResizedCrop`` itself calls, then flipped with probability ``hflip``;
- :class:`BatchResizeCenterCrop` (evaluation): ``v2.Resize`` + ``v2.CenterCrop`` on the batch at once;
- both end with the colour stage of ``build_transforms`` (``ToDtype(scale=True)``, optional
  ``Grayscale``, ``Normalize``): the same ``v2.functional`` calls, or the same arithmetic.

So the output is what the per-image pipeline gives for the same crops and flips, to the bit on the
CPU (``tests/data/test_batch_aug.py``); only where the random draws come from changes (the main
process's torch generator, or ``generator``, instead of each worker's), so the augmentation
*distribution* is the per-image pipeline's. On CUDA, ``resize_image`` resamples uint8 in float and
rounds, as ``v2`` does on CUDA; pixels can differ from the CPU kernel's by a level.

Memory format is kept: a channels-last uint8 batch (what :func:`collate_channels_last` makes of
HWC images) gives a channels-last float batch, and the CPU resampling kernel is faster
on it. On the CPU the colour stage runs image by image (cache-resident); on a GPU, on the batch.
The output is channels-last exactly when the input is. A caller done with an output can hand it back
(``recycle``) to be written over by the next call, saving the page faults of a fresh CPU batch; the
training and evaluation loops do.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from .normalization import EVAL_RESIZE_RATIO, IMAGENET_MEAN, IMAGENET_STD, check_stats, grayscale_stats


def collate_channels_last(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(uint8 (C, H, W), target)]`` -> ``(uint8 (B, C, H, W) channels-last, targets)``.

    The images are stacked as ``(B, H, W, C)`` (in shared memory inside a data-loader worker, like
    ``default_collate``) and returned as a channels-last view, without a transposing copy when the
    items are channels-last views themselves (``DecodedImages.pixels``).
    """
    images, targets = zip(*batch)
    hwc = default_collate([x.permute(1, 2, 0) for x in images])
    return hwc.permute(0, 3, 1, 2), torch.as_tensor(targets)


def crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, 4)`` int64 crops ``(top, left, height, width)``, drawn per image as ``RandomResizedCrop.get_params``."""
    area = height * width
    n = (batch, tries)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=generator, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    found = ok.any(1)
    pick = ok.double().argmax(1)  # the first try that fits
    rows = torch.arange(batch)
    # Centre crop of the clamped ratio where no try fits (torchvision's fallback).
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    cw = torch.where(found, w[rows, pick], float(fw))
    ch = torch.where(found, h[rows, pick], float(fh))
    u = torch.rand((batch, 2), generator=generator, dtype=torch.float64)
    top = torch.where(found, torch.floor(u[:, 0] * (height - ch + 1)), float((height - fh) // 2))
    left = torch.where(found, torch.floor(u[:, 1] * (width - cw + 1)), float((width - fw) // 2))
    return torch.stack([top, left, ch, cw], dim=1).long()


def _unshared(t: torch.Tensor) -> bool:
    """Whether no tensor handle but ``t``'s Python object, and no view, refers to ``t``'s memory."""
    if not hasattr(torch.Tensor, "_use_count") or not hasattr(torch._C, "_storage_Use_Count"):
        return False
    # Tensor handles: the Python object's (autograd's saved tensors add one). Storage handles: the
    # tensor's and the storage object made to ask (a view adds one).
    return torch.Tensor._use_count(t) == 1 and torch._C._storage_Use_Count(t.untyped_storage()._cdata) == 2


class _BatchTransform:
    """The colour stage shared by the train and eval batch transforms."""

    _spare: torch.Tensor | None = None  # a batch handed back by recycle()

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], grayscale: bool,
                 interpolation: InterpolationMode):
        if size <= 0:
            raise ValueError(f"size={size} must be a positive number of pixels")
        check_stats(mean, std)
        self.size, self.grayscale, self.interpolation = size, grayscale, interpolation
        self.mean, self.std = grayscale_stats(mean, std) if grayscale else (tuple(mean), tuple(std))
        self._stats_cache: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8 or images.shape[1] != 3 or images.shape[0] == 0:
            raise ValueError(f"images must be a uint8 (B, 3, H, W) batch with B >= 1, got {images.dtype} of shape "
                             f"{tuple(images.shape)}")

    def _stats(self, device: torch.device, repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 mean and std on ``device`` (each value ``repeat`` times), made once per device."""
        key, cache = (device, repeat), self._stats_cache
        if key not in cache:
            cache[key] = tuple(torch.tensor(v, dtype=torch.float32).repeat(repeat).to(device)
                               for v in (self.mean, self.std))
        return cache[key]

    def colour(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` -> normalised float32: ``build_transforms``' ToDtype, Grayscale, Normalize.

        Normalize is written out (``sub_(mean).div_(std)``, as ``v2.functional.normalize_image``
        computes it) so that the statistics are made once per device, not copied to it every batch.
        """
        x = F.to_dtype(images, torch.float32, scale=True)
        if self.grayscale:
            x = F.rgb_to_grayscale(x, num_output_channels=1)
        mean, std = self._stats(x.device)
        return x.sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))

    def _fast(self, images: torch.Tensor) -> bool:
        """Channels-last RGB on the CPU: the image-by-image road of :meth:`_run`."""
        return (not self.grayscale and images.device.type == "cpu"
                and images.is_contiguous(memory_format=torch.channels_last))

    def _run(self, n: int, geometry: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``geometry(i)`` (uint8 ``(1, 3, S, S)``) then the colour stage, image by image, on the CPU.

        Channels-last RGB on the CPU takes a faster road to the numbers of :meth:`colour`: image by
        image (one stays in cache, a batch does not), in place, with the statistics tiled along a
        row of ``(R, G, B)`` pixels so the arithmetic runs on long vectors, not on a channel axis of
        3, into a recycled batch where there is one (:meth:`recycle`). Every element sees the same
        operations: ``* (1/255)``, ``- mean``, ``/ std``.
        """
        first = geometry(0)
        out = self._output((n, 3, *first.shape[-2:]))
        w = out.shape[-1]
        mean, std = self._stats(out.device, repeat=w)
        hwc = out.permute(0, 2, 3, 1)  # a contiguous (B, H, W, 3) view of out's memory
        for i in range(n):
            row = hwc[i]
            row.copy_((first if i == 0 else geometry(i))[0].permute(1, 2, 0))
            row = row.view(-1, 3 * w).mul_(1.0 / 255)  # F.to_dtype's factor
            row.sub_(mean).div_(std)
        return out

    def recycle(self, batch: torch.Tensor) -> None:
        """The caller is done with ``batch`` (an output of this transform): the next call may write over it.

        Writing a fresh 38 MB CPU batch every step costs page faults; the engine's ``SupervisedStep`` and
        ``evaluate`` hand each batch back once its backward (or forward) is done instead. As a guard, a
        recycled batch is still not written over while autograd holds it or a view of it is alive (where
        this torch lacks the counters that tell, it never is).
        """
        if batch.device.type == "cpu" and batch.dtype == torch.float32:
            self._spare = batch

    def _output(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A channels-last float32 CPU batch: the recycled one when it fits and nothing else uses it."""
        spare, self._spare = self._spare, None
        if (spare is not None and spare.shape == shape and spare.is_contiguous(memory_format=torch.channels_last)
                and _unshared(spare)):
            return spare
        return torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last)


class BatchRandomResizedCrop(_BatchTransform):
    """Training: random resized crop + horizontal flip per image, then colour; see the module docstring."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 grayscale: bool = False, interpolation: InterpolationMode = InterpolationMode.BILINEAR):
        if not 0 < scale[0] <= scale[1] or not 0 < ratio[0] <= ratio[1] or not 0 <= hflip <= 1:
            raise ValueError(f"scale={scale}, ratio={ratio}, hflip={hflip}: expected 0 < scale[0] <= scale[1], "
                             f"0 < ratio[0] <= ratio[1] and 0 <= hflip <= 1")
        super().__init__(size, mean, std, grayscale, interpolation)
        self.scale, self.ratio, self.hflip = scale, ratio, hflip

    def draw(self, batch: int, height: int, width: int, generator: torch.Generator | None = None):
        """The random part: ``(boxes (B, 4) as crop_boxes, flips (B,) bool)``, drawn on the CPU."""
        boxes = crop_boxes(batch, height, width, self.scale, self.ratio, generator=generator)
        return boxes, torch.rand(batch, generator=generator) < self.hflip

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """The deterministic part, for given crops and flips."""
        self._check(images)
        s, boxes, flips = self.size, boxes.tolist(), flips.tolist()

        def geometry(i: int) -> torch.Tensor:
            top, left, h, w = boxes[i]
            y = F.resize_image(images[i:i + 1, :, top:top + h, left:left + w], [s, s], self.interpolation,
                               antialias=True)
            return y.flip(-1) if flips[i] else y

        if self._fast(images):
            return self._run(len(images), geometry)
        crops = torch.cat([geometry(i) for i in range(len(images))])
        return self.colour(crops.contiguous(memory_format=torch.channels_last
                                            if images.is_contiguous(memory_format=torch.channels_last)
                                            else torch.contiguous_format))

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` on any device -> float32 ``(B, C, size, size)`` (C = 1 for grayscale)."""
        self._check(images)
        return self.apply(images, *self.draw(images.shape[0], images.shape[2], images.shape[3], generator))


class BatchResizeCenterCrop(_BatchTransform):
    """Evaluation: shorter side to ``round(size * resize_ratio)``, centre crop, colour (all batched)."""

    def __init__(self, size: int, resize_ratio: float = EVAL_RESIZE_RATIO, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, grayscale: bool = False,
                 interpolation: InterpolationMode = InterpolationMode.BILINEAR):
        if resize_ratio < 1:
            raise ValueError(f"resize_ratio={resize_ratio} must be >= 1 (resize to at least the crop size)")
        super().__init__(size, mean, std, grayscale, interpolation)
        self.resize_ratio = resize_ratio

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        x = F.resize_image(images, [round(self.size * self.resize_ratio)], self.interpolation, antialias=True)
        x = F.center_crop_image(x, [self.size, self.size])
        return self._run(len(x), lambda i: x[i:i + 1]) if self._fast(images) else self.colour(x)
